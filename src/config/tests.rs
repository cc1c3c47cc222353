//! Loading real config files from temp dirs: one test per kind of mistake, each checking
//! that the message names the file, the line and the key.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

/// A temp dir holding `upsync.toml` and two folders to watch, `inbox/a` and `inbox/b`.
struct Fixture {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        for sub in ["inbox/a", "inbox/b", "inbox/a/nested"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("the temp dir is writable");
        }
        Fixture {
            dir,
            env: HashMap::new(),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().canonicalize().expect("the temp dir exists")
    }

    fn env(&mut self, name: &str, value: &str) -> &mut Fixture {
        self.env.insert(name.to_string(), value.to_string());
        self
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("the temp dir is writable");
        path
    }

    fn load_with(&self, text: &str, options: LoadOptions) -> Result<Config, ConfigError> {
        let path = self.write("upsync.toml", text);
        let env = |name: &str| self.env.get(name).map(OsString::from);
        Config::parse(&path, text, options, &env)
    }

    fn load(&self, text: &str) -> Result<Config, ConfigError> {
        self.load_with(text, LoadOptions::default())
    }

    fn ok(&self, text: &str) -> Config {
        self.load(text)
            .unwrap_or_else(|e| panic!("the config should load, got: {e}"))
    }

    fn err(&self, text: &str) -> String {
        match self.load(text) {
            Ok(_) => panic!("the config should be rejected:\n{text}"),
            Err(e) => e.to_string(),
        }
    }
}

/// Asserts `message` names `upsync.toml` at `line` and contains every one of `parts`.
fn assert_names(message: &str, line: usize, parts: &[&str]) {
    let location = format!("upsync.toml:{line}:");
    assert!(
        message.contains(&location),
        "expected {location} in: {message}"
    );
    for part in parts {
        assert!(message.contains(part), "expected {part:?} in: {message}");
    }
}

const KIFS_FOLDER: &str = r#"state_dir = "state"
[kifs]
url = "http://127.0.0.1:9191/"
[[folder]]
path = "inbox/a"
kifs_directory = "ingest"
"#;

const REDIVIS_FOLDER: &str = r#"state_dir = "state"
[redivis]
token = "t0ken-value"
[[folder]]
path = "inbox/a"
redivis_table = "owner.dataset:next.table"
"#;

#[test]
fn a_minimal_config_gets_the_documented_defaults() {
    let fx = Fixture::new();
    let config = fx.ok(KIFS_FOLDER);
    assert_eq!(config.concurrency, 4);
    assert_eq!(config.rescan_interval, Some(Duration::from_secs(600)));
    assert_eq!(config.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(config.retry_max_delay, Duration::from_secs(3600));
    assert_eq!(config.metrics_listen, None);
    assert!(config.redivis.is_none());
    assert!(config.emulator.is_none());
    let kifs = config.kifs.as_ref().expect("the [kifs] section is given");
    assert_eq!(kifs.url, "http://127.0.0.1:9191");
    assert!(matches!(kifs.auth, KifsAuth::None));
    assert_eq!(kifs.encoding, KifsEncoding::Binary);
    let folder = &config.folders[0];
    assert_eq!(
        folder.target,
        Target::KifsDirectory {
            directory: "ingest".into(),
            create: false
        }
    );
    assert!(folder.include.is_empty());
    assert_eq!(folder.exclude, DEFAULT_EXCLUDES);
    assert_eq!(folder.settle, Duration::from_secs(5));
    assert!(folder.recursive);
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let fx = Fixture::new();
    let config = fx.ok(KIFS_FOLDER);
    assert_eq!(config.state_dir, fx.root().join("state"));
    assert_eq!(config.folders[0].path, fx.root().join("inbox/a"));
    assert!(config.source.ends_with("upsync.toml"));
}

#[test]
fn every_key_is_read_when_given() {
    let mut fx = Fixture::new();
    fx.write("redivis.token", "file-token\n");
    let text = r#"state_dir = "/var/lib/upsync-test"
concurrency = 8
rescan_interval = "1h 30m"
shutdown_timeout = "45s"
retry_max_delay = "10m"
metrics_listen = "127.0.0.1:9464"
[redivis]
api_url = "http://127.0.0.1:8787/api/v1/"
token_file = "redivis.token"
chunk_size = "16MiB"
protocol = "temp-uploads"
[kifs]
url = "http://127.0.0.1:9191"
token_env = "KIFS_TOKEN"
encoding = "json"
[[folder]]
path = "inbox/a"
redivis_table = "owner.dataset:next.table"
include = ["*.csv", "**/*.parquet"]
exclude = ["*.tmp"]
settle = "2s"
recursive = false
[[folder]]
path = "inbox/b"
kifs_directory = "~ingest"
create_directory = true
[emulator]
listen = "127.0.0.1:8787"
data_dir = "remote"
"#;
    let config = fx.env("KIFS_TOKEN", "env-token").ok(text);
    assert_eq!(config.state_dir, PathBuf::from("/var/lib/upsync-test"));
    assert_eq!(config.concurrency, 8);
    assert_eq!(config.rescan_interval, Some(Duration::from_secs(5400)));
    assert_eq!(config.shutdown_timeout, Duration::from_secs(45));
    assert_eq!(config.retry_max_delay, Duration::from_secs(600));
    assert_eq!(
        config.metrics_listen,
        Some("127.0.0.1:9464".parse().expect("a valid address"))
    );
    let redivis = config.redivis.as_ref().expect("[redivis] is given");
    assert_eq!(redivis.api_url, "http://127.0.0.1:8787/api/v1");
    assert_eq!(redivis.token.expose(), "file-token");
    assert_eq!(redivis.chunk_size, 16 << 20);
    assert_eq!(redivis.protocol, RedivisProtocol::TempUploads);
    let kifs = config.kifs.as_ref().expect("[kifs] is given");
    match &kifs.auth {
        KifsAuth::Bearer { token } => assert_eq!(token.expose(), "env-token"),
        other => panic!("expected bearer auth, got {other:?}"),
    }
    assert_eq!(kifs.encoding, KifsEncoding::Json);
    let a = &config.folders[0];
    assert_eq!(a.include, ["*.csv", "**/*.parquet"]);
    assert_eq!(a.exclude, ["*.tmp"]);
    assert_eq!(a.settle, Duration::from_secs(2));
    assert!(!a.recursive);
    assert_eq!(
        config.folders[1].target,
        Target::KifsDirectory {
            directory: "~ingest".into(),
            create: true
        }
    );
    let emulator = config.emulator.as_ref().expect("[emulator] is given");
    assert_eq!(emulator.listen.port(), 8787);
    assert_eq!(emulator.data_dir, fx.root().join("remote"));
}

#[test]
fn an_empty_exclude_list_replaces_the_defaults() {
    let fx = Fixture::new();
    let config = fx.ok(&format!("{KIFS_FOLDER}exclude = []\n"));
    assert!(config.folders[0].exclude.is_empty());
}

#[test]
fn a_zero_rescan_interval_disables_rescans() {
    let fx = Fixture::new();
    let text = KIFS_FOLDER.replace("state_dir", "rescan_interval = \"0s\"\nstate_dir");
    assert_eq!(fx.ok(&text).rescan_interval, None);
}

#[test]
fn the_redivis_api_url_defaults_to_the_public_service() {
    let fx = Fixture::new();
    let config = fx.ok(REDIVIS_FOLDER);
    let redivis = config.redivis.as_ref().expect("[redivis] is given");
    assert_eq!(redivis.api_url, "https://redivis.com/api/v1");
    assert_eq!(redivis.chunk_size, 8 << 20);
    assert_eq!(redivis.protocol, RedivisProtocol::ResumableUpload);
}

#[test]
fn unknown_key_names_the_line_the_key_and_the_known_keys() {
    let fx = Fixture::new();
    let text = KIFS_FOLDER.replace("[kifs]", "concurency = 3\n[kifs]");
    let message = fx.err(&text);
    assert_names(
        &message,
        2,
        &[
            "unknown key 'concurency' in the top level",
            "did you mean 'concurrency'",
            "state_dir, concurrency,",
        ],
    );
}

#[test]
fn unknown_key_in_a_folder_names_the_folder() {
    let fx = Fixture::new();
    let message = fx.err(&format!("{KIFS_FOLDER}setle = \"5s\"\n"));
    assert_names(
        &message,
        7,
        &["unknown key 'setle' in folder[0]", "'settle'"],
    );
}

#[test]
fn wrong_type_names_the_key_and_the_expected_type() {
    let fx = Fixture::new();
    let text = KIFS_FOLDER.replace("[kifs]", "concurrency = \"four\"\n[kifs]");
    let message = fx.err(&text);
    assert_names(
        &message,
        2,
        &[
            "key 'concurrency'",
            "expected an integer, found string \"four\"",
        ],
    );
}

#[test]
fn wrong_type_inside_a_folder_names_the_indexed_key() {
    let fx = Fixture::new();
    let text = format!(
        "{KIFS_FOLDER}[[folder]]\npath = \"inbox/b\"\nkifs_directory = \"x\"\nrecursive = \"yes\"\n"
    );
    let message = fx.err(&text);
    assert_names(
        &message,
        10,
        &["key 'folder[1].recursive'", "expected a boolean"],
    );
}

#[test]
fn bad_duration_unit_names_the_key_and_shows_an_example() {
    let fx = Fixture::new();
    let message = fx.err(&format!("{KIFS_FOLDER}settle = \"5 parsecs\"\n"));
    assert_names(
        &message,
        7,
        &[
            "key 'folder[0].settle'",
            "expected a duration like \"5s\" or \"2m\", found \"5 parsecs\"",
        ],
    );
}

#[test]
fn a_number_where_a_duration_belongs_is_explained() {
    let fx = Fixture::new();
    let message = fx.err(&format!("{KIFS_FOLDER}settle = 5\n"));
    assert_names(
        &message,
        7,
        &["key 'folder[0].settle'", "expected a duration like \"5s\""],
    );
}

#[test]
fn bad_size_unit_names_the_key_and_shows_an_example() {
    let fx = Fixture::new();
    let text = REDIVIS_FOLDER.replace("[[folder]]", "chunk_size = \"8 parsecs\"\n[[folder]]");
    let message = fx.err(&text);
    assert_names(
        &message,
        4,
        &[
            "key 'redivis.chunk_size'",
            "\"8MiB\"",
            "found \"8 parsecs\"",
        ],
    );
}

#[test]
fn chunk_size_must_be_a_multiple_of_256_kib() {
    let fx = Fixture::new();
    let text = REDIVIS_FOLDER.replace("[[folder]]", "chunk_size = \"8MB\"\n[[folder]]");
    let message = fx.err(&text);
    assert_names(
        &message,
        4,
        &[
            "key 'redivis.chunk_size'",
            "multiple of 256 KiB",
            "8000000 bytes",
        ],
    );
    let text = REDIVIS_FOLDER.replace("[[folder]]", "chunk_size = 262144\n[[folder]]");
    let config = fx.ok(&text);
    assert_eq!(
        config.redivis.expect("[redivis] is given").chunk_size,
        262_144
    );
    let text = REDIVIS_FOLDER.replace("[[folder]]", "chunk_size = \"2GiB\"\n[[folder]]");
    assert_names(&fx.err(&text), 4, &["up to 1 GiB"]);
}

#[test]
fn concurrency_zero_is_out_of_range() {
    let fx = Fixture::new();
    let text = KIFS_FOLDER.replace("[kifs]", "concurrency = 0\n[kifs]");
    let message = fx.err(&text);
    assert_names(
        &message,
        2,
        &[
            "key 'concurrency'",
            "expected an integer from 1 to 64, found 0",
        ],
    );
}

#[test]
fn two_targets_in_one_folder_are_rejected_naming_both_lines() {
    let fx = Fixture::new();
    let text = format!("{REDIVIS_FOLDER}kifs_directory = \"ingest\"\n[kifs]\nurl = \"http://k\"\n");
    let message = fx.err(&text);
    assert_names(
        &message,
        7,
        &[
            "key 'folder[0].kifs_directory'",
            "exactly one of",
            "lines 6 and 7",
        ],
    );
}

#[test]
fn a_folder_without_a_target_is_rejected() {
    let fx = Fixture::new();
    let text = KIFS_FOLDER.replace("kifs_directory = \"ingest\"\n", "");
    let message = fx.err(&text);
    assert_names(
        &message,
        4,
        &[
            "key 'folder[0]'",
            "no target",
            "redivis_table",
            "kifs_directory",
        ],
    );
}

#[test]
fn a_missing_folder_is_named_with_its_path() {
    let fx = Fixture::new();
    let text = KIFS_FOLDER.replace("inbox/a", "inbox/nope");
    let message = fx.err(&text);
    let expected_path = fx.root().join("inbox/nope");
    assert_names(
        &message,
        5,
        &[
            "key 'folder[0].path'",
            "missing folder",
            &expected_path.display().to_string(),
        ],
    );
    // The same config passes when folder existence is not checked.
    let config = fx
        .load_with(
            &text,
            LoadOptions {
                check_folders_exist: false,
                ..LoadOptions::default()
            },
        )
        .expect("only the folder is missing");
    assert_eq!(config.folders[0].path, expected_path);
}

#[test]
fn a_file_is_not_a_folder() {
    let fx = Fixture::new();
    fx.write("plain.txt", "x");
    let message = fx.err(&KIFS_FOLDER.replace("inbox/a", "plain.txt"));
    assert_names(&message, 5, &["key 'folder[0].path'", "is not a directory"]);
}

#[test]
fn overlapping_folders_name_both_folders_and_both_lines() {
    let fx = Fixture::new();
    let text =
        format!("{KIFS_FOLDER}[[folder]]\npath = \"inbox/a/nested\"\nkifs_directory = \"x\"\n");
    let message = fx.err(&text);
    assert_names(
        &message,
        8,
        &[
            "key 'folder[1].path'",
            &fx.root().join("inbox/a/nested").display().to_string(),
            "lies inside",
            &format!("\"{}\"", fx.root().join("inbox/a").display()),
            "folder[0].path on line 5",
        ],
    );
}

#[test]
fn two_folders_feeding_one_redivis_table_are_refused() {
    let fx = Fixture::new();
    let text = format!(
        "{REDIVIS_FOLDER}[[folder]]\npath = \"inbox/b\"\nredivis_table = \"Owner.Dataset:next.Table\"\n"
    );
    assert_names(
        &fx.err(&text),
        9,
        &[
            "key 'folder[1].redivis_table'",
            &format!("\"{}\"", fx.root().join("inbox/a").display()),
            "folder[0].redivis_table on line 6",
            "give each folder its own table",
        ],
    );
}

#[test]
fn two_folders_feeding_one_kifs_directory_are_refused() {
    let fx = Fixture::new();
    let text =
        format!("{KIFS_FOLDER}[[folder]]\npath = \"inbox/b\"\nkifs_directory = \"ingest\"\n");
    assert_names(
        &fx.err(&text),
        9,
        &[
            "key 'folder[1].kifs_directory'",
            "KiFS directory \"ingest\"",
            "folder[0].kifs_directory on line 6",
            "give each folder its own directory",
        ],
    );
    let apart =
        format!("{KIFS_FOLDER}[[folder]]\npath = \"inbox/b\"\nkifs_directory = \"Ingest\"\n");
    assert_eq!(
        fx.ok(&apart).folders.len(),
        2,
        "KiFS names are case-sensitive"
    );
}

#[test]
fn two_folders_feeding_two_tables_of_one_dataset_load() {
    let fx = Fixture::new();
    let text = format!(
        "{REDIVIS_FOLDER}[[folder]]\npath = \"inbox/b\"\nredivis_table = \"owner.dataset:next.other\"\n"
    );
    assert_eq!(fx.ok(&text).folders.len(), 2);
}

#[test]
fn the_same_folder_twice_is_an_overlap() {
    let fx = Fixture::new();
    let text =
        format!("{KIFS_FOLDER}[[folder]]\npath = \"./inbox/b/../a\"\nkifs_directory = \"x\"\n");
    assert_names(&fx.err(&text), 8, &["is the same folder as", "line 5"]);
}

#[test]
fn the_state_dir_must_not_lie_inside_a_watched_folder() {
    let fx = Fixture::new();
    let text = KIFS_FOLDER.replace("\"state\"", "\"inbox/a/.state\"");
    let message = fx.err(&text);
    assert_names(
        &message,
        1,
        &["key 'state_dir'", "overlaps the watched folder", "line 5"],
    );
}

#[test]
fn a_state_dir_that_cannot_be_a_directory_is_rejected() {
    let fx = Fixture::new();
    fx.write("afile", "not a directory");
    let state = |dir: &str| KIFS_FOLDER.replace("\"state\"", &format!("\"{dir}\""));
    let message = fx.err(&state("afile"));
    assert_names(
        &message,
        1,
        &[
            "key 'state_dir'",
            "afile\" exists and is not a directory",
            "expected a directory",
        ],
    );
    let message = fx.err(&state("afile/deeper/state"));
    assert_names(
        &message,
        1,
        &[
            "key 'state_dir'",
            "cannot be created",
            "afile\" is not a directory",
        ],
    );
    let message = fx.err(&state("/proc/upsync-state"));
    assert_names(&message, 1, &["key 'state_dir'", "proc pseudo-file system"]);
    // Not there yet is fine: run creates it, with its parents.
    fx.ok(&state("not/yet/there"));
    std::fs::create_dir(fx.root().join("made")).expect("the temp dir is writable");
    fx.ok(&state("made"));
}

#[test]
fn a_kifs_folder_needs_the_kifs_section() {
    let fx = Fixture::new();
    let text = KIFS_FOLDER.replace("[kifs]\nurl = \"http://127.0.0.1:9191/\"\n", "");
    let message = fx.err(&text);
    assert_names(
        &message,
        4,
        &["key 'folder[0].kifs_directory'", "no [kifs] section"],
    );
}

#[test]
fn a_redivis_folder_needs_the_redivis_section() {
    let fx = Fixture::new();
    let text = REDIVIS_FOLDER.replace("[redivis]\ntoken = \"t0ken-value\"\n", "");
    let message = fx.err(&text);
    assert_names(
        &message,
        4,
        &["key 'folder[0].redivis_table'", "no [redivis] section"],
    );
}

#[test]
fn an_unset_token_env_names_the_variable() {
    let mut fx = Fixture::new();
    let text = REDIVIS_FOLDER.replace(
        "token = \"t0ken-value\"",
        "token_env = \"UPSYNC_TEST_UNSET\"",
    );
    let message = fx.err(&text);
    assert_names(
        &message,
        3,
        &["key 'redivis.token_env'", "UPSYNC_TEST_UNSET is not set"],
    );
    let message = fx.env("UPSYNC_TEST_UNSET", "").err(&text);
    assert_names(&message, 3, &["UPSYNC_TEST_UNSET is empty"]);
}

#[test]
fn a_token_env_is_read_from_the_environment() {
    let mut fx = Fixture::new();
    fx.env("REDIVIS_API_TOKEN", "from-env");
    let text = REDIVIS_FOLDER.replace(
        "token = \"t0ken-value\"",
        "token_env = \"REDIVIS_API_TOKEN\"",
    );
    let config = fx.ok(&text);
    assert_eq!(
        config.redivis.expect("[redivis] is given").token.expose(),
        "from-env"
    );
}

#[test]
fn an_unreadable_token_file_names_the_key_and_the_path() {
    let fx = Fixture::new();
    let text = REDIVIS_FOLDER.replace("token = \"t0ken-value\"", "token_file = \"secrets/none\"");
    let message = fx.err(&text);
    assert_names(
        &message,
        3,
        &[
            "key 'redivis.token_file'",
            "cannot read the secret file",
            &fx.root().join("secrets/none").display().to_string(),
        ],
    );
}

#[test]
fn a_token_file_loses_its_trailing_newline() {
    let fx = Fixture::new();
    fx.write("token", "abc123\r\n");
    let text = REDIVIS_FOLDER.replace("token = \"t0ken-value\"", "token_file = \"token\"");
    let config = fx.ok(&text);
    assert_eq!(
        config.redivis.expect("[redivis] is given").token.expose(),
        "abc123"
    );
}

#[test]
fn a_rotated_token_file_is_read_again_and_an_unusable_one_keeps_the_token_in_use() {
    let fx = Fixture::new();
    fx.write("token", "first-token\n");
    let text = REDIVIS_FOLDER.replace("token = \"t0ken-value\"", "token_file = \"token\"");
    let config = fx.ok(&text);
    let mut problems = Vec::new();
    assert!(
        config.with_rotated_secrets(&mut problems).is_none(),
        "the same token: nothing to change"
    );
    assert!(problems.is_empty(), "{problems:?}");

    fx.write("token", "\n");
    assert!(config.with_rotated_secrets(&mut problems).is_none());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("is empty"), "{problems:?}");

    fx.write("token", "second-token\n");
    let mut problems = Vec::new();
    let rotated = config
        .with_rotated_secrets(&mut problems)
        .expect("a new token in the file");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        rotated.redivis.expect("[redivis]").token.expose(),
        "second-token"
    );
    assert_eq!(
        config.redivis.as_ref().expect("[redivis]").token.expose(),
        "first-token",
        "the running config is not changed in place"
    );

    let inline = fx.ok(REDIVIS_FOLDER);
    assert!(
        inline.with_rotated_secrets(&mut problems).is_none(),
        "an inline token is not read again"
    );
}

#[test]
fn an_empty_token_file_is_rejected_without_showing_content() {
    let fx = Fixture::new();
    fx.write("token", "\n");
    let text = REDIVIS_FOLDER.replace("token = \"t0ken-value\"", "token_file = \"token\"");
    assert_names(&fx.err(&text), 3, &["key 'redivis.token_file'", "is empty"]);
}

#[test]
fn a_secret_that_cannot_go_in_a_header_is_rejected_without_showing_it() {
    let mut fx = Fixture::new();
    fx.write("two-lines.token", "a b\nline2\n");
    fx.write("crlf-inside.password", "pass\r\nwQrd");
    fx.write("tab.token", "to\tkXn");
    fx.write("accent.token", "tok\u{e9}Xn");
    fx.env("BAD_TOKEN", "first\nsecond");
    fx.env("BAD_PASSWORD", "pass\u{7f}wQrd");
    let redivis = |keys: &str| REDIVIS_FOLDER.replace("token = \"t0ken-value\"", keys);
    let kifs = |keys: &str| KIFS_FOLDER.replace("[[folder]]", &format!("{keys}\n[[folder]]"));
    let cases = [
        (
            redivis("token_file = \"two-lines.token\""),
            3,
            "redivis.token_file",
            "line break",
        ),
        (
            redivis("token_file = \"tab.token\""),
            3,
            "redivis.token_file",
            "control character",
        ),
        (
            redivis("token_file = \"accent.token\""),
            3,
            "redivis.token_file",
            "not ASCII",
        ),
        (
            redivis("token_env = \"BAD_TOKEN\""),
            3,
            "redivis.token_env",
            "BAD_TOKEN holds a line break",
        ),
        (
            redivis("token = \"in\\nline\""),
            3,
            "redivis.token",
            "line break",
        ),
        (
            kifs("token_file = \"two-lines.token\""),
            4,
            "kifs.token_file",
            "line break",
        ),
        (
            kifs("username = \"u\"\npassword_file = \"crlf-inside.password\""),
            5,
            "kifs.password_file",
            "line break",
        ),
        (
            kifs("username = \"u\"\npassword_env = \"BAD_PASSWORD\""),
            5,
            "kifs.password_env",
            "control character",
        ),
        (
            kifs("username = \"u\"\npassword = \"p\\tw\""),
            5,
            "kifs.password",
            "control character",
        ),
    ];
    for (text, line, key, what) in cases {
        let message = fx.err(&text);
        assert_names(&message, line, &[&format!("key '{key}'"), what]);
        for content in ["line2", "wQrd", "kXn", "Xn", "second", "in\nline", "p\tw"] {
            assert!(
                !message.contains(content),
                "{content:?} shown in: {message}"
            );
        }
    }
    let named = fx.err(&redivis("token_file = \"two-lines.token\""));
    assert!(named.contains("two-lines.token\" holds"), "{named}");
    // Spaces go in a header; a password is base64-encoded, so it may be any text.
    fx.write("spaced.token", "a b c\n");
    fx.write("accent.password", "p\u{e4}ssw\u{f6}rd\n");
    fx.ok(&redivis("token_file = \"spaced.token\""));
    fx.ok(&kifs(
        "username = \"u\"\npassword_file = \"accent.password\"",
    ));
}

#[test]
fn a_token_file_is_found_among_systemd_credentials() {
    let mut fx = Fixture::new();
    let creds = fx.root().join("creds");
    std::fs::create_dir(&creds).expect("the temp dir is writable");
    std::fs::write(creds.join("redivis.token"), "cred-token\n").expect("the temp dir is writable");
    let text = REDIVIS_FOLDER.replace(
        "token = \"t0ken-value\"",
        "token_file = \"/etc/upsync/redivis.token\"",
    );
    let config = fx
        .env("CREDENTIALS_DIRECTORY", &creds.display().to_string())
        .ok(&text);
    assert_eq!(
        config.redivis.expect("[redivis] is given").token.expose(),
        "cred-token"
    );
}

#[test]
fn two_ways_of_giving_one_token_are_rejected() {
    let mut fx = Fixture::new();
    fx.env("T", "x");
    let text = REDIVIS_FOLDER.replace(
        "token = \"t0ken-value\"",
        "token = \"a\"\ntoken_env = \"T\"",
    );
    assert_names(
        &fx.err(&text),
        4,
        &[
            "key 'redivis.token_env'",
            "only one of token, token_file, token_env",
        ],
    );
}

/// What `status`, `ls`, `retry` and `forget` load with.
const WITHOUT_SECRETS: LoadOptions = LoadOptions {
    check_folders_exist: true,
    read_secrets: false,
};

#[test]
fn without_reading_secrets_an_unset_variable_or_a_missing_file_is_accepted() {
    let fx = Fixture::new();
    let redivis = REDIVIS_FOLDER.replace("token = \"t0ken-value\"", "token_env = \"UNSET\"");
    let kifs = KIFS_FOLDER.replace(
        "[[folder]]",
        "username = \"u\"\npassword_file = \"no/such.password\"\n[[folder]]",
    );
    for text in [&redivis, &kifs] {
        assert!(fx.load(text).is_err(), "reading the secret fails:\n{text}");
        let config = fx
            .load_with(text, WITHOUT_SECRETS)
            .unwrap_or_else(|e| panic!("the config should load, got: {e}"));
        let secret = match (&config.redivis, &config.kifs) {
            (Some(redivis), _) => redivis.token.clone(),
            (
                None,
                Some(KifsConfig {
                    auth: KifsAuth::Basic { password, .. },
                    ..
                }),
            ) => password.clone(),
            _ => panic!("expected a token or a password"),
        };
        assert!(!secret.is_read());
    }
}

#[test]
fn without_reading_secrets_the_secret_keys_are_still_checked() {
    let fx = Fixture::new();
    let load = |text: &str| match fx.load_with(text, WITHOUT_SECRETS) {
        Ok(_) => panic!("the config should be rejected:\n{text}"),
        Err(e) => e.to_string(),
    };
    let two = REDIVIS_FOLDER.replace(
        "token = \"t0ken-value\"",
        "token_file = \"t\"\ntoken_env = \"T\"",
    );
    assert_names(&load(&two), 4, &["key 'redivis.token_env'", "only one of"]);
    let no_path = REDIVIS_FOLDER.replace("token = \"t0ken-value\"", "token_file = \"\"");
    assert_names(
        &load(&no_path),
        3,
        &["key 'redivis.token_file'", "expected the path"],
    );
    let no_name = REDIVIS_FOLDER.replace("token = \"t0ken-value\"", "token_env = \"A=B\"");
    assert_names(
        &load(&no_name),
        3,
        &["key 'redivis.token_env'", "expected the name"],
    );
    let none = REDIVIS_FOLDER.replace("token = \"t0ken-value\"\n", "");
    assert_names(&load(&none), 2, &["key 'redivis'", "needs an API token"]);
    let no_user = KIFS_FOLDER.replace("[[folder]]", "password_env = \"P\"\n[[folder]]");
    assert_names(
        &load(&no_user),
        4,
        &["key 'kifs.password_env'", "needs a username"],
    );
}

#[test]
fn a_redivis_section_without_a_token_is_rejected() {
    let fx = Fixture::new();
    let text = REDIVIS_FOLDER.replace("token = \"t0ken-value\"\n", "");
    assert_names(
        &fx.err(&text),
        2,
        &["key 'redivis'", "token_file or token_env"],
    );
}

#[test]
fn kifs_username_and_password_make_basic_auth() {
    let mut fx = Fixture::new();
    fx.env("KIFS_PASSWORD", "s3cret");
    let text = KIFS_FOLDER.replace(
        "[[folder]]",
        "username = \"ingest\"\npassword_env = \"KIFS_PASSWORD\"\n[[folder]]",
    );
    let config = fx.ok(&text);
    match &config.kifs.expect("[kifs] is given").auth {
        KifsAuth::Basic { username, password } => {
            assert_eq!(username, "ingest");
            assert_eq!(password.expose(), "s3cret");
        }
        other => panic!("expected basic auth, got {other:?}"),
    }
}

#[test]
fn kifs_auth_mistakes_are_named() {
    let fx = Fixture::new();
    let both = KIFS_FOLDER.replace(
        "[[folder]]",
        "username = \"u\"\npassword = \"p\"\ntoken = \"t\"\n[[folder]]",
    );
    assert_names(
        &fx.err(&both),
        6,
        &["key 'kifs.token'", "not both", "line 4"],
    );
    let no_password = KIFS_FOLDER.replace("[[folder]]", "username = \"u\"\n[[folder]]");
    assert_names(
        &fx.err(&no_password),
        4,
        &["key 'kifs.username'", "needs a password"],
    );
    let no_user = KIFS_FOLDER.replace("[[folder]]", "password = \"p\"\n[[folder]]");
    assert_names(
        &fx.err(&no_user),
        4,
        &["key 'kifs.password'", "needs a username"],
    );
}

#[test]
fn a_kifs_username_that_basic_auth_cannot_send_is_refused_without_showing_it() {
    let fx = Fixture::new();
    for (username, problem) in [
        ("ingest:hunter2", "holds a ':'"),
        ("ingest\\nhunter2", "a line break"),
    ] {
        let text = KIFS_FOLDER.replace(
            "[[folder]]",
            &format!("username = \"{username}\"\npassword = \"s3cret-pw\"\n[[folder]]"),
        );
        let message = fx.err(&text);
        assert_names(&message, 4, &["key 'kifs.username'", problem]);
        for shown in ["hunter2", "s3cret-pw"] {
            assert!(!message.contains(shown), "{message}");
        }
    }
    let text = KIFS_FOLDER.replace(
        "[[folder]]",
        "username = \"ingest@example.org\"\npassword = \"p\"\n[[folder]]",
    );
    assert!(matches!(
        fx.ok(&text).kifs.expect("[kifs] is given").auth,
        KifsAuth::Basic { .. }
    ));
}

#[test]
fn a_bad_glob_names_the_pattern() {
    let fx = Fixture::new();
    let message = fx.err(&format!(
        "{KIFS_FOLDER}include = [\"*.csv\",\n  \"data[.csv\"]\n"
    ));
    assert_names(
        &message,
        8,
        &["key 'folder[0].include'", "bad glob pattern \"data[.csv\""],
    );
}

#[test]
fn a_bad_kifs_directory_character_is_named() {
    let fx = Fixture::new();
    let message = fx.err(&KIFS_FOLDER.replace("\"ingest\"", "\"my_ingest\""));
    assert_names(&message, 6, &["key 'folder[0].kifs_directory'", "'_'"]);
}

#[test]
fn a_redivis_table_without_next_is_rejected() {
    let fx = Fixture::new();
    let message = fx.err(&REDIVIS_FOLDER.replace("dataset:next", "dataset"));
    assert_names(
        &message,
        6,
        &[
            "key 'folder[0].redivis_table'",
            "unreleased",
            "\"dataset:next\"",
        ],
    );
}

#[test]
fn create_directory_with_a_redivis_table_is_rejected() {
    let fx = Fixture::new();
    let message = fx.err(&format!("{REDIVIS_FOLDER}create_directory = true\n"));
    assert_names(
        &message,
        7,
        &[
            "key 'folder[0].create_directory'",
            "only applies to kifs_directory",
        ],
    );
}

#[test]
fn a_missing_required_key_names_its_table() {
    let fx = Fixture::new();
    let message = fx.err(&KIFS_FOLDER.replace("path = \"inbox/a\"\n", ""));
    assert_names(&message, 4, &["missing required key 'folder[0].path'"]);
}

#[test]
fn a_missing_top_level_key_is_named() {
    let fx = Fixture::new();
    let message = fx.err(&KIFS_FOLDER.replace("state_dir = \"state\"\n", "concurrency = 3\n"));
    assert_names(&message, 1, &["missing required key 'state_dir'"]);
}

#[test]
fn a_config_without_folders_is_rejected() {
    let fx = Fixture::new();
    let message = fx.err("state_dir = \"state\"\n");
    assert_names(&message, 1, &["no [[folder]] section"]);
}

#[test]
fn toml_syntax_errors_name_the_line() {
    let fx = Fixture::new();
    let message = fx.err(&KIFS_FOLDER.replace("[kifs]", "concurrency = = 3\n[kifs]"));
    assert_names(&message, 2, &["invalid TOML"]);
}

#[test]
fn a_bad_enum_value_lists_the_choices() {
    let fx = Fixture::new();
    let text = KIFS_FOLDER.replace("[[folder]]", "encoding = \"avro\"\n[[folder]]");
    assert_names(
        &fx.err(&text),
        4,
        &[
            "key 'kifs.encoding'",
            "\"binary\", \"json\"",
            "found \"avro\"",
        ],
    );
}

#[test]
fn a_bad_socket_address_shows_an_example() {
    let fx = Fixture::new();
    let text = KIFS_FOLDER.replace("[kifs]", "metrics_listen = \"localhost\"\n[kifs]");
    assert_names(
        &fx.err(&text),
        2,
        &[
            "key 'metrics_listen'",
            "\"127.0.0.1:9464\"",
            "found \"localhost\"",
        ],
    );
}

#[test]
fn a_bad_url_is_rejected() {
    let fx = Fixture::new();
    let text = KIFS_FOLDER.replace("http://127.0.0.1:9191/", "kinetica:9191");
    assert_names(&fx.err(&text), 3, &["key 'kifs.url'", "http or https URL"]);
}

#[test]
fn credentials_in_a_service_url_are_refused_and_never_shown() {
    let fx = Fixture::new();
    let kifs = |url: &str| KIFS_FOLDER.replace("http://127.0.0.1:9191/", url);
    let redivis = |url: &str| {
        REDIVIS_FOLDER.replace("[[folder]]", &format!("api_url = \"{url}\"\n[[folder]]"))
    };
    let cases = [
        (
            kifs("http://demo:UrlPw777@127.0.0.1:28918/kifs"),
            3,
            "kifs.url",
            "password_file",
        ),
        (
            kifs("https://demoUser@kinetica.corp/kifs"),
            3,
            "kifs.url",
            "password_file",
        ),
        (
            redivis("https://demo:UrlPw777@redivis.com/api/v1"),
            4,
            "redivis.api_url",
            "token_file",
        ),
        (
            redivis("http://:UrlPw777@127.0.0.1:1/api/v1"),
            4,
            "redivis.api_url",
            "token_file",
        ),
    ];
    for (text, line, key, instead) in cases {
        let message = fx.err(&text);
        assert_names(
            &message,
            line,
            &[
                &format!("key '{key}'"),
                "without a user or password",
                instead,
                "://***@",
            ],
        );
        assert!(
            !message.contains("UrlPw777") && !message.contains("demo"),
            "{message}"
        );
    }
    // A URL refused for its shape is shown without what may be a user and password.
    for (text, line, key) in [
        (
            kifs("htp://demo:UrlPw777@127.0.0.1:28918/kifs"),
            3,
            "kifs.url",
        ),
        (
            kifs("http://demo:Url/Pw777@127.0.0.1:28918/kifs"),
            3,
            "kifs.url",
        ),
        (
            redivis("demo:UrlPw777@redivis.com/api/v1"),
            4,
            "redivis.api_url",
        ),
    ] {
        let message = fx.err(&text);
        assert_names(
            &message,
            line,
            &[&format!("key '{key}'"), "http or https URL", "***@"],
        );
        assert!(
            !message.contains("Pw777") && !message.contains("demo"),
            "{message}"
        );
    }
}

#[test]
fn a_secret_of_the_wrong_type_is_named_without_its_value() {
    let fx = Fixture::new();
    let kifs = |keys: &str| KIFS_FOLDER.replace("[[folder]]", &format!("{keys}\n[[folder]]"));
    let cases = [
        (
            kifs("username = \"u\"\npassword = 98765432"),
            5,
            "kifs.password",
            "an integer",
        ),
        (
            kifs("username = \"u\"\npassword = 9876.5432"),
            5,
            "kifs.password",
            "a float",
        ),
        (kifs("token = 98765432"), 4, "kifs.token", "an integer"),
        (
            REDIVIS_FOLDER.replace("\"t0ken-value\"", "987.654e3"),
            3,
            "redivis.token",
            "a float",
        ),
        (
            REDIVIS_FOLDER.replace("\"t0ken-value\"", "[\"987654\"]"),
            3,
            "redivis.token",
            "an array",
        ),
    ];
    for (text, line, key, found) in cases {
        let message = fx.err(&text);
        assert_names(
            &message,
            line,
            &[
                &format!("key '{key}'"),
                "expected a string",
                &format!("found {found}"),
            ],
        );
        assert!(
            !message.contains("987") && !message.contains("5432"),
            "{message}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let fx = Fixture::new();
    let text = KIFS_FOLDER
        .replace("[kifs]", "concurrency = 0\n[kifs]")
        .replace("\"ingest\"", "\"a_b\"");
    let message = fx.err(&text);
    assert_eq!(message.lines().count(), 2, "{message}");
    assert!(
        message.contains("'concurrency'") && message.contains("'_'"),
        "{message}"
    );
}

/// Each line of `message`, which must hold exactly `expected` lines.
fn lines_of(message: &str, expected: usize) -> Vec<&str> {
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), expected, "{message}");
    lines
}

#[test]
fn every_key_of_the_wrong_type_or_unit_is_reported_at_once_in_file_order() {
    let fx = Fixture::new();
    let text = KIFS_FOLDER.replace("[kifs]", "concurrency = \"four\"\n[kifs]")
        + "settle = \"5 parsecs\"\nmax_delete = true\n";
    let message = fx.err(&text);
    let lines = lines_of(&message, 3);
    assert_names(lines[0], 2, &["key 'concurrency'", "expected an integer"]);
    assert_names(
        lines[1],
        8,
        &["key 'folder[0].settle'", "found \"5 parsecs\""],
    );
    assert_names(
        lines[2],
        9,
        &[
            "key 'folder[0].max_delete'",
            "expected a count of files",
            "found boolean true",
        ],
    );
}

#[test]
fn unknown_and_mistyped_keys_in_tables_and_inline_tables_are_all_reported() {
    let fx = Fixture::new();
    let text = format!(
        "{REDIVIS_FOLDER}setle = \"5s\"\nredivis_options = {{ skip_bad_records = \"yes\", has_headers = false }}\n\
         [[folder]]\npath = \"inbox/b\"\nredivis_table = \"owner.dataset:next.b\"\nrecursive = \"yes\"\n"
    );
    let message = fx.err(&text);
    let lines = lines_of(&message, 4);
    assert_names(lines[0], 7, &["unknown key 'setle' in folder[0]"]);
    assert_names(
        lines[1],
        8,
        &[
            "key 'folder[0].redivis_options.skip_bad_records'",
            "expected a boolean",
        ],
    );
    assert_names(lines[2], 8, &["unknown key 'has_headers'"]);
    assert_names(
        lines[3],
        12,
        &["key 'folder[1].recursive'", "expected a boolean"],
    );
}

#[test]
fn an_unknown_table_is_reported_with_the_mistakes_after_it_and_without_its_keys() {
    let fx = Fixture::new();
    // serde visits the keys in name order: [kifs] comes after both unknown tables.
    let text = KIFS_FOLDER.replace(
        "[[folder]]",
        "username = 7\n[emulatr]\nlisten = \"x\"\n[[folder]]",
    ) + "settle = \"5 parsecs\"\n[[folders]]\npath = \"inbox/b\"\n[folders.redivis_options]\nx = 1\n";
    let message = fx.err(&text);
    let lines = lines_of(&message, 4);
    assert_names(lines[0], 4, &["key 'kifs.username'", "expected a string"]);
    assert_names(lines[1], 5, &["unknown key 'emulatr' in the top level"]);
    assert_names(lines[2], 10, &["key 'folder[0].settle'"]);
    assert_names(lines[3], 11, &["unknown key 'folders' in the top level"]);
}

#[test]
fn a_required_key_of_the_wrong_type_is_not_also_reported_missing() {
    let fx = Fixture::new();
    let text = KIFS_FOLDER
        .replace(
            "state_dir = \"state\"",
            "state_dir = \"state\"\nconcurrency = \"four\"",
        )
        .replace("path = \"inbox/a\"", "path = [\"inbox/a\"]");
    let message = fx.err(&text);
    let lines = lines_of(&message, 2);
    assert_names(lines[0], 2, &["key 'concurrency'", "expected an integer"]);
    assert_names(lines[1], 6, &["key 'folder[0].path'", "expected a string"]);
}

#[test]
fn a_missing_key_is_reported_with_the_mistyped_keys_before_it() {
    let fx = Fixture::new();
    let text = KIFS_FOLDER.replace("state_dir = \"state\"\n", "concurrency = \"four\"\n");
    let message = fx.err(&text);
    let lines = lines_of(&message, 2);
    assert_names(lines[0], 1, &["missing required key 'state_dir'"]);
    assert_names(lines[1], 1, &["key 'concurrency'", "expected an integer"]);
}

#[test]
fn debug_output_never_contains_a_secret() {
    let fx = Fixture::new();
    let text = format!(
        "{REDIVIS_FOLDER}[[folder]]\npath = \"inbox/b\"\nkifs_directory = \"k\"\n[kifs]\nurl = \"http://k\"\nusername = \"u\"\npassword = \"pa55word-value\"\n"
    );
    let config = fx.ok(&text);
    let debug = format!("{config:?}");
    assert!(!debug.contains("t0ken-value"), "{debug}");
    assert!(!debug.contains("pa55word-value"), "{debug}");
    assert!(debug.contains("***"), "{debug}");
    let plan = config.plan();
    assert!(
        !plan.contains("t0ken-value") && !plan.contains("pa55word-value"),
        "{plan}"
    );
}

#[test]
fn secrets_never_appear_in_error_messages() {
    let fx = Fixture::new();
    let text = REDIVIS_FOLDER.replace("[[folder]]", "token_env = \"X\"\n[[folder]]");
    let message = fx.err(&text);
    assert!(!message.contains("t0ken-value"), "{message}");
}

#[test]
fn the_plan_shows_one_line_per_folder_and_the_services() {
    let fx = Fixture::new();
    let text = format!(
        "{KIFS_FOLDER}exclude = [\"*.tmp\", \".*\"]\n[[folder]]\npath = \"inbox/b\"\nredivis_table = \"o.d:next.t\"\ninclude = [\"*.csv\"]\n[redivis]\napi_url = \"http://r/api/v1\"\ntoken = \"t\"\n"
    );
    let plan = fx.ok(&text).plan();
    let a = fx.root().join("inbox/a");
    let b = fx.root().join("inbox/b");
    assert!(
        plan.contains(&format!(
            "{} → kifs ingest/ (create: no, settle 5s, include *, exclude *.tmp, .*)",
            a.display()
        )),
        "{plan}"
    );
    assert!(
        plan.contains(&format!(
            "{} → redivis o.d:next.t (settle 5s, include *.csv",
            b.display()
        )),
        "{plan}"
    );
    assert!(plan.contains("kifs: http://127.0.0.1:9191"), "{plan}");
    assert!(plan.contains("redivis: http://r/api/v1"), "{plan}");
    assert!(
        plan.contains(&format!("state_dir: {}", fx.root().join("state").display())),
        "{plan}"
    );
}

#[test]
fn folder_for_finds_a_folder_by_its_queue_key() {
    let fx = Fixture::new();
    let config = fx.ok(KIFS_FOLDER);
    let key = config.folders[0].path.to_string_lossy().into_owned();
    let found = config
        .folder_for(&key)
        .expect("the key is a configured folder");
    assert_eq!(found.path, config.folders[0].path);
    assert!(config.folder_for("/nowhere").is_none());
}

#[test]
fn load_reads_the_file_and_names_a_missing_one() {
    let fx = Fixture::new();
    let path = fx.write("upsync.toml", KIFS_FOLDER);
    let config = Config::load(&path).expect("the config is valid");
    assert_eq!(config.source, path);
    let missing = fx.root().join("absent.toml");
    let err = Config::load(&missing)
        .expect_err("the file does not exist")
        .to_string();
    assert!(err.starts_with(&missing.display().to_string()), "{err}");
    assert!(err.contains("cannot read the config file"), "{err}");
}

/// A self-signed certificate in PEM, as a private CA's file would hold it.
fn ca_pem() -> String {
    rcgen::generate_simple_self_signed(vec!["ca.example".to_string()])
        .expect("a certificate can be generated")
        .cert
        .pem()
}

#[test]
fn network_keys_have_wan_defaults_and_are_read_per_backend() {
    let fx = Fixture::new();
    let config = fx.ok(KIFS_FOLDER);
    let kifs = config.kifs.as_ref().expect("[kifs] is given");
    assert_eq!(kifs.net, NetConfig::default());
    assert_eq!(kifs.net.connect_timeout, Duration::from_secs(30));
    assert_eq!(kifs.net.idle_timeout, Duration::from_secs(120));
    assert_eq!(config.bandwidth, BandwidthConfig::default());

    fx.write("ca.pem", &format!("{}{}", ca_pem(), ca_pem()));
    let text = KIFS_FOLDER.replace(
        "[[folder]]",
        "ca_file = \"ca.pem\"\nproxy = \"http://proxy.example:3128\"\nconnect_timeout = \"5s\"\nidle_timeout = \"45s\"\n[[folder]]",
    );
    let config = fx.ok(&format!("bandwidth_limit = \"20MiB/s\"\n{text}"));
    let net = &config.kifs.as_ref().expect("[kifs] is given").net;
    let ca = net.ca_file.as_ref().expect("ca_file is given");
    assert_eq!(ca.path, fx.root().join("ca.pem"));
    assert_eq!(ca.certificates, 2);
    assert_eq!(
        net.proxy.as_ref().map(|p| p.expose().as_str()),
        Some("http://proxy.example:3128/")
    );
    assert_eq!(net.connect_timeout, Duration::from_secs(5));
    assert_eq!(net.idle_timeout, Duration::from_secs(45));
    assert_eq!(config.bandwidth.limit, Some(20 << 20));
    let plan = config.plan();
    assert!(plan.contains("CA file"), "{plan}");
    assert!(plan.contains("bandwidth: 20.0 MiB/s"), "{plan}");
}

#[test]
fn a_ca_file_is_found_among_systemd_credentials_and_must_hold_a_certificate() {
    let mut fx = Fixture::new();
    let creds = fx.root().join("creds");
    std::fs::create_dir(&creds).expect("the temp dir is writable");
    std::fs::write(creds.join("corp-ca.pem"), ca_pem()).expect("the temp dir is writable");
    let text = REDIVIS_FOLDER.replace(
        "[[folder]]",
        "ca_file = \"/etc/upsync/corp-ca.pem\"\n[[folder]]",
    );
    fx.env("CREDENTIALS_DIRECTORY", &creds.display().to_string());
    let config = fx.ok(&text);
    let ca = config.redivis.expect("[redivis] is given").net.ca_file;
    assert_eq!(ca.expect("ca_file is read").path, creds.join("corp-ca.pem"));

    std::fs::write(creds.join("corp-ca.pem"), "not a certificate\n").expect("writable");
    assert_names(
        &fx.err(&text),
        4,
        &[
            "key 'redivis.ca_file'",
            "holds no PEM certificate",
            "BEGIN CERTIFICATE",
        ],
    );
    let missing = text.replace("corp-ca.pem", "other.pem");
    assert_names(
        &fx.err(&missing),
        4,
        &[
            "key 'redivis.ca_file'",
            "cannot read the CA file",
            "systemd credential",
        ],
    );
}

#[test]
fn without_reading_secrets_a_ca_file_is_checked_to_be_named_but_not_read() {
    let fx = Fixture::new();
    let with_ca = |file: &str| {
        KIFS_FOLDER.replace("[[folder]]", &format!("ca_file = \"{file}\"\n[[folder]]"))
    };
    fx.write("not-a-ca.pem", "not a certificate\n");
    for file in ["no/such/ca.pem", "not-a-ca.pem"] {
        let text = with_ca(file);
        assert_names(&fx.err(&text), 4, &["key 'kifs.ca_file'"]);
        let config = fx
            .load_with(&text, WITHOUT_SECRETS)
            .unwrap_or_else(|e| panic!("{file}: the config should load, got: {e}"));
        let kifs = config.kifs.expect("[kifs] is given");
        assert_eq!(kifs.net.ca_file, None, "{file} is left unread");
    }
    let unnamed = fx
        .load_with(&with_ca(""), WITHOUT_SECRETS)
        .expect_err("a ca_file naming no file is refused");
    assert_names(
        &unnamed.to_string(),
        4,
        &["key 'kifs.ca_file'", "expected the path of a file"],
    );
}

#[test]
fn proxy_credentials_never_show_in_debug_plan_or_errors() {
    let fx = Fixture::new();
    let with_proxy = |proxy: &str| {
        KIFS_FOLDER.replace("[[folder]]", &format!("proxy = \"{proxy}\"\n[[folder]]"))
    };
    let config = fx.ok(&with_proxy("http://user:s3cret-pw@proxy.example:3128"));
    let proxy = config.kifs.as_ref().expect("[kifs]").net.proxy.clone();
    let proxy = proxy.expect("the proxy is read");
    assert_eq!(proxy.expose().password(), Some("s3cret-pw"));
    for shown in [format!("{config:?}"), config.plan(), proxy.to_string()] {
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(!shown.contains("user"), "{shown}");
    }
    for bad in [
        "ftp://user:s3cret-pw@proxy.example:21",
        "http://user:s3cret-pw@proxy.example:3128/path",
        "user:s3cret-pw@proxy",
    ] {
        let message = fx.err(&with_proxy(bad));
        assert_names(
            &message,
            4,
            &["key 'kifs.proxy'", "expected a proxy URL like"],
        );
        assert!(!message.contains("s3cret-pw"), "{message}");
    }
}

#[test]
fn the_redivis_rate_limit_window_is_a_key_with_the_documented_default() {
    let fx = Fixture::new();
    let config = fx.ok(REDIVIS_FOLDER);
    let redivis = config.redivis.as_ref().expect("[redivis] is given");
    assert_eq!(redivis.rate_limit_window, Duration::from_secs(100));
    assert!(
        config.plan().contains("rate-limit window: 1m 40s"),
        "{}",
        config.plan()
    );

    let text = REDIVIS_FOLDER.replace("[redivis]\n", "[redivis]\nrate_limit_window = \"60s\"\n");
    let config = fx.ok(&text);
    let redivis = config.redivis.as_ref().expect("[redivis] is given");
    assert_eq!(redivis.rate_limit_window, Duration::from_secs(60));

    for bad in ["\"500ms\"", "\"2days\""] {
        let text = REDIVIS_FOLDER.replace(
            "[redivis]\n",
            &format!("[redivis]\nrate_limit_window = {bad}\n"),
        );
        let err = fx.err(&text);
        assert!(err.contains("key 'redivis.rate_limit_window'"), "{err}");
        assert!(err.contains("from \"1s\" to \"1day\""), "{err}");
    }
}

#[test]
fn timeouts_below_one_second_are_rejected() {
    let fx = Fixture::new();
    let text = KIFS_FOLDER.replace("[[folder]]", "idle_timeout = \"500ms\"\n[[folder]]");
    assert_names(
        &fx.err(&text),
        4,
        &["key 'kifs.idle_timeout'", "at least \"1s\""],
    );
}

#[test]
fn durations_too_short_to_be_meant_are_rejected_with_their_range() {
    let fx = Fixture::new();
    let top = |line: &str| KIFS_FOLDER.replace("state_dir", &format!("{line}\nstate_dir"));
    for (line, key, range) in [
        (
            "rescan_interval = \"1ms\"",
            "rescan_interval",
            "expected \"0s\" (no rescans) or a duration of at least 1s, like \"10m\", found \"1ms\"",
        ),
        (
            "shutdown_timeout = \"0s\"",
            "shutdown_timeout",
            "expected a duration of at least 1s, like \"30s\", found \"0s\"",
        ),
        (
            "retry_max_delay = \"100ms\"",
            "retry_max_delay",
            "expected a duration of at least 1s, like \"1h\", found \"100ms\"",
        ),
    ] {
        assert_names(&fx.err(&top(line)), 1, &[&format!("key '{key}'"), range]);
    }
    let config = fx.ok(&top(
        "rescan_interval = \"1s\"\nshutdown_timeout = \"1s\"\nretry_max_delay = \"1s\"",
    ));
    assert_eq!(config.rescan_interval, Some(Duration::from_secs(1)));
    assert_eq!(config.shutdown_timeout, Duration::from_secs(1));
    assert_eq!(config.retry_max_delay, Duration::from_secs(1));
}

#[test]
fn a_zero_settle_is_accepted_for_files_written_at_once() {
    let fx = Fixture::new();
    let config = fx.ok(&format!("{KIFS_FOLDER}settle = \"0s\"\n"));
    assert_eq!(config.folders[0].settle, Duration::ZERO);
}

#[test]
fn the_emulator_data_dir_must_lie_apart_from_the_state_dir() {
    let fx = Fixture::new();
    let emulator = |data_dir: &str| {
        format!("{KIFS_FOLDER}[emulator]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{data_dir}\"\n")
    };
    for data_dir in ["state", "state/remote", "."] {
        assert_names(
            &fx.err(&emulator(data_dir)),
            9,
            &[
                "key 'emulator.data_dir'",
                "overlaps state_dir",
                "(line 1)",
                "apart from it",
            ],
        );
    }
    let config = fx.ok(&emulator("remote"));
    assert_eq!(
        config.emulator.expect("[emulator]").data_dir,
        fx.root().join("remote")
    );
}

#[test]
fn bandwidth_schedule_errors_name_the_entry_and_its_line() {
    let fx = Fixture::new();
    let schedule = "bandwidth_schedule = [\n  \"Mon-Fri 08:00-18:00 5MiB/s\",\n  \"Sat 25:00-26:00 1MiB/s\",\n  \"off\",\n]\n";
    assert_names(
        &fx.err(&format!("{schedule}{KIFS_FOLDER}")),
        3,
        &["key 'bandwidth_schedule[1]'", "\"25:00\"", "HH:MM"],
    );
    let both =
        format!("bandwidth_limit = \"1MiB/s\"\nbandwidth_schedule = [\"off\"]\n{KIFS_FOLDER}");
    assert_names(
        &fx.err(&both),
        1,
        &["key 'bandwidth_limit'", "not both", "line 2"],
    );
    let bad_rate = format!("bandwidth_limit = \"fast\"\n{KIFS_FOLDER}");
    assert_names(
        &fx.err(&bad_rate),
        1,
        &["key 'bandwidth_limit'", "\"5MiB/s\""],
    );
    let good = format!(
        "{}{KIFS_FOLDER}",
        schedule.replace("Sat 25:00-26:00", "Sat 10:00-11:00")
    );
    let config = fx.ok(&good);
    assert!(config.bandwidth.schedule.is_some());
    assert!(config.plan().contains("by schedule"), "{}", config.plan());
}

#[test]
fn the_emulator_takes_a_certificate_and_key_together() {
    let fx = Fixture::new();
    let section = "[emulator]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"remote\"\n";
    let config = fx.ok(&format!(
        "{KIFS_FOLDER}{section}tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n"
    ));
    let tls = config.emulator.expect("[emulator]").tls.expect("TLS files");
    assert_eq!(tls.cert, fx.root().join("cert.pem"));
    assert_eq!(tls.key, fx.root().join("key.pem"));
    let message = fx.err(&format!("{KIFS_FOLDER}{section}tls_cert = \"cert.pem\"\n"));
    assert_names(
        &message,
        10,
        &["key 'emulator'", "both tls_cert and tls_key"],
    );
}

// ---- Redivis folder settings ---------------------------------------------------------------

#[test]
fn redivis_options_map_to_parse_options_and_next_versions_default_to_off() {
    let fx = Fixture::new();
    let plain = fx.ok(REDIVIS_FOLDER);
    assert_eq!(plain.folders[0].redivis, RedivisFolder::default());
    let config = fx.ok(&format!(
        r#"{REDIVIS_FOLDER}create_next_version = true
[folder.redivis_options]
type = "delimited"
delimiter = "\t"
has_header_row = false
skip_bad_records = true
has_quoted_newlines = true
allow_jagged_rows = false
quote_character = "'"
escape_character = "\\"
null_markers = ["NA", ""]
"#
    ));
    let redivis = &config.folders[0].redivis;
    assert!(redivis.create_next_version);
    assert_eq!(
        redivis.parse,
        ParseOptions {
            kind: Some("delimited".into()),
            delimiter: Some('\t'),
            has_header_row: Some(false),
            skip_bad_records: Some(true),
            has_quoted_newlines: Some(true),
            allow_jagged_rows: Some(false),
            quote_character: Some('\''),
            escape_character: Some('\\'),
            null_markers: Some(vec!["NA".into(), String::new()]),
        }
    );
    let plan = config.plan();
    assert!(
        plan.contains("creates the next version when missing"),
        "{plan}"
    );
    assert!(plan.contains("delimiter '\\t', no header row"), "{plan}");
}

#[test]
fn a_type_outside_the_documented_list_names_the_key() {
    let fx = Fixture::new();
    let message = fx.err(&format!(
        "{REDIVIS_FOLDER}[folder.redivis_options]\ntype = \"csv\"\n"
    ));
    assert_names(
        &message,
        8,
        &[
            "key 'folder[0].redivis_options.type'",
            "\"delimited\"",
            "\"csv\"",
        ],
    );
}

#[test]
fn a_multi_character_delimiter_names_the_key() {
    let fx = Fixture::new();
    let message = fx.err(&format!(
        "{REDIVIS_FOLDER}[folder.redivis_options]\nhas_header_row = false\ndelimiter = \"||\"\n"
    ));
    assert_names(
        &message,
        9,
        &[
            "key 'folder[0].redivis_options.delimiter'",
            "exactly one character",
        ],
    );
    let quote = fx.err(&format!(
        "{REDIVIS_FOLDER}[folder.redivis_options]\ndelimiter = \";\"\nquote_character = \";\"\n"
    ));
    assert_names(
        &quote,
        9,
        &[
            "key 'folder[0].redivis_options.quote_character'",
            "differ from the delimiter",
        ],
    );
}

#[test]
fn delimited_options_with_another_type_are_rejected() {
    let fx = Fixture::new();
    let message = fx.err(&format!(
        "{REDIVIS_FOLDER}[folder.redivis_options]\ntype = \"parquet\"\ndelimiter = \",\"\n"
    ));
    assert_names(
        &message,
        8,
        &[
            "key 'folder[0].redivis_options.delimiter'",
            "only applies to delimited files",
        ],
    );
}

#[test]
fn unknown_or_mistyped_redivis_options_are_named() {
    let fx = Fixture::new();
    let unknown = fx.err(&format!(
        "{REDIVIS_FOLDER}[folder.redivis_options]\nhas_headers = false\n"
    ));
    assert_names(
        &unknown,
        8,
        &["unknown key 'has_headers'", "has_header_row"],
    );
    let mistyped = fx.err(&format!(
        "{REDIVIS_FOLDER}[folder.redivis_options]\nskip_bad_records = \"yes\"\n"
    ));
    assert_names(
        &mistyped,
        8,
        &["folder[0].redivis_options.skip_bad_records"],
    );
}

#[test]
fn redivis_settings_on_a_kifs_folder_are_rejected() {
    let fx = Fixture::new();
    let message = fx.err(&format!(
        "{KIFS_FOLDER}create_next_version = false\n[folder.redivis_options]\ndelimiter = \";\"\n"
    ));
    assert_names(
        &message,
        7,
        &[
            "key 'folder[0].create_next_version'",
            "only applies to a folder with redivis_table",
        ],
    );
    assert!(
        message.contains("key 'folder[0].redivis_options'"),
        "{message}"
    );
}

#[test]
fn missing_keys_are_listed_with_every_other_refused_key_in_file_order() {
    let fx = Fixture::new();
    let text = "state_dir = \"state\"\nconcurrency = \"four\"\n[kifs]\nusername = 7\n\
                [[folder]]\nkifs_directory = \"ingest\"\n\
                [[folder]]\npath = \"inbox/b\"\nkifs_directory = \"other\"\nsettle = \"5 parsecs\"\n\
                [emulator]\nlisten = \"127.0.0.1:0\"\n";
    let message = fx.err(text);
    let lines = lines_of(&message, 6);
    assert_names(lines[0], 2, &["key 'concurrency'", "expected an integer"]);
    assert_names(lines[1], 3, &["missing required key 'kifs.url'"]);
    assert_names(lines[2], 4, &["key 'kifs.username'", "expected a string"]);
    assert_names(lines[3], 5, &["missing required key 'folder[0].path'"]);
    assert_names(lines[4], 10, &["key 'folder[1].settle'", "5 parsecs"]);
    assert_names(lines[5], 11, &["missing required key 'emulator.data_dir'"]);
}

#[test]
fn a_missing_top_level_key_and_one_of_an_inline_table_are_listed_with_the_rest() {
    let fx = Fixture::new();
    // serde reads the tables in name order: emulator, folder, kifs, then the top level.
    let text = KIFS_FOLDER.replace(
        "state_dir = \"state\"\n",
        "emulator = { listen = \"127.0.0.1:0\" }\n",
    ) + "settle = \"5 parsecs\"\n[[folder]]\npath = \"inbox/b\"\nkifs_directory = \"b\"\n\
           max_delete = true\n";
    let message = fx.err(&text);
    let lines = lines_of(&message, 4);
    assert_names(lines[0], 1, &["missing required key 'state_dir'"]);
    assert_names(lines[1], 1, &["missing required key 'emulator.data_dir'"]);
    assert_names(lines[2], 7, &["key 'folder[0].settle'"]);
    assert_names(lines[3], 11, &["key 'folder[1].max_delete'"]);
}

#[test]
fn refused_dotted_keys_are_listed_with_the_keys_after_them() {
    let fx = Fixture::new();
    let text = "state_dir = \"state\"\nkifs.url = \"http://k\"\nkifs . \"username\" = 7\n\
                concurrency = \"four\"\n[[folder]]\npath = \"inbox/a\"\nredivis_table = \"o.d:next.t\"\n\
                redivis_options.skip_bad_records = \"yes\"\nsettle = \"5 parsecs\"\n";
    let message = fx.err(text);
    let lines = lines_of(&message, 4);
    assert_names(lines[0], 3, &["key 'kifs.username'", "expected a string"]);
    assert_names(lines[1], 4, &["key 'concurrency'", "expected an integer"]);
    assert_names(
        lines[2],
        8,
        &["key 'folder[0].redivis_options.skip_bad_records'"],
    );
    assert_names(lines[3], 9, &["key 'folder[0].settle'"]);
}

#[test]
fn a_missing_key_of_a_table_written_with_dotted_keys_is_listed_with_the_rest() {
    let fx = Fixture::new();
    let text = "state_dir = \"state\"\nkifs.username = \"u\"\nkifs.password = \"p\"\n\
                rescan_interval = \"5 parsecs\"\n[[folder]]\npath = \"inbox/a\"\nkifs_directory = \"k\"\n";
    let message = fx.err(text);
    let lines = lines_of(&message, 2);
    assert_names(lines[0], 2, &["missing required key 'kifs.url'"]);
    assert_names(lines[1], 4, &["key 'rescan_interval'", "5 parsecs"]);
}

#[test]
fn a_refused_only_key_of_a_table_written_with_dotted_keys_is_listed_with_its_missing_keys() {
    let fx = Fixture::new();
    let text = "state_dir = \"state\"\nkifs.username = 7\nemulator . \"data_dir\" = 5\n\
                rescan_interval = \"5 parsecs\"\n[[folder]]\npath = \"inbox/a\"\nkifs_directory = \"k\"\n";
    let message = fx.err(text);
    let lines = lines_of(&message, 5);
    assert_names(lines[0], 2, &["missing required key 'kifs.url'"]);
    assert_names(lines[1], 2, &["key 'kifs.username'", "expected a string"]);
    // A required key refused for its value is not listed again as missing.
    assert_names(lines[2], 3, &["missing required key 'emulator.listen'"]);
    assert_names(
        lines[3],
        3,
        &["key 'emulator.data_dir'", "expected a string"],
    );
    assert_names(lines[4], 4, &["key 'rescan_interval'", "5 parsecs"]);
}

#[test]
fn a_refused_only_key_of_a_dotted_table_in_an_inline_table_keeps_the_keys_after_it() {
    let fx = Fixture::new();
    let text = "state_dir = \"state\"\nfolder = [{ redivis_options.delimiter = 5, path = \"inbox/a\", \
                redivis_table = \"o.d:next.t\", settle = \"5 parsecs\" }]\n\
                [redivis]\ntoken = \"t\"\n";
    let message = fx.err(text);
    let lines = lines_of(&message, 2);
    assert_names(
        lines[0],
        2,
        &[
            "key 'folder[0].redivis_options.delimiter'",
            "expected a string",
        ],
    );
    assert_names(lines[1], 2, &["key 'folder[0].settle'", "5 parsecs"]);
}

/// `folder[0]` of `inbox/a` moving its uploaded files into `archive`.
fn moving_into(archive: &Path) -> String {
    format!(
        "{KIFS_FOLDER}after_upload = \"move\"\narchive_dir = \"{}\"\n",
        archive.display()
    )
}

#[test]
fn an_archive_dir_on_another_file_system_is_refused_by_check_and_taken_by_the_daemon() {
    let fx = Fixture::new();
    let Some(elsewhere) = dir_on_another_file_system(&fx.root().join("inbox/a")) else {
        return;
    };
    let message = fx.err(&moving_into(elsewhere.path()));
    assert_names(
        &message,
        8,
        &[
            "key 'folder[0].archive_dir'",
            &format!(
                "\"{}\" lies on another file system",
                elsewhere.path().display()
            ),
            "inbox/a",
            "expected an archive_dir on the folder's file system",
        ],
    );
    // Not created yet: where it would be created counts.
    let later = elsewhere.path().join("done/2026");
    let message = fx.err(&moving_into(&later));
    assert_names(
        &message,
        8,
        &[
            "key 'folder[0].archive_dir'",
            &format!("(to be created in \"{}\")", elsewhere.path().display()),
        ],
    );
    // The daemon takes folders as they come, and warns when it watches this one.
    let daemon = LoadOptions {
        check_folders_exist: false,
        ..LoadOptions::default()
    };
    fx.load_with(&moving_into(elsewhere.path()), daemon)
        .expect("the daemon takes the config");
}

#[test]
fn an_archive_dir_on_the_folders_file_system_is_taken_made_or_not() {
    let fx = Fixture::new();
    let beside = fx.root().join("archive");
    fx.ok(&moving_into(&beside.join("not/made/yet")));
    std::fs::create_dir(&beside).expect("the temp dir is writable");
    let config = fx.ok(&moving_into(&beside));
    assert_eq!(config.folders[0].after_upload, AfterUpload::Move(beside));
}
