//! The two text formats `/metrics` serves, chosen from the scraper's `Accept` header as the
//! Prometheus Go client does: OpenMetrics 1.0 when asked for by name (Prometheus asks for
//! it), the classic Prometheus text format 0.0.4 otherwise (curl, `promtool check metrics`,
//! older scrapers).
//!
//! prometheus-client writes OpenMetrics only, so the classic text is derived from it. For
//! the metric types upsync registers (counters, gauges, histograms) they differ in:
//! 1. a counter family is named by its sample (`x_total`) in `# HELP` and `# TYPE`, not by
//!    its family name (`x`);
//! 2. there are no `# UNIT` and `# EOF` lines;
//! 3. the `unknown` type is spelled `untyped`.

/// The content type of OpenMetrics text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the classic Prometheus text format.
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A text format of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Classic,
}

impl Format {
    /// OpenMetrics when the `Accept` header names it, the classic format otherwise.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let asks_openmetrics = accept.is_some_and(|accept| {
            accept.split(',').any(|range| {
                let mut params = range.split(';').map(str::trim);
                params.next() == Some("application/openmetrics-text")
                    && !params.any(|p| p.replace(' ', "") == "q=0")
            })
        });
        if asks_openmetrics {
            Format::OpenMetrics
        } else {
            Format::Classic
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS,
            Format::Classic => CLASSIC,
        }
    }
}

/// The classic text of an OpenMetrics exposition (module doc: what differs).
pub fn to_classic(openmetrics: &str) -> String {
    let mut classic = String::with_capacity(openmetrics.len());
    // A family's `# HELP` comes before its `# TYPE`, which says how to name it.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut classic, help.take(), None);
            help = rest.split_once(' ').or(Some((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{family}_total"), "counter"),
                "unknown" => (family.to_string(), "untyped"),
                other => (family.to_string(), other),
            };
            flush_help(&mut classic, help.take(), Some((family, &name)));
            classic.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            flush_help(&mut classic, help.take(), None);
            classic.push_str(line);
            classic.push('\n');
        }
    }
    flush_help(&mut classic, help, None);
    classic
}

/// Writes a held `# HELP` line, under `renamed.1` when it is the family `renamed.0`.
fn flush_help(classic: &mut String, help: Option<(&str, &str)>, renamed: Option<(&str, &str)>) {
    let Some((family, text)) = help else {
        return;
    };
    let name = match renamed {
        Some((renamed_family, name)) if renamed_family == family => name,
        _ => family,
    };
    classic.push_str(&format!("# HELP {name} {text}\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_header_picks_the_format() {
        let table = [
            (None, Format::Classic),
            (Some("*/*"), Format::Classic),
            (Some("text/plain"), Format::Classic),
            // What Prometheus 2.x sends.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                     version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                Format::OpenMetrics,
            ),
            (
                Some("text/plain, application/openmetrics-text; q=0"),
                Format::Classic,
            ),
        ];
        for (accept, format) in table {
            assert_eq!(Format::from_accept(accept), format, "{accept:?}");
        }
    }

    #[test]
    fn counters_are_named_by_their_sample_and_openmetrics_lines_go() {
        let openmetrics = "# HELP upsync_uploaded_files Files uploaded completely.\n\
                           # TYPE upsync_uploaded_files counter\n\
                           upsync_uploaded_files_total{folder=\"/d\"} 3\n\
                           # HELP upsync_queue_jobs Jobs in the queue.\n\
                           # TYPE upsync_queue_jobs gauge\n\
                           upsync_queue_jobs{state=\"queued\"} 1\n\
                           # HELP odd Something.\n\
                           # TYPE odd unknown\n\
                           # UNIT odd seconds\n\
                           odd 2\n\
                           # EOF\n";
        assert_eq!(
            to_classic(openmetrics),
            "# HELP upsync_uploaded_files_total Files uploaded completely.\n\
             # TYPE upsync_uploaded_files_total counter\n\
             upsync_uploaded_files_total{folder=\"/d\"} 3\n\
             # HELP upsync_queue_jobs Jobs in the queue.\n\
             # TYPE upsync_queue_jobs gauge\n\
             upsync_queue_jobs{state=\"queued\"} 1\n\
             # HELP odd Something.\n\
             # TYPE odd untyped\n\
             odd 2\n"
        );
    }
}
