//! The config file: strict TOML schema, human units, secrets and validation.
//!
//! Parsing rejects unknown keys; every error names the file, the line and the key and says
//! what was expected. Relative paths are resolved against the config file's directory.
//!
//! - `raw`: the serde schema as written in the file (`deny_unknown_fields`, spans kept).
//! - `units`: sizes, durations and socket addresses in human units.
//! - `secret`: the [`Secret`] type and reading secrets inline, from files or the environment.
//! - `paths`: resolving and normalizing paths.
//! - `targets`: KiFS directory names and Redivis table references.
//! - `redivis_options`: a Redivis folder's `create_next_version` and parse options.
//! - `validate`: defaults, ranges and cross-field checks, raw → [`Config`].
//! - `checker`: what those checks write their located messages to.
//! - `errors`: mapping spans to `file:line` and key paths, wording of parse errors, every
//!   key of the wrong type or unit found in one run.
//! - `plan`: the folder → target plan that `upsync check` prints.
//! - `network`: CA files, proxies, timeouts and the bandwidth limit or timetable.

mod checker;
mod deletes;
mod errors;
mod network;
mod paths;
mod plan;
mod raw;
mod redivis_options;
mod secret;
mod spool;
mod targets;
pub(crate) mod units;
mod validate;

#[cfg(test)]
mod tests;

pub use deletes::{DeletePolicy, MaxDelete, OnDelete, PERCENT_FLOOR};
pub use network::{
    BandwidthConfig, CaFile, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, NetConfig, ProxyUrl,
};
pub use paths::command_line_path;
pub use redivis_options::{ParseOptions, RedivisFolder, UPLOAD_TYPES};
pub use secret::Secret;
#[cfg(test)]
pub(crate) use spool::dir_on_another_file_system;
pub use spool::{AfterUpload, archive_on_another_file_system, nearest_existing};

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration was read from.
    pub source: PathBuf,
    pub state_dir: PathBuf,
    pub concurrency: usize,
    /// `None` when `rescan_interval = "0s"`.
    pub rescan_interval: Option<Duration>,
    pub shutdown_timeout: Duration,
    /// The longest pause between two job-level attempts of a file whose upload keeps
    /// failing transiently (the pause doubles from 5 s up to this).
    pub retry_max_delay: Duration,
    pub metrics_listen: Option<SocketAddr>,
    pub bandwidth: BandwidthConfig,
    pub redivis: Option<RedivisConfig>,
    pub kifs: Option<KifsConfig>,
    pub folders: Vec<FolderConfig>,
    pub emulator: Option<EmulatorConfig>,
}

#[derive(Debug, Clone)]
pub struct RedivisConfig {
    /// Base URL including `/api/v1`, without a trailing slash.
    pub api_url: String,
    pub token: Secret,
    /// A multiple of 256 KiB.
    pub chunk_size: u64,
    pub protocol: RedivisProtocol,
    /// How long Redivis counts a request toward its rate limit (the pacer's window).
    pub rate_limit_window: Duration,
    pub net: NetConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedivisProtocol {
    /// The seed's flow: `resumableUpload` → chunked PUTs → upload.post.
    ResumableUpload,
    /// The current clients' flow: `tempUploads` → `x-goog-resumable: start` → chunked PUTs.
    TempUploads,
}

#[derive(Debug, Clone)]
pub struct KifsConfig {
    /// Base URL without a trailing slash; endpoints are appended (`{url}/upload/files`).
    pub url: String,
    pub auth: KifsAuth,
    pub encoding: KifsEncoding,
    pub net: NetConfig,
}

#[derive(Debug, Clone)]
pub enum KifsAuth {
    None,
    Basic { username: String, password: Secret },
    Bearer { token: Secret },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KifsEncoding {
    /// Avro binary, `application/octet-stream`.
    Binary,
    /// JSON with base64 file data (`file_encoding=base64`).
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    RedivisTable(String),
    KifsDirectory { directory: String, create: bool },
}

impl Target {
    /// The target as `status` and the logs show it: `kifs <directory>/`, `redivis <table>`.
    pub fn describe(&self) -> String {
        match self {
            Target::KifsDirectory { directory, .. } => format!("kifs {directory}/"),
            Target::RedivisTable(table) => format!("redivis {table}"),
        }
    }

    /// The `backend` label of the target.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Target::KifsDirectory { .. } => "kifs",
            Target::RedivisTable(_) => "redivis",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FolderConfig {
    /// Absolute path of the watched folder; also the folder's key in the queue.
    pub path: PathBuf,
    pub target: Target,
    /// Glob patterns matched against the path relative to the folder; empty = everything.
    pub include: Vec<String>,
    /// Glob patterns; a file or directory matching any is ignored.
    pub exclude: Vec<String>,
    pub settle: Duration,
    pub recursive: bool,
    /// Redivis settings (default for KiFS folders, which may not set them).
    pub redivis: RedivisFolder,
    /// What a local deletion does to the remote copy, and the mass-delete guard.
    pub deletes: DeletePolicy,
    /// What happens to a local file once the remote confirmed it (a spool folder).
    pub after_upload: AfterUpload,
}

#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Serve HTTPS with this certificate chain and key.
    pub tls: Option<EmulatorTls>,
}

/// PEM files of the emulator's certificate chain and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatorTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A config that cannot be used; `Display` is the message shown to the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The longest window over which the Redivis docs have said requests are counted.
pub const DEFAULT_RATE_LIMIT_WINDOW: Duration = Duration::from_secs(100);

/// Exclude globs used when a folder gives no `exclude` list: temporary, partial, swap,
/// hidden and backup files. A folder's own `exclude` replaces this list.
pub const DEFAULT_EXCLUDES: &[&str] = &["*.tmp", "*.part", "*.swp", ".*", "~*", "*~"];

/// Choices for [`Config::load_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Require every `[[folder]].path` to exist and be a directory. Off only to check a
    /// config written for another machine (e.g. the shipped example).
    pub check_folders_exist: bool,
    /// Read the files and environment variables that hold tokens and passwords, and the
    /// CA files. Off for the commands that reach no remote (`status`, `ls`, `retry`,
    /// `forget`): the keys are still checked (one way per secret, a file or variable
    /// named), but each secret is left unread ([`Secret::is_read`] is false) and each
    /// `ca_file` too ([`NetConfig::ca_file`] is `None`). Those files and variables often
    /// exist only inside the service (`EnvironmentFile=`, `$CREDENTIALS_DIRECTORY`), and a
    /// CA file being replaced must not keep the operator from `status`.
    pub read_secrets: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            check_folders_exist: true,
            read_secrets: true,
        }
    }
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, LoadOptions::default())
    }

    /// Reads, parses and validates `path` with the given options.
    pub fn load_with(path: &Path, options: LoadOptions) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "{}: cannot read the config file: {e}",
                path.display()
            ))
        })?;
        Config::parse(path, &text, options, &|name| std::env::var_os(name))
    }

    /// Parses `text` as if read from `path`; environment lookups go through `env`.
    pub(crate) fn parse(
        path: &Path,
        text: &str,
        options: LoadOptions,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Config, ConfigError> {
        let src = errors::Source { name: path, text };
        let raw: raw::RawConfig = src.deserialize()?;
        validate::build(&src, raw, &options, env)
    }

    /// The folder holding `path` (the folder itself included), if any; folders never
    /// overlap, so there is at most one.
    pub fn folder_holding(&self, path: &Path) -> Option<&FolderConfig> {
        self.folders.iter().find(|f| path.starts_with(&f.path))
    }

    /// The folder whose queue key is `folder_key` (`folder.path.to_string_lossy()`).
    pub fn folder_for(&self, folder_key: &str) -> Option<&FolderConfig> {
        self.folders
            .iter()
            .find(|f| f.path.to_string_lossy() == folder_key)
    }
}
