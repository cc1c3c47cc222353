//! What the daemon tells of an uploaded file: its log line, its metrics and its status
//! figures, by a worker or at the end of a remote's import.
//!
//! A file uploaded alone has an info line of its own. The files of a batch (small files
//! sent several to a request: to KiFS, or to a Redivis file index table) have one info
//! line for the whole batch and a debug line each: a pipeline dropping ten thousand small
//! files would otherwise write ten thousand lines in a few seconds, past journald's
//! default rate limit (10,000 lines in 30 s per service), which then drops the daemon's
//! other lines too, its warnings included; and those lines were a twentieth of the
//! daemon's work per small file (`docs/small-file-costs.md`). `upsync ls` lists every
//! uploaded file.

use std::fmt;
use std::time::{Duration, SystemTime};

use super::status::{Live, one_line};
use crate::config::Target;
use crate::metrics::Metrics;
use crate::queue::to_ms;

/// One uploaded file as its log line, metrics and status figures tell it.
pub(super) struct UploadLine<'a> {
    pub folder: &'a str,
    /// The local path.
    pub path: &'a str,
    pub backend: &'static str,
    /// The file's size.
    pub bytes: u64,
    /// The bytes the attempt sent, when known: fewer than `bytes` when it resumed a
    /// transfer an earlier attempt had begun.
    pub sent: Option<u64>,
    /// The bytes' time: from the attempt's start until the remote held them.
    pub transfer: Duration,
    /// How long the remote then took to import them (Redivis uploads), if it did.
    pub import: Option<Duration>,
    /// Where the file is, as its user names it.
    pub remote: RemoteLabel<'a>,
}

/// Where an uploaded file is, as a user names it: `owner.dataset:next.table/upload name`
/// for Redivis (not the API's URL-encoded upload URI; the version's tag in place of `next`
/// for a file a release took along), the remote path for KiFS. Formatted
/// only when a line is written: the files of a batch are told at debug.
#[derive(Debug, Clone, Copy)]
pub(super) enum RemoteLabel<'a> {
    /// The remote's own name for the file (a KiFS path).
    Path(&'a str),
    /// An upload of a Redivis table, named by the file's relative path.
    Table { table: &'a str, rel: &'a str },
}

impl<'a> RemoteLabel<'a> {
    /// The label of `rel` uploaded to `target`, which named it `remote`.
    pub fn of(target: &'a Target, rel: &'a str, remote: &'a str) -> RemoteLabel<'a> {
        match target {
            Target::RedivisTable(table) => RemoteLabel::Table { table, rel },
            Target::KifsDirectory { .. } => RemoteLabel::Path(remote),
        }
    }
}

impl fmt::Display for RemoteLabel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteLabel::Path(path) => f.write_str(&one_line(path)),
            // A Redivis upload may be named by any file name, line breaks included: they
            // would cut the log line in two, as a path field (quoted) never does.
            RemoteLabel::Table { table, rel } => write!(f, "{table}/{}", one_line(rel)),
        }
    }
}

/// Whether a file's "uploaded" line is its own (info) or one of a batch's (debug, the
/// batch's [`BatchLine`] at info).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Told {
    Alone,
    InBatch,
}

/// Logs, counts and shows one uploaded file: an "uploaded" line, or an "imported" one
/// with the import's time as a field of its own. The rate is that of the attempt: the
/// bytes it sent over the transfer's time; a resumed attempt also says how many it sent
/// (`sent`), and a line that cannot know them (an import waited for again after a
/// restart) names no rate.
pub(super) fn record_upload(metrics: &Metrics, live: &Live, line: &UploadLine<'_>, told: Told) {
    let rate = line.sent.map(|sent| Rate {
        bytes: sent,
        took: line.transfer,
    });
    let rate = rate.as_ref().map(tracing::field::display);
    let sent = line.sent.filter(|sent| *sent != line.bytes);
    let duration_ms = millis(line.transfer);
    let (path, bytes, remote) = (line.path, line.bytes, line.remote);
    match (line.import, told) {
        (None, Told::Alone) => {
            tracing::info!(path, bytes, sent, duration_ms, rate, remote = %remote, "uploaded")
        }
        (None, Told::InBatch) => {
            tracing::debug!(path, bytes, sent, duration_ms, rate, remote = %remote, "uploaded")
        }
        (Some(import), _) => {
            let import_ms = millis(import);
            tracing::info!(
                path,
                bytes,
                sent,
                duration_ms,
                rate,
                import_ms,
                remote = %remote,
                "imported"
            );
            metrics.imported(line.backend, import);
        }
    }
    metrics.uploaded(line.folder, line.backend, line.bytes, line.transfer);
    live.activity
        .record_success(line.folder, to_ms(SystemTime::now()), line.bytes);
}

/// The files of one batch that the remote holds, told in one info line when there are
/// two or more (a single file's own line says it all).
#[derive(Debug)]
pub(super) struct BatchLine {
    /// How each file of the batch is told.
    told: Told,
    files: u64,
    bytes: u64,
    /// The folders the files came from, each once, in the order first seen.
    folders: Vec<String>,
}

impl BatchLine {
    /// The line of a batch of which the remote holds `held` files.
    pub fn of(held: usize) -> BatchLine {
        BatchLine {
            told: if held == 1 {
                Told::Alone
            } else {
                Told::InBatch
            },
            files: 0,
            bytes: 0,
            folders: Vec::new(),
        }
    }

    /// How each file of the batch is told: alone when it is the only one.
    pub fn told(&self) -> Told {
        self.told
    }

    /// Counts one uploaded file of the batch.
    pub fn add(&mut self, folder: &str, bytes: u64) {
        self.files += 1;
        self.bytes += bytes;
        if !self.folders.iter().any(|seen| seen == folder) {
            self.folders.push(folder.to_owned());
        }
    }

    /// Logs the batch's line: `backend` took its files in `transfer`.
    pub fn log(&self, backend: &str, transfer: Duration) {
        if self.told == Told::Alone || self.files == 0 {
            return;
        }
        let rate = Rate {
            bytes: self.bytes,
            took: transfer,
        };
        tracing::info!(
            files = self.files,
            bytes = self.bytes,
            duration_ms = millis(transfer),
            rate = %rate,
            backend,
            folder = %self.folders.join(", "),
            "uploaded a batch"
        );
    }
}

/// Bytes per second over a transfer, as `1.2 MiB/s`; formatted only when a line is written.
struct Rate {
    bytes: u64,
    took: Duration,
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_second = self.bytes as f64 / self.took.as_secs_f64().max(1e-6);
        write!(f, "{}/s", bytesize::ByteSize(per_second as u64))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_logs::capture_logs;

    /// The line of `path`, stored in KiFS directory `ingest`.
    fn line<'a>(path: &'a str, remote: &'a str, import: Option<Duration>) -> UploadLine<'a> {
        UploadLine {
            folder: "/data/in",
            path,
            backend: "kifs",
            bytes: 4096,
            sent: Some(4096),
            transfer: Duration::from_millis(20),
            import,
            remote: RemoteLabel::Path(remote),
        }
    }

    /// The lines written at `level` for a batch of which the remote holds `paths`, then its
    /// batch line.
    fn logged(level: tracing::Level, paths: &[&str]) -> String {
        let (logs, _guard) = capture_logs(level);
        let (metrics, live) = (Metrics::new(), Live::default());
        let mut batch = BatchLine::of(paths.len());
        for path in paths {
            let remote = format!("ingest/{path}");
            record_upload(&metrics, &live, &line(path, &remote, None), batch.told());
            batch.add("/data/in", 4096);
        }
        batch.log("kifs", Duration::from_millis(40));
        logs.text()
    }

    #[test]
    fn a_batch_is_one_info_line_and_its_files_are_debug_lines() {
        let info = logged(tracing::Level::INFO, &["a.csv", "b.csv", "c.csv"]);
        assert_eq!(info.lines().count(), 1, "{info}");
        for field in [
            "uploaded a batch",
            "files=3",
            "bytes=12288",
            "duration_ms=40",
            "rate=",
            "backend=\"kifs\"",
            "folder=/data/in",
        ] {
            assert!(info.contains(field), "{field} in {info}");
        }

        let debug = logged(tracing::Level::DEBUG, &["a.csv", "b.csv", "c.csv"]);
        assert_eq!(debug.lines().count(), 4, "{debug}");
        for path in ["a.csv", "b.csv", "c.csv"] {
            assert!(
                debug
                    .lines()
                    .any(|l| l.contains(" uploaded ") && l.contains(&format!("path=\"{path}\""))),
                "{path} in {debug}"
            );
        }
    }

    #[test]
    fn a_file_alone_has_its_own_info_line_and_no_batch_line() {
        let info = logged(tracing::Level::INFO, &["a.csv"]);
        assert_eq!(info.lines().count(), 1, "{info}");
        for field in [
            "uploaded",
            "path=\"a.csv\"",
            "bytes=4096",
            "remote=ingest/a.csv",
        ] {
            assert!(info.contains(field), "{field} in {info}");
        }
        assert!(!info.contains("uploaded a batch"), "{info}");
    }

    #[test]
    fn an_import_is_told_at_info_even_in_a_batch() {
        let (logs, _guard) = capture_logs(tracing::Level::INFO);
        let imported = line("a.csv", "ingest/a.csv", Some(Duration::from_secs(3)));
        record_upload(&Metrics::new(), &Live::default(), &imported, Told::InBatch);
        let text = logs.text();
        assert!(
            text.contains("imported") && text.contains("import_ms=3000"),
            "{text}"
        );
    }

    #[test]
    fn a_batch_names_each_of_its_folders_once() {
        let (logs, _guard) = capture_logs(tracing::Level::INFO);
        let mut batch = BatchLine::of(3);
        for folder in ["/data/a", "/data/b", "/data/a"] {
            batch.add(folder, 10);
        }
        batch.log("kifs", Duration::from_millis(5));
        let text = logs.text();
        assert!(
            text.contains("files=3") && text.contains("folder=/data/a, /data/b"),
            "{text}"
        );
    }

    #[test]
    fn a_file_is_named_by_its_remote_path_in_kifs_and_by_table_and_path_in_redivis() {
        let kifs = Target::KifsDirectory {
            directory: "ingest".into(),
            create: false,
        };
        let table = Target::RedivisTable("demo.uploads:next.files".into());
        let label = |target| RemoteLabel::of(target, "2024/a.csv", "ingest/2024/a.csv");
        assert_eq!(label(&kifs).to_string(), "ingest/2024/a.csv");
        assert_eq!(
            label(&table).to_string(),
            "demo.uploads:next.files/2024/a.csv"
        );
    }

    #[test]
    fn a_redivis_upload_named_with_a_line_break_is_logged_on_one_line() {
        let (logs, _guard) = capture_logs(tracing::Level::INFO);
        let imported = UploadLine {
            backend: "redivis",
            remote: RemoteLabel::Table {
                table: "demo.uploads:next.files",
                rel: "new\nline.csv",
            },
            ..line("/data/in/new\nline.csv", "", Some(Duration::from_secs(2)))
        };
        record_upload(&Metrics::new(), &Live::default(), &imported, Told::Alone);
        let text = logs.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains("remote=demo.uploads:next.files/new\\nline.csv"),
            "{text}"
        );
    }

    #[test]
    fn a_resumed_upload_says_what_it_sent_and_its_rate_counts_only_that() {
        let (logs, _guard) = capture_logs(tracing::Level::INFO);
        let resumed = UploadLine {
            bytes: 10 * 1024 * 1024,
            sent: Some(1024 * 1024),
            transfer: Duration::from_secs(1),
            ..line("big.csv", "ingest/big.csv", None)
        };
        record_upload(&Metrics::new(), &Live::default(), &resumed, Told::Alone);
        let text = logs.text();
        for field in ["bytes=10485760", "sent=1048576", "rate=1.0 MiB/s"] {
            assert!(text.contains(field), "{field} in {text}");
        }
    }

    #[test]
    fn an_upload_sent_whole_has_no_sent_field_and_a_line_without_sent_bytes_no_rate() {
        let (logs, _guard) = capture_logs(tracing::Level::INFO);
        let (metrics, live) = (Metrics::new(), Live::default());
        record_upload(
            &metrics,
            &live,
            &line("a.csv", "ingest/a.csv", None),
            Told::Alone,
        );
        let unknown = UploadLine {
            sent: None,
            ..line("b.csv", "ingest/b.csv", Some(Duration::from_secs(1)))
        };
        record_upload(&metrics, &live, &unknown, Told::Alone);
        let text = logs.text();
        let whole = text
            .lines()
            .find(|l| l.contains("a.csv"))
            .expect("a's line");
        assert!(
            whole.contains("rate=") && !whole.contains("sent="),
            "{whole}"
        );
        let after_restart = text
            .lines()
            .find(|l| l.contains("b.csv"))
            .expect("b's line");
        assert!(
            !after_restart.contains("rate=") && !after_restart.contains("sent="),
            "{after_restart}"
        );
    }

    #[test]
    fn the_rate_is_bytes_over_the_transfer() {
        let rate = Rate {
            bytes: 3 * 1024 * 1024,
            took: Duration::from_secs(2),
        };
        assert_eq!(rate.to_string(), "1.5 MiB/s");
    }
}
