//! A folder's deletion settings: `on_delete` (whether a local deletion removes what upsync
//! uploaded for the file) and `max_delete` (the mass-delete guard's limit), their checks
//! and their defaults.

use toml::Spanned;

use super::checker::Checker;
use super::raw::{MAX_DELETE_EXPECTED, RawFolder, RawMaxDelete};

/// The guard's default: at most half of a folder's uploaded files at once.
pub const DEFAULT_MAX_DELETE: MaxDelete = MaxDelete::Percent(50);
/// A percentage limit never holds back this many deletions or fewer, so that a small
/// folder can lose its last few files without the operator's word.
pub const PERCENT_FLOOR: u64 = 10;

/// What a local deletion does to the remote copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnDelete {
    /// The remote copy stays (the default): upsync only ever adds.
    #[default]
    Keep,
    /// The remote copy upsync uploaded for the path is deleted.
    Delete,
}

/// How many deletions one look at a folder may start before the guard holds them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxDelete {
    /// At most this many files.
    Count(u64),
    /// At most this percentage of the folder's uploaded files (but never fewer than
    /// [`PERCENT_FLOOR`]).
    Percent(u8),
}

/// A folder's deletion settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeletePolicy {
    pub on_delete: OnDelete,
    pub max_delete: MaxDelete,
}

impl Default for MaxDelete {
    fn default() -> Self {
        DEFAULT_MAX_DELETE
    }
}

impl MaxDelete {
    /// The most deletions allowed in a folder holding `files` uploaded files.
    pub fn limit(self, files: u64) -> u64 {
        match self {
            MaxDelete::Count(count) => count,
            MaxDelete::Percent(percent) => (files * u64::from(percent) / 100).max(PERCENT_FLOOR),
        }
    }
}

impl std::fmt::Display for MaxDelete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxDelete::Count(count) => write!(f, "{count} files"),
            MaxDelete::Percent(percent) => write!(f, "{percent}%"),
        }
    }
}

/// Reads `on_delete` and `max_delete` of folder `i`.
pub(super) fn delete_policy(ck: &mut Checker<'_>, f: &RawFolder, i: usize) -> DeletePolicy {
    let key = |name: &str| format!("folder[{i}].{name}");
    let on_delete = match &f.on_delete {
        None => OnDelete::Keep,
        Some(value) => match value.get_ref().as_str() {
            "keep" => OnDelete::Keep,
            "delete" => OnDelete::Delete,
            other => {
                ck.error(
                    &value.span(),
                    &key("on_delete"),
                    format!("\"{other}\" is not a choice (expected \"keep\" or \"delete\")"),
                );
                OnDelete::Keep
            }
        },
    };
    let max_delete = match &f.max_delete {
        None => DEFAULT_MAX_DELETE,
        Some(value) => max_delete(ck, value, &key("max_delete")).unwrap_or_default(),
    };
    DeletePolicy {
        on_delete,
        max_delete,
    }
}

fn max_delete(ck: &mut Checker<'_>, value: &Spanned<RawMaxDelete>, key: &str) -> Option<MaxDelete> {
    let parsed = match value.get_ref() {
        RawMaxDelete::Count(count) => u64::try_from(*count).ok().map(MaxDelete::Count),
        RawMaxDelete::Text(text) => parse_text(text.trim()),
    };
    if parsed.is_none() {
        let shown = match value.get_ref() {
            RawMaxDelete::Count(count) => count.to_string(),
            RawMaxDelete::Text(text) => format!("\"{text}\""),
        };
        ck.error(
            &value.span(),
            key,
            format!("{shown} is not a limit (expected {MAX_DELETE_EXPECTED})"),
        );
    }
    parsed
}

fn parse_text(text: &str) -> Option<MaxDelete> {
    match text.strip_suffix('%') {
        Some(percent) => match percent.trim().parse::<u8>() {
            Ok(p @ 1..=100) => Some(MaxDelete::Percent(p)),
            _ => None,
        },
        None => text.parse::<u64>().ok().map(MaxDelete::Count),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, LoadOptions};

    fn parse(folder_keys: &str) -> Result<Config, String> {
        let text = format!(
            "state_dir = \"/var/lib/upsync\"\n[kifs]\nurl = \"http://127.0.0.1:1/kifs\"\n\
             [[folder]]\npath = \"/data/in\"\nkifs_directory = \"ingest\"\n{folder_keys}\n"
        );
        let options = LoadOptions {
            check_folders_exist: false,
            ..LoadOptions::default()
        };
        Config::parse(std::path::Path::new("u.toml"), &text, options, &|_| None).map_err(|e| e.0)
    }

    #[test]
    fn deletions_are_kept_by_default_and_read_from_the_folder() {
        let config = parse("").expect("valid");
        assert_eq!(config.folders[0].deletes, DeletePolicy::default());
        assert_eq!(config.folders[0].deletes.on_delete, OnDelete::Keep);
        assert_eq!(config.folders[0].deletes.max_delete, MaxDelete::Percent(50));
        let config = parse("on_delete = \"delete\"\nmax_delete = 200").expect("valid");
        assert_eq!(
            config.folders[0].deletes,
            DeletePolicy {
                on_delete: OnDelete::Delete,
                max_delete: MaxDelete::Count(200),
            }
        );
        let config = parse("max_delete = \"5%\"").expect("valid");
        assert_eq!(config.folders[0].deletes.max_delete, MaxDelete::Percent(5));
    }

    #[test]
    fn spool_settings_are_checked_against_each_other() {
        let config =
            parse("after_upload = \"move\"\narchive_dir = \"/data/archive\"").expect("valid");
        assert_eq!(
            config.folders[0].after_upload,
            crate::config::AfterUpload::Move("/data/archive".into())
        );
        let err = parse("after_upload = \"move\"").expect_err("no archive_dir");
        assert!(
            err.contains("u.toml:7: key 'folder[0].after_upload': \"move\" needs archive_dir"),
            "{err}"
        );
        let err = parse("archive_dir = \"/a\"").expect_err("archive_dir without move");
        assert!(
            err.contains("key 'folder[0].archive_dir': only applies"),
            "{err}"
        );
        let err = parse("after_upload = \"delete\"\non_delete = \"delete\"").expect_err("both");
        assert!(
            err.contains("key 'folder[0].after_upload': a spool folder cannot also"),
            "{err}"
        );
        let err = parse("after_upload = \"move\"\narchive_dir = \"/data/in/done\"")
            .expect_err("inside the folder");
        assert!(
            err.contains("key 'folder[0].archive_dir': \"/data/in/done\" overlaps"),
            "{err}"
        );
        let err = parse("after_upload = \"shred\"").expect_err("not a choice");
        assert!(err.contains("\"shred\" is not a choice"), "{err}");
    }

    #[test]
    fn bad_deletion_settings_name_the_file_line_and_key() {
        let err = parse("on_delete = \"purge\"").expect_err("not a choice");
        assert!(
            err.contains("u.toml:7: key 'folder[0].on_delete': \"purge\" is not a choice"),
            "{err}"
        );
        let err = parse("max_delete = \"150%\"").expect_err("over 100%");
        assert!(
            err.contains("u.toml:7: key 'folder[0].max_delete': \"150%\""),
            "{err}"
        );
        let err = parse("max_delete = -3").expect_err("negative");
        assert!(
            err.contains("key 'folder[0].max_delete': -3 is not a limit"),
            "{err}"
        );
    }

    #[test]
    fn a_percentage_limit_scales_with_the_folder_but_keeps_its_floor() {
        assert_eq!(MaxDelete::Percent(50).limit(1000), 500);
        assert_eq!(MaxDelete::Percent(50).limit(4), PERCENT_FLOOR);
        assert_eq!(MaxDelete::Percent(100).limit(7), PERCENT_FLOOR);
        assert_eq!(MaxDelete::Count(3).limit(1000), 3);
        assert_eq!(MaxDelete::Count(0).limit(1000), 0);
    }

    #[test]
    fn limits_parse_as_counts_or_percentages() {
        assert_eq!(parse_text("25%"), Some(MaxDelete::Percent(25)));
        assert_eq!(parse_text("100 %"), Some(MaxDelete::Percent(100)));
        assert_eq!(parse_text("40"), Some(MaxDelete::Count(40)));
        for bad in ["0%", "101%", "-1", "half", "%", "5.5%"] {
            assert_eq!(parse_text(bad), None, "{bad}");
        }
    }
}
