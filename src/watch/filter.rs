//! Which paths inside a folder are candidates: the folder's include and exclude globs.
//!
//! A pattern without `/` matches the base name at any depth (`*.csv`, `.*`); a pattern with
//! `/` matches the whole `/`-separated path relative to the folder (`logs/*.csv`,
//! `archive/**`), where `*` stays within one path segment and `**` crosses segments. A leading
//! `/` only anchors the pattern to the folder and is ignored when matching.
//!
//! Exclude applies to files and directories (an excluded directory is neither watched nor
//! scanned); include applies to files only, and an empty include list accepts every file.

use globset::{Candidate, Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// The config's default excludes (temporary files, hidden files, editor lock files).
pub use crate::config::DEFAULT_EXCLUDES;

/// A pattern that is not a valid glob.
#[derive(Debug, thiserror::Error)]
#[error("invalid glob pattern {pattern:?}: {source}")]
pub struct PatternError {
    pub pattern: String,
    #[source]
    pub source: globset::Error,
}

/// The compiled include and exclude patterns of one folder.
#[derive(Debug, Clone)]
pub struct Filter {
    include: Patterns,
    exclude: Patterns,
}

impl Filter {
    /// Compiles the patterns; an invalid one is reported by name.
    pub fn new<S: AsRef<str>>(include: &[S], exclude: &[S]) -> Result<Filter, PatternError> {
        Ok(Filter {
            include: Patterns::new(include)?,
            exclude: Patterns::new(exclude)?,
        })
    }

    /// Whether the file at `rel` (relative, `/`-separated) is a candidate.
    pub fn accepts_file(&self, rel: &str) -> bool {
        if self.exclude.matches(rel) {
            return false;
        }
        self.include.is_empty() || self.include.matches(rel)
    }

    /// Whether the directory at `rel` is excluded (not watched, not scanned).
    pub fn excludes_dir(&self, rel: &str) -> bool {
        self.exclude.matches(rel)
    }

    /// Whether a scan of the folder would reach and accept the file at `rel`: accepted
    /// itself, in no excluded directory, and at the top unless the folder is `recursive`.
    pub fn selects(&self, rel: &str, recursive: bool) -> bool {
        let mut dirs = rel.match_indices('/').map(|(at, _)| &rel[..at]);
        (recursive || !rel.contains('/'))
            && self.accepts_file(rel)
            && !dirs.any(|dir| self.excludes_dir(dir))
    }
}

/// Base-name patterns and whole-path patterns, kept apart because they are matched against
/// different strings.
#[derive(Debug, Clone)]
struct Patterns {
    base_name: GlobSet,
    path: GlobSet,
}

impl Patterns {
    fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Patterns, PatternError> {
        let mut base_name = GlobSetBuilder::new();
        let mut path = GlobSetBuilder::new();
        for pattern in patterns {
            let pattern = pattern.as_ref();
            let invalid = |source| PatternError {
                pattern: pattern.to_string(),
                source,
            };
            if pattern.contains('/') {
                let anchored = pattern.trim_start_matches('/');
                let glob = GlobBuilder::new(anchored)
                    .literal_separator(true)
                    .build()
                    .map_err(invalid)?;
                path.add(glob);
            } else {
                base_name.add(Glob::new(pattern).map_err(invalid)?);
            }
        }
        let build = |b: GlobSetBuilder| {
            b.build().map_err(|source| PatternError {
                pattern: patterns
                    .iter()
                    .map(|p| p.as_ref())
                    .collect::<Vec<_>>()
                    .join(", "),
                source,
            })
        };
        Ok(Patterns {
            base_name: build(base_name)?,
            path: build(path)?,
        })
    }

    fn is_empty(&self) -> bool {
        self.base_name.is_empty() && self.path.is_empty()
    }

    /// Asked for every file a scan finds (and each of its directories) and every job a
    /// worker takes, so it prepares a candidate (the text's base name and extension found)
    /// only for a set that has patterns: the default excludes are all base-name patterns,
    /// and the whole-path set is then empty.
    fn matches(&self, rel: &str) -> bool {
        let set_matches = |set: &GlobSet, text: &str| {
            !set.is_empty() && set.is_match_candidate(&Candidate::from_bytes(text))
        };
        let base = rel.rsplit('/').next().unwrap_or(rel);
        set_matches(&self.base_name, base) || set_matches(&self.path, rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Filter {
        Filter::new::<&str>(&[], DEFAULT_EXCLUDES).expect("the default excludes are valid globs")
    }

    #[test]
    fn selects_only_what_a_scan_would_reach() {
        let f = Filter::new(&["*.csv"], &["old"]).expect("valid globs");
        assert!(f.selects("a.csv", false));
        assert!(f.selects("day/a.csv", true));
        assert!(!f.selects("day/a.csv", false), "not recursive");
        assert!(!f.selects("old/a.csv", true), "in an excluded directory");
        assert!(
            !f.selects("day/old/a.csv", true),
            "in an excluded directory"
        );
        assert!(!f.selects("a.txt", true), "not included");
    }

    #[test]
    fn default_excludes_skip_temp_hidden_and_lock_files_at_any_depth() {
        let f = defaults();
        for rel in [
            "a.tmp",
            "x/y/a.part",
            ".hidden",
            "sub/.env",
            "~$report.xlsx",
            "sub/~lock",
        ] {
            assert!(!f.accepts_file(rel), "{rel} should be excluded");
        }
        for rel in ["data.csv", "sub/dir/report.parquet", "a.tmp.csv", "x~y"] {
            assert!(f.accepts_file(rel), "{rel} should be accepted");
        }
    }

    #[test]
    fn default_excludes_skip_hidden_directories_such_as_git() {
        let f = defaults();
        assert!(f.excludes_dir(".git"));
        assert!(f.excludes_dir("sub/.cache"));
        assert!(!f.excludes_dir("sub"));
        assert!(!f.excludes_dir("sub/dir"));
    }

    #[test]
    fn include_patterns_select_files_by_base_name_and_empty_include_accepts_all() {
        let f = Filter::new(&["*.csv", "*.parquet"], &[]).expect("valid globs");
        assert!(f.accepts_file("a.csv"));
        assert!(f.accepts_file("deep/er/b.parquet"));
        assert!(!f.accepts_file("c.json"));

        let all = Filter::new::<&str>(&[], &[]).expect("no patterns is valid");
        assert!(all.accepts_file("anything/at/all.bin"));
    }

    #[test]
    fn include_does_not_apply_to_directories() {
        let f = Filter::new(&["*.csv"], &[]).expect("valid globs");
        assert!(!f.excludes_dir("exports"));
    }

    #[test]
    fn patterns_with_a_slash_match_the_whole_relative_path() {
        let f = Filter::new(&["logs/*.csv"], &["archive/**", "/tmp"]).expect("valid globs");
        assert!(f.accepts_file("logs/a.csv"));
        assert!(
            !f.accepts_file("a.csv"),
            "base name alone does not match logs/*.csv"
        );
        assert!(
            !f.accepts_file("logs/old/a.csv"),
            "* does not cross a / in a path pattern"
        );
        assert!(f.excludes_dir("tmp"));
        assert!(
            !f.excludes_dir("sub/tmp"),
            "a leading / anchors to the folder"
        );
        assert!(f.excludes_dir("archive/2020"));
        assert!(!f.accepts_file("archive/2020/x.csv"));
    }

    #[test]
    fn exclude_wins_over_include() {
        let f = Filter::new(&["*.csv"], &["secret*"]).expect("valid globs");
        assert!(!f.accepts_file("secret.csv"));
        assert!(f.accepts_file("public.csv"));
    }

    #[test]
    fn excluded_directories_match_by_base_name_at_any_depth() {
        let f = Filter::new::<&str>(&[], &["node_modules"]).expect("valid globs");
        assert!(f.excludes_dir("node_modules"));
        assert!(f.excludes_dir("web/app/node_modules"));
        assert!(!f.excludes_dir("web/app"));
    }

    #[test]
    fn an_invalid_pattern_is_named_in_the_error() {
        let err = Filter::new(&["ok", "bad[", "ok2"], &[]).expect_err("an unclosed [ is invalid");
        assert!(err.to_string().contains("bad["), "{err}");
    }
}
