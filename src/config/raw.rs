//! The config file as written: the serde schema, strict about unknown keys.
//!
//! Fields that later checks report on keep their span (`Spanned`), so those messages can
//! name the line too. Defaults and cross-field rules live in `validate`, not here, so that
//! "not given" stays distinguishable from "given as the default value". No `Debug` here:
//! these structs hold secrets as written.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

use super::units::{HumanDuration, HumanSize, Listen};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub state_dir: Spanned<String>,
    pub concurrency: Option<Spanned<i64>>,
    pub rescan_interval: Option<Spanned<HumanDuration>>,
    pub shutdown_timeout: Option<Spanned<HumanDuration>>,
    pub retry_max_delay: Option<Spanned<HumanDuration>>,
    pub metrics_listen: Option<Spanned<Listen>>,
    pub bandwidth_limit: Option<Spanned<String>>,
    pub bandwidth_schedule: Option<Spanned<Vec<Spanned<String>>>>,
    pub redivis: Option<Spanned<RawRedivis>>,
    pub kifs: Option<Spanned<RawKifs>>,
    #[serde(default)]
    pub folder: Vec<Spanned<RawFolder>>,
    pub emulator: Option<Spanned<RawEmulator>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedivis {
    pub api_url: Option<Spanned<String>>,
    pub token: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    pub token_env: Option<Spanned<String>>,
    pub chunk_size: Option<Spanned<HumanSize>>,
    pub protocol: Option<RawProtocol>,
    pub rate_limit_window: Option<Spanned<HumanDuration>>,
    pub ca_file: Option<Spanned<String>>,
    pub proxy: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<HumanDuration>>,
    pub idle_timeout: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RawProtocol {
    ResumableUpload,
    TempUploads,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKifs {
    pub url: Spanned<String>,
    pub username: Option<Spanned<String>>,
    pub password: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub password_env: Option<Spanned<String>>,
    pub token: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    pub token_env: Option<Spanned<String>>,
    pub encoding: Option<RawEncoding>,
    pub ca_file: Option<Spanned<String>>,
    pub proxy: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<HumanDuration>>,
    pub idle_timeout: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RawEncoding {
    Binary,
    Json,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFolder {
    pub path: Spanned<String>,
    pub redivis_table: Option<Spanned<String>>,
    pub kifs_directory: Option<Spanned<String>>,
    pub create_directory: Option<Spanned<bool>>,
    pub include: Option<Vec<Spanned<String>>>,
    pub exclude: Option<Vec<Spanned<String>>>,
    pub settle: Option<Spanned<HumanDuration>>,
    pub recursive: Option<bool>,
    pub create_next_version: Option<Spanned<bool>>,
    pub redivis_options: Option<Spanned<RawRedivisOptions>>,
    pub on_delete: Option<Spanned<String>>,
    pub max_delete: Option<Spanned<RawMaxDelete>>,
    pub after_upload: Option<Spanned<String>>,
    pub archive_dir: Option<Spanned<String>>,
}

/// `max_delete` as written: a count, or a string holding a count or a percentage.
pub(crate) enum RawMaxDelete {
    Count(i64),
    Text(String),
}

/// What `max_delete` takes, for its messages.
pub(super) const MAX_DELETE_EXPECTED: &str = "a count of files (0 or more, e.g. 500) or a \
     percentage of the folder's uploaded files (\"1%\" to \"100%\")";

// By hand rather than `#[serde(untagged)]`, whose error for another type ("data did not
// match any variant of untagged enum") says nothing of what the key takes. TOML integers
// are i64, so `visit_i64` sees them all.
impl<'de> Deserialize<'de> for RawMaxDelete {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawMaxDelete;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(MAX_DELETE_EXPECTED)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<RawMaxDelete, E> {
                Ok(RawMaxDelete::Count(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawMaxDelete, E> {
                Ok(RawMaxDelete::Text(s.to_string()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// `[folder.redivis_options]`: parse options, named like the API's fields in snake_case.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedivisOptions {
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub delimiter: Option<Spanned<String>>,
    pub has_header_row: Option<bool>,
    pub skip_bad_records: Option<bool>,
    pub has_quoted_newlines: Option<bool>,
    pub allow_jagged_rows: Option<bool>,
    pub quote_character: Option<Spanned<String>>,
    pub escape_character: Option<Spanned<String>>,
    pub null_markers: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEmulator {
    pub listen: Spanned<Listen>,
    pub data_dir: Spanned<String>,
    pub tls_cert: Option<Spanned<String>>,
    pub tls_key: Option<Spanned<String>>,
}
