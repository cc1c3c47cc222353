//! From the raw schema to a [`Config`]: defaults, ranges, secrets, paths, and the checks
//! that involve more than one key (one target per folder, sections present for the targets
//! used, folders that exist and do not overlap, one folder per Redivis table, state outside
//! watched folders).
//!
//! Every problem found is collected, so `upsync check` reports them all at once, one line each.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::Glob;
use toml::Spanned;

use super::checker::Checker;
use super::errors::Source;
use super::network::{self, RawNetKeys};
use super::raw::{
    RawConfig, RawEmulator, RawEncoding, RawFolder, RawKifs, RawProtocol, RawRedivis,
    RawRedivisOptions,
};
use super::redivis_options::{self, ParseOptions, RedivisFolder};
use super::secret::{EnvLookup, SecretKeys, Sent, unsendable};
use super::units::{HumanDuration, format_size};
use super::{
    BandwidthConfig, Config, ConfigError, DEFAULT_EXCLUDES, DEFAULT_RATE_LIMIT_WINDOW,
    EmulatorConfig, EmulatorTls, FolderConfig, KifsAuth, KifsConfig, KifsEncoding, LoadOptions,
    RedivisConfig, RedivisProtocol, Target, paths, targets,
};
use crate::upload::redivis::granule::{CHUNK_GRANULE, is_valid_chunk_size};

const DEFAULT_CONCURRENCY: i64 = 4;
const MAX_CONCURRENCY: i64 = 64;
const DEFAULT_RESCAN: Duration = Duration::from_secs(600);
const DEFAULT_SHUTDOWN: Duration = Duration::from_secs(30);
const DEFAULT_RETRY_MAX_DELAY: Duration = Duration::from_secs(3600);
const MIN_RETRY_MAX_DELAY: Duration = Duration::from_secs(1);
/// A folder's loop looks at the clock once a second when idle, so a shorter period would
/// only mean a full rescan at every look (a busy loop over every file).
const MIN_RESCAN: Duration = Duration::from_secs(1);
/// Shorter, a stop gives in-flight uploads no time to checkpoint: they are aborted at once
/// and send again what they sent since their last checkpoint.
const MIN_SHUTDOWN: Duration = Duration::from_secs(1);
const DEFAULT_SETTLE: Duration = Duration::from_secs(5);
const DEFAULT_API_URL: &str = "https://redivis.com/api/v1";
const DEFAULT_CHUNK: u64 = 8 << 20;
const MAX_CHUNK: u64 = 1 << 30;
/// Redivis never says how long it counts a request; a day is surely longer.
const MAX_RATE_LIMIT_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// From the raw schema to a [`Config`], every problem found collected:
/// 1. `state_dir`, which must be a directory or creatable as one;
/// 2. the daemon-wide keys ([`daemon_keys`]);
/// 3. the `[redivis]` and `[kifs]` sections;
/// 4. each `[[folder]]` ([`folders`]);
/// 5. the `[emulator]` section;
/// 6. where the folders and directories lie against each other ([`check_placement`]);
/// 7. the config, or every message at once.
pub(crate) fn build(
    src: &Source<'_>,
    raw: RawConfig,
    options: &LoadOptions,
    env: EnvLookup<'_>,
) -> Result<Config, ConfigError> {
    let mut ck = Checker {
        src,
        base: paths::base_dir(src.name),
        env,
        read_secrets: options.read_secrets,
        errors: Vec::new(),
    };
    let state_dir = required_path(&mut ck, &raw.state_dir, "state_dir");
    check_state_dir(&mut ck, &state_dir, &raw.state_dir.span());
    let keys = daemon_keys(&mut ck, &raw);
    let redivis = raw.redivis.as_ref().and_then(|r| redivis(&mut ck, r));
    let kifs = raw.kifs.as_ref().and_then(|k| kifs(&mut ck, k));
    let folders = folders(&mut ck, &raw, options);
    let emulator = raw.emulator.as_ref().map(|e| emulator(&mut ck, e));
    check_placement(&mut ck, &raw, &folders, &state_dir, emulator.as_ref());
    if !ck.errors.is_empty() {
        return Err(ConfigError(ck.errors.join("\n")));
    }
    Ok(Config {
        source: src.name.to_path_buf(),
        state_dir,
        concurrency: usize::try_from(keys.concurrency)
            .expect("concurrency was checked to be 1..=64"),
        rescan_interval: keys.rescan_interval,
        shutdown_timeout: keys.shutdown_timeout,
        retry_max_delay: keys.retry_max_delay,
        metrics_listen: keys.metrics_listen,
        bandwidth: keys.bandwidth,
        redivis,
        kifs,
        folders: folders.into_iter().map(|c| c.folder).collect(),
        emulator,
    })
}

/// The keys that apply to the whole daemon, with their defaults.
struct DaemonKeys {
    concurrency: i64,
    rescan_interval: Option<Duration>,
    shutdown_timeout: Duration,
    retry_max_delay: Duration,
    metrics_listen: Option<std::net::SocketAddr>,
    bandwidth: BandwidthConfig,
}

/// Step 2 of [`build`].
fn daemon_keys(ck: &mut Checker<'_>, raw: &RawConfig) -> DaemonKeys {
    let concurrency = match &raw.concurrency {
        None => DEFAULT_CONCURRENCY,
        Some(c) => {
            let n = *c.get_ref();
            if !(1..=MAX_CONCURRENCY).contains(&n) {
                ck.error(
                    &c.span(),
                    "concurrency",
                    format!("expected an integer from 1 to {MAX_CONCURRENCY}, found {n}"),
                );
            }
            n
        }
    };
    let rescan_interval = match &raw.rescan_interval {
        None => Some(DEFAULT_RESCAN),
        Some(given) if given.get_ref().0.is_zero() => None,
        Some(given) => Some(at_least(
            ck,
            given,
            "rescan_interval",
            &Floor {
                min: MIN_RESCAN,
                example: "10m",
                or: "\"0s\" (no rescans) or ",
            },
        )),
    };
    let shutdown_timeout = raw
        .shutdown_timeout
        .as_ref()
        .map_or(DEFAULT_SHUTDOWN, |given| {
            at_least(
                ck,
                given,
                "shutdown_timeout",
                &Floor::plain(MIN_SHUTDOWN, "30s"),
            )
        });
    let retry_max_delay = raw
        .retry_max_delay
        .as_ref()
        .map_or(DEFAULT_RETRY_MAX_DELAY, |given| {
            at_least(
                ck,
                given,
                "retry_max_delay",
                &Floor::plain(MIN_RETRY_MAX_DELAY, "1h"),
            )
        });
    let metrics_listen = raw.metrics_listen.as_ref().map(|l| l.get_ref().0);
    let bandwidth = network::bandwidth(
        ck,
        raw.bandwidth_limit.as_ref(),
        raw.bandwidth_schedule.as_ref(),
    );

    DaemonKeys {
        concurrency,
        rescan_interval,
        shutdown_timeout,
        retry_max_delay,
        metrics_listen,
        bandwidth,
    }
}

/// Step 4 of [`build`]: each folder that checks out, with where it is written.
fn folders(ck: &mut Checker<'_>, raw: &RawConfig, options: &LoadOptions) -> Vec<Checked> {
    if raw.folder.is_empty() {
        ck.errors.push(ck.src.line_error(
            &(0..0),
            "no [[folder]] section: add at least one, e.g. [[folder]] with path = \"/data/exports\" \
             and kifs_directory = \"ingest\"",
        ));
    }
    let mut folders = Vec::new();
    for (i, f) in raw.folder.iter().enumerate() {
        if let Some(folder) = folder(ck, raw, i, f, options) {
            folders.push(Checked {
                folder,
                index: i,
                path_span: f.get_ref().path.span(),
                target_span: (f.get_ref().redivis_table.as_ref().map(|t| t.span()))
                    .or_else(|| f.get_ref().kifs_directory.as_ref().map(|d| d.span())),
            });
        }
    }

    folders
}

/// Step 6 of [`build`]: no two folders overlap or share a Redivis table, and neither an
/// archive directory, the state database nor the emulator's data lies in a watched folder.
fn check_placement(
    ck: &mut Checker<'_>,
    raw: &RawConfig,
    folders: &[Checked],
    state_dir: &Path,
    emulator: Option<&EmulatorConfig>,
) {
    check_overlaps(ck, folders);
    check_shared_tables(ck, folders);
    for (i, f) in raw.folder.iter().enumerate() {
        if let Some(dir) = &f.get_ref().archive_dir {
            let archive = paths::resolve(&ck.base, dir.get_ref());
            check_inside_folders(
                ck,
                folders,
                &archive,
                &dir.span(),
                &format!("folder[{i}].archive_dir"),
                "files moved there would be uploaded again",
            );
        }
    }
    check_inside_folders(
        ck,
        folders,
        state_dir,
        &raw.state_dir.span(),
        "state_dir",
        "the queue database must live outside watched folders",
    );
    if let (Some(e), Some(raw_e)) = (emulator, &raw.emulator) {
        check_inside_folders(
            ck,
            folders,
            &e.data_dir,
            &raw_e.get_ref().data_dir.span(),
            "emulator.data_dir",
            "the emulator's remote files must not be watched again",
        );
        check_apart_from_state_dir(ck, e, raw_e.get_ref(), state_dir, &raw.state_dir);
    }
}

/// `state_dir` need not exist (`run` creates it) but must be a directory or creatable as
/// one: its nearest existing ancestor a directory on a file system that holds directories.
/// Nothing is written: `check` may run as another user than the service, whose permissions
/// are what count.
fn check_state_dir(ck: &mut Checker<'_>, path: &Path, span: &Range<usize>) {
    const EXPECTED: &str = "expected a directory for the state database, or a path where \
                            run can create one";
    let mut existing = path;
    let meta = loop {
        match std::fs::metadata(existing) {
            Ok(meta) => break meta,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match existing.parent() {
                    Some(parent) => existing = parent,
                    None => return,
                }
            }
            // Unreadable here may be readable for the service's user: `run` will say.
            Err(_) => return,
        }
    };
    let problem = if !meta.is_dir() {
        if existing == path {
            format!("\"{}\" exists and is not a directory", path.display())
        } else {
            format!(
                "\"{}\" cannot be created: \"{}\" is not a directory",
                path.display(),
                existing.display()
            )
        }
    } else if let Some(fs) = pseudo_file_system(existing) {
        format!(
            "\"{}\" lies on the {fs} pseudo-file system, which holds no directories of ours",
            path.display()
        )
    } else {
        return;
    };
    ck.error(span, "state_dir", format!("{problem} ({EXPECTED})"));
}

/// "proc" or "sysfs" when `dir` is on one of them (`/proc`, `/sys`): they exist as
/// directories, but nothing can be created in them.
fn pseudo_file_system(dir: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    const PROC_SUPER_MAGIC: i64 = 0x9fa0;
    const SYSFS_MAGIC: i64 = 0x6265_6572;
    let name = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `name` is a NUL-terminated path and `stat` is a buffer of the size statfs writes.
    let stat = unsafe {
        if libc::statfs(name.as_ptr(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets.
    match stat.f_type as i64 {
        PROC_SUPER_MAGIC => Some("proc"),
        SYSFS_MAGIC => Some("sysfs"),
        _ => None,
    }
}

/// The shortest duration a key takes, for [`at_least`].
struct Floor<'a> {
    min: Duration,
    /// A sensible value, shown in the message.
    example: &'a str,
    /// Another value the key takes, with how the message puts it: `"0s" (no rescans) or `.
    or: &'a str,
}

impl Floor<'_> {
    fn plain(min: Duration, example: &str) -> Floor<'_> {
        Floor {
            min,
            example,
            or: "",
        }
    }
}

/// The duration given for `key`, refused by name when shorter than the floor.
fn at_least(
    ck: &mut Checker<'_>,
    given: &Spanned<HumanDuration>,
    key: &str,
    floor: &Floor<'_>,
) -> Duration {
    let duration = given.get_ref().0;
    if duration < floor.min {
        ck.error(
            &given.span(),
            key,
            format!(
                "expected {}a duration of at least {}, like \"{}\", found \"{}\"",
                floor.or,
                humantime::format_duration(floor.min),
                floor.example,
                humantime::format_duration(duration)
            ),
        );
    }
    duration
}

fn duration_or(value: &Option<Spanned<HumanDuration>>, default: Duration) -> Duration {
    value.as_ref().map_or(default, |d| d.get_ref().0)
}

fn required_path(ck: &mut Checker<'_>, value: &Spanned<String>, key: &str) -> PathBuf {
    if value.get_ref().trim().is_empty() {
        ck.error(&value.span(), key, "expected a path, found \"\"");
    }
    paths::resolve(&ck.base, value.get_ref())
}

/// An http(s) base URL without its trailing slash. Credentials have keys of their own
/// (`credentials` names them): in the URL they would show wherever the URL is shown (`upsync
/// check`, `status`, logs), so a user or password there is refused, and never echoed.
fn base_url(ck: &mut Checker<'_>, value: &Spanned<String>, key: &str, credentials: &str) -> String {
    let text = value.get_ref().trim().trim_end_matches('/').to_string();
    match reqwest::Url::parse(&text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            if !url.username().is_empty() || url.password().is_some() {
                ck.error(
                    &value.span(),
                    key,
                    format!(
                        "expected a URL without a user or password, found one with them (\"{}\"); \
                         give the credentials in {credentials}",
                        super::network::redact_text(&text)
                    ),
                );
            }
        }
        _ => ck.error(
            &value.span(),
            key,
            format!(
                "expected an http or https URL like \"https://host/path\", found \"{}\"",
                super::network::redact_text(value.get_ref())
            ),
        ),
    }
    text
}

fn redivis(ck: &mut Checker<'_>, section: &Spanned<RawRedivis>) -> Option<RedivisConfig> {
    let r = section.get_ref();
    let api_url = match &r.api_url {
        Some(url) => base_url(ck, url, "redivis.api_url", "token_file or token_env"),
        None => DEFAULT_API_URL.to_string(),
    };
    let chunk_size = match &r.chunk_size {
        None => DEFAULT_CHUNK,
        Some(size) => {
            let n = size.get_ref().0;
            if !is_valid_chunk_size(n) || n > MAX_CHUNK {
                ck.error(
                    &size.span(),
                    "redivis.chunk_size",
                    format!(
                        "expected a positive multiple of {} ({CHUNK_GRANULE} bytes) up to 1 GiB, \
                         like \"8MiB\", found {}; use binary units (KiB, MiB)",
                        format_size(CHUNK_GRANULE),
                        describe_size(n)
                    ),
                );
            }
            n
        }
    };
    let protocol = match r.protocol {
        None | Some(RawProtocol::ResumableUpload) => RedivisProtocol::ResumableUpload,
        Some(RawProtocol::TempUploads) => RedivisProtocol::TempUploads,
    };
    let rate_limit_window = rate_limit_window(ck, r.rate_limit_window.as_ref());
    let keys = SecretKeys {
        table: "redivis",
        name: "token",
        sent: Sent::Verbatim,
        inline: r.token.as_ref(),
        file: r.token_file.as_ref(),
        env: r.token_env.as_ref(),
    };
    let token = match keys.resolve(ck.src, &ck.base, ck.env, ck.read_secrets) {
        Ok(Some(token)) => token,
        Ok(None) => {
            ck.error(
                &section.span(),
                "redivis",
                "needs an API token: set token_file or token_env (an inline token is for demos only)",
            );
            return None;
        }
        Err(e) => {
            ck.errors.push(e);
            return None;
        }
    };
    let net = network::net_config(
        ck,
        &RawNetKeys {
            table: "redivis",
            ca_file: r.ca_file.as_ref(),
            proxy: r.proxy.as_ref(),
            connect_timeout: r.connect_timeout.as_ref(),
            idle_timeout: r.idle_timeout.as_ref(),
        },
    );
    Some(RedivisConfig {
        api_url,
        token,
        chunk_size,
        protocol,
        rate_limit_window,
        net,
    })
}

/// `redivis.rate_limit_window`: between 1 s and a day.
fn rate_limit_window(ck: &mut Checker<'_>, value: Option<&Spanned<HumanDuration>>) -> Duration {
    let Some(value) = value else {
        return DEFAULT_RATE_LIMIT_WINDOW;
    };
    let window = value.get_ref().0;
    if window < Duration::from_secs(1) || window > MAX_RATE_LIMIT_WINDOW {
        ck.error(
            &value.span(),
            "redivis.rate_limit_window",
            format!(
                "expected a duration from \"1s\" to \"1day\", like \"100s\", found \"{}\"",
                humantime::format_duration(window)
            ),
        );
    }
    window
}

/// The `[emulator]` section; `tls_cert` and `tls_key` go together.
fn emulator(ck: &mut Checker<'_>, section: &Spanned<RawEmulator>) -> EmulatorConfig {
    let e = section.get_ref();
    let tls = match (&e.tls_cert, &e.tls_key) {
        (Some(cert), Some(key)) => Some(EmulatorTls {
            cert: required_path(ck, cert, "emulator.tls_cert"),
            key: required_path(ck, key, "emulator.tls_key"),
        }),
        (None, None) => None,
        (Some(given), None) | (None, Some(given)) => {
            ck.error(
                &given.span(),
                "emulator",
                "give both tls_cert and tls_key (PEM files) to serve HTTPS, or neither",
            );
            None
        }
    };
    EmulatorConfig {
        listen: e.listen.get_ref().0,
        data_dir: required_path(ck, &e.data_dir, "emulator.data_dir"),
        tls,
    }
}

/// The emulator's files and the state database each get a directory of their own, so that
/// either can be removed (to start afresh) without the other.
fn check_apart_from_state_dir(
    ck: &mut Checker<'_>,
    emulator: &EmulatorConfig,
    raw: &RawEmulator,
    state_dir: &Path,
    raw_state_dir: &Spanned<String>,
) {
    if paths::overlaps(&emulator.data_dir, state_dir) {
        let message = format!(
            "\"{}\" overlaps state_dir \"{}\" (line {}); expected a directory apart from it: the \
             emulator's files must not mix with the state database",
            emulator.data_dir.display(),
            state_dir.display(),
            ck.src.line_of(raw_state_dir.span().start)
        );
        ck.error(&raw.data_dir.span(), "emulator.data_dir", message);
    }
}

/// "8000000 bytes", or "2 GiB (2147483648 bytes)" when a unit reads better.
fn describe_size(n: u64) -> String {
    let pretty = format_size(n);
    if pretty.ends_with(" B") {
        format!("{n} bytes")
    } else {
        format!("{pretty} ({n} bytes)")
    }
}

/// The `[kifs]` section: its URL, encoding, authentication and network keys.
fn kifs(ck: &mut Checker<'_>, section: &Spanned<RawKifs>) -> Option<KifsConfig> {
    let k = section.get_ref();
    let url = base_url(
        ck,
        &k.url,
        "kifs.url",
        "username with password_file or password_env, or in token_file or token_env",
    );
    let encoding = match k.encoding {
        None | Some(RawEncoding::Binary) => KifsEncoding::Binary,
        Some(RawEncoding::Json) => KifsEncoding::Json,
    };
    let auth = kifs_auth(ck, k)?;
    let net = network::net_config(
        ck,
        &RawNetKeys {
            table: "kifs",
            ca_file: k.ca_file.as_ref(),
            proxy: k.proxy.as_ref(),
            connect_timeout: k.connect_timeout.as_ref(),
            idle_timeout: k.idle_timeout.as_ref(),
        },
    );
    Some(KifsConfig {
        url,
        auth,
        encoding,
        net,
    })
}

/// How the daemon authenticates to KiFS: Basic with a username and its password, Bearer
/// with a token, or none; never both kinds. `None` once the problem is recorded.
fn kifs_auth(ck: &mut Checker<'_>, k: &RawKifs) -> Option<KifsAuth> {
    let password = SecretKeys {
        table: "kifs",
        name: "password",
        sent: Sent::Encoded,
        inline: k.password.as_ref(),
        file: k.password_file.as_ref(),
        env: k.password_env.as_ref(),
    };
    let token = SecretKeys {
        table: "kifs",
        name: "token",
        sent: Sent::Verbatim,
        inline: k.token.as_ref(),
        file: k.token_file.as_ref(),
        env: k.token_env.as_ref(),
    };
    match &k.username {
        Some(username) => basic_auth(ck, username, &password, &token),
        None => bearer_auth(ck, &password, &token),
    }
}

/// [`kifs_auth`] with a username: its password, and no token beside it.
fn basic_auth(
    ck: &mut Checker<'_>,
    username: &Spanned<String>,
    password: &SecretKeys<'_>,
    token: &SecretKeys<'_>,
) -> Option<KifsAuth> {
    if let Some((name, span)) = token.given().first() {
        ck.error(
            span,
            &format!("kifs.{name}"),
            format!(
                "give either username with a password (Basic auth) or a token (Bearer \
                 auth), not both (username is on line {})",
                ck.src.line_of(username.span().start)
            ),
        );
        return None;
    }
    if let Some(problem) = unsendable_username(username.get_ref()) {
        ck.error(&username.span(), "kifs.username", problem);
    }
    match password.resolve(ck.src, &ck.base, ck.env, ck.read_secrets) {
        Ok(Some(password)) => Some(KifsAuth::Basic {
            username: username.get_ref().clone(),
            password,
        }),
        Ok(None) => {
            ck.error(
                &username.span(),
                "kifs.username",
                "a username needs a password: set password_file or password_env",
            );
            None
        }
        Err(e) => {
            ck.errors.push(e);
            None
        }
    }
}

/// [`kifs_auth`] without a username: a token if one is given, no password.
fn bearer_auth(
    ck: &mut Checker<'_>,
    password: &SecretKeys<'_>,
    token: &SecretKeys<'_>,
) -> Option<KifsAuth> {
    if let Some((name, span)) = password.given().first() {
        ck.error(
            span,
            &format!("kifs.{name}"),
            "a password needs a username: set kifs.username",
        );
        return None;
    }
    match token.resolve(ck.src, &ck.base, ck.env, ck.read_secrets) {
        Ok(Some(token)) => Some(KifsAuth::Bearer { token }),
        Ok(None) => Some(KifsAuth::None),
        Err(e) => {
            ck.errors.push(e);
            None
        }
    }
}

/// Why `name` cannot be sent as the user of HTTP Basic auth, in words that do not show it:
/// `user:password` is what gets sent, so the name ends at its first colon, and a name
/// holding one is most likely a user and password pasted into one key.
fn unsendable_username(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("expected a user name, found \"\"".to_string());
    }
    if name.contains(':') {
        return Some(
            "holds a ':', which HTTP Basic auth cannot send in a user name (the name ends at \
             the first colon); expected the user name alone, with the password in \
             password_file or password_env"
                .to_string(),
        );
    }
    unsendable(name, Sent::Encoded)
}

fn folder(
    ck: &mut Checker<'_>,
    raw: &RawConfig,
    i: usize,
    section: &Spanned<RawFolder>,
    options: &LoadOptions,
) -> Option<FolderConfig> {
    let f = section.get_ref();
    let key = |name: &str| format!("folder[{i}].{name}");
    let errors_before = ck.errors.len();

    let path = required_path(ck, &f.path, &key("path"));
    check_folder_exists(ck, section, i, &path, options);
    let target = folder_target(ck, raw, section, i);

    let redivis = redivis_folder(ck, f, i);
    let deletes = super::deletes::delete_policy(ck, f, i);
    let after_upload = super::spool::after_upload(ck, f, i, deletes.on_delete);
    super::spool::check_archive_file_system(ck, f, i, &path, &after_upload, options);
    let include = globs(ck, f.include.as_deref(), &key("include")).unwrap_or_default();
    let exclude = match f.exclude.as_deref() {
        Some(list) => globs(ck, Some(list), &key("exclude")).unwrap_or_default(),
        None => DEFAULT_EXCLUDES.iter().map(|s| s.to_string()).collect(),
    };

    if ck.errors.len() > errors_before {
        return None;
    }
    Some(FolderConfig {
        path,
        target: target.expect("a folder without errors has a target"),
        include,
        exclude,
        settle: duration_or(&f.settle, DEFAULT_SETTLE),
        recursive: f.recursive.unwrap_or(true),
        redivis,
        deletes,
        after_upload,
    })
}

/// `folder[i].path` is an existing directory, when the caller asks
/// ([`LoadOptions::check_folders_exist`]: not the queries, whose missing folder is the
/// daemon's to report, nor a reload).
fn check_folder_exists(
    ck: &mut Checker<'_>,
    section: &Spanned<RawFolder>,
    i: usize,
    path: &Path,
    options: &LoadOptions,
) {
    let f = section.get_ref();
    let key = |name: &str| format!("folder[{i}].{name}");
    if !options.check_folders_exist {
        return;
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => ck.error(
            &f.path.span(),
            &key("path"),
            format!("\"{}\" is not a directory (expected a folder to watch)", path.display()),
        ),
        Err(e) => ck.error(
            &f.path.span(),
            &key("path"),
            format!(
                "missing folder \"{}\": {} (expected an existing directory to watch; create it or fix the path)",
                path.display(),
                e
            ),
        ),
    }
}

/// The folder's one target, `redivis_table` or `kifs_directory`, checked with the keys that
/// go with it and the backend section it needs.
fn folder_target(
    ck: &mut Checker<'_>,
    raw: &RawConfig,
    section: &Spanned<RawFolder>,
    i: usize,
) -> Option<Target> {
    let f = section.get_ref();
    let key = |name: &str| format!("folder[{i}].{name}");
    match (&f.redivis_table, &f.kifs_directory) {
        (Some(table), Some(dir)) => {
            let (first, second, second_key) = if table.span().start < dir.span().start {
                (table.span(), dir.span(), "kifs_directory")
            } else {
                (dir.span(), table.span(), "redivis_table")
            };
            ck.error(
                &second,
                &key(second_key),
                format!(
                    "give exactly one of redivis_table or kifs_directory per folder, found both \
                     (lines {} and {})",
                    ck.src.line_of(first.start),
                    ck.src.line_of(second.start)
                ),
            );
            None
        }
        (None, None) => {
            ck.error(
                &section.span(),
                &format!("folder[{i}]"),
                "no target: set redivis_table = \"owner.dataset:next.table\" or \
                 kifs_directory = \"directory\"",
            );
            None
        }
        (Some(table), None) => {
            if let Some(create) = &f.create_directory {
                ck.error(
                    &create.span(),
                    &key("create_directory"),
                    "only applies to kifs_directory; Redivis tables are not created by upsync \
                     (remove the key)",
                );
            }
            if let Err(e) = targets::check_redivis_table(table.get_ref()) {
                ck.error(&table.span(), &key("redivis_table"), e);
            }
            if raw.redivis.is_none() {
                ck.error(
                    &table.span(),
                    &key("redivis_table"),
                    "targets Redivis, but there is no [redivis] section (expected [redivis] \
                     with token_file or token_env)",
                );
            }
            Some(Target::RedivisTable(table.get_ref().clone()))
        }
        (None, Some(dir)) => {
            if let Err(e) = targets::check_kifs_directory(dir.get_ref()) {
                ck.error(&dir.span(), &key("kifs_directory"), e);
            }
            if raw.kifs.is_none() {
                ck.error(
                    &dir.span(),
                    &key("kifs_directory"),
                    "targets KiFS, but there is no [kifs] section (expected [kifs] with url and \
                     credentials)",
                );
            }
            Some(Target::KifsDirectory {
                directory: dir.get_ref().clone(),
                create: f.create_directory.as_ref().is_some_and(|c| *c.get_ref()),
            })
        }
    }
}

/// `create_next_version` and `[folder.redivis_options]`: only for a Redivis folder.
fn redivis_folder(ck: &mut Checker<'_>, f: &RawFolder, i: usize) -> RedivisFolder {
    if f.redivis_table.is_none() {
        let given = [
            (
                "create_next_version",
                f.create_next_version.as_ref().map(|v| v.span()),
            ),
            (
                "redivis_options",
                f.redivis_options.as_ref().map(|v| v.span()),
            ),
        ];
        for (name, span) in given {
            if let Some(span) = span {
                ck.error(
                    &span,
                    &format!("folder[{i}].{name}"),
                    "only applies to a folder with redivis_table (remove the key)",
                );
            }
        }
    }
    RedivisFolder {
        create_next_version: f.create_next_version.as_ref().is_some_and(|v| *v.get_ref()),
        parse: f
            .redivis_options
            .as_ref()
            .map(|options| parse_options(ck, options.get_ref(), i))
            .unwrap_or_default(),
    }
}

fn parse_options(ck: &mut Checker<'_>, raw: &RawRedivisOptions, i: usize) -> ParseOptions {
    let key = |name: &str| format!("folder[{i}].redivis_options.{name}");
    let mut character = |value: &Option<Spanned<String>>, name: &str| {
        let value = value.as_ref()?;
        redivis_options::check_character(value.get_ref())
            .map_err(|e| ck.error(&value.span(), &key(name), e))
            .ok()
    };
    let delimiter = character(&raw.delimiter, "delimiter");
    let quote_character = character(&raw.quote_character, "quote_character");
    let escape_character = character(&raw.escape_character, "escape_character");
    let kind = raw.kind.as_ref().and_then(|kind| {
        redivis_options::check_type(kind.get_ref())
            .map_err(|e| ck.error(&kind.span(), &key("type"), e))
            .ok()
    });
    let options = ParseOptions {
        kind,
        delimiter,
        has_header_row: raw.has_header_row,
        skip_bad_records: raw.skip_bad_records,
        has_quoted_newlines: raw.has_quoted_newlines,
        allow_jagged_rows: raw.allow_jagged_rows,
        quote_character,
        escape_character,
        null_markers: raw.null_markers.clone(),
    };
    if let (Some(d), Some(q)) = (delimiter, quote_character)
        && d == q
    {
        let span = raw.quote_character.as_ref().expect("checked").span();
        ck.error(
            &span,
            &key("quote_character"),
            format!("the quote must differ from the delimiter, both are {d:?}"),
        );
    }
    if let Some(kind) = raw.kind.as_ref().filter(|k| k.get_ref() != "delimited") {
        for name in options.delimited_only_keys() {
            ck.error(
                &kind.span(),
                &key(name),
                format!(
                    "only applies to delimited files, but type is \"{}\" (remove {name}, or \
                     set type = \"delimited\")",
                    kind.get_ref()
                ),
            );
        }
    }
    options
}

fn globs(ck: &mut Checker<'_>, list: Option<&[Spanned<String>]>, key: &str) -> Option<Vec<String>> {
    let list = list?;
    let mut out = Vec::with_capacity(list.len());
    for pattern in list {
        match Glob::new(pattern.get_ref()) {
            Ok(_) if pattern.get_ref().is_empty() => {
                ck.error(&pattern.span(), key, "expected a glob pattern like \"*.csv\", found \"\"");
            }
            Ok(_) => out.push(pattern.get_ref().clone()),
            Err(e) => ck.error(
                &pattern.span(),
                key,
                format!(
                    "bad glob pattern \"{}\": {} (expected a pattern like \"*.csv\" or \"**/*.parquet\")",
                    pattern.get_ref(),
                    e.kind()
                ),
            ),
        }
    }
    Some(out)
}

/// A folder that passed its own checks, with where it was written.
struct Checked {
    folder: FolderConfig,
    /// Position among the `[[folder]]` sections; folders with errors are left out of the
    /// list, so this can differ from the list position.
    index: usize,
    path_span: Range<usize>,
    /// Where its `redivis_table` or `kifs_directory` is written.
    target_span: Option<Range<usize>>,
}

fn check_overlaps(ck: &mut Checker<'_>, folders: &[Checked]) {
    for (j, later) in folders.iter().enumerate() {
        for earlier in &folders[..j] {
            let (a, b) = (&earlier.folder, &later.folder);
            if !paths::overlaps(&a.path, &b.path) {
                continue;
            }
            let relation = if a.path == b.path {
                "is the same folder as"
            } else if b.path.starts_with(&a.path) {
                "lies inside"
            } else {
                "contains"
            };
            let message = format!(
                "folder \"{}\" {} folder \"{}\" (folder[{}].path on line {}); watched folders \
                 must not overlap, so that every file has one target",
                b.path.display(),
                relation,
                a.path.display(),
                earlier.index,
                ck.src.line_of(earlier.path_span.start),
            );
            ck.error(
                &later.path_span,
                &format!("folder[{}].path", later.index),
                message,
            );
        }
    }
}

/// Two folders may not feed one Redivis table or one KiFS directory: a file is named there
/// by its path relative to its folder, so `a/x.csv` and `b/x.csv` would take each other's
/// copy for their own and replace or delete it.
fn check_shared_tables(ck: &mut Checker<'_>, folders: &[Checked]) {
    for (j, later) in folders.iter().enumerate() {
        let Some(span) = &later.target_span else {
            continue;
        };
        let earlier = folders[..j]
            .iter()
            .find(|earlier| same_destination(&earlier.folder.target, &later.folder.target));
        let Some(earlier) = earlier else {
            continue;
        };
        let line = earlier
            .target_span
            .as_ref()
            .map_or(0, |s| ck.src.line_of(s.start));
        let (what, key, own) = match &later.folder.target {
            Target::RedivisTable(table) => (format!("table {table:?}"), "redivis_table", "table"),
            Target::KifsDirectory { directory, .. } => (
                format!("KiFS directory {directory:?}"),
                "kifs_directory",
                "directory",
            ),
        };
        let message = format!(
            "{what} is also fed by folder \"{}\" (folder[{}].{key} on line {line}); files are \
             named by their path relative to their folder, so the same name in both folders \
             would replace each other's copy: give each folder its own {own}, or watch their \
             common parent folder",
            earlier.folder.path.display(),
            earlier.index,
        );
        ck.error(span, &format!("folder[{}].{key}", later.index), message);
    }
}

/// Whether two targets name one place: Redivis table references ignore ASCII case, KiFS
/// names are compared as written (case-sensitive: `docs/protocols/kifs.md`, names).
fn same_destination(a: &Target, b: &Target) -> bool {
    match (a, b) {
        (Target::RedivisTable(a), Target::RedivisTable(b)) => a.eq_ignore_ascii_case(b),
        (
            Target::KifsDirectory { directory: a, .. },
            Target::KifsDirectory { directory: b, .. },
        ) => a == b,
        _ => false,
    }
}

fn check_inside_folders(
    ck: &mut Checker<'_>,
    folders: &[Checked],
    path: &Path,
    span: &Range<usize>,
    key: &str,
    why: &str,
) {
    for checked in folders {
        if paths::overlaps(path, &checked.folder.path) {
            let message = format!(
                "\"{}\" overlaps the watched folder \"{}\" (folder[{}].path on line {}); {}",
                path.display(),
                checked.folder.path.display(),
                checked.index,
                ck.src.line_of(checked.path_span.start),
                why
            );
            ck.error(span, key, message);
        }
    }
}
