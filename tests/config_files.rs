//! Every config file shipped in `config/` loads and validates.
//!
//! `demo*.toml` files are self-contained and are checked as `upsync run` would check them,
//! folders included. Other files describe real machines, so their folders are not required
//! to exist here; their secrets come from the environment and from systemd credentials,
//! which this test provides.

use std::path::{Path, PathBuf};

use upsync::config::{Config, KifsAuth, LoadOptions, Target};

fn shipped_configs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the config directory ships with the crate")
        .map(|entry| entry.expect("the config directory is readable").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

// One test function on purpose: it sets process environment variables, which must not
// race with other tests of this binary reading the environment.
#[test]
fn every_shipped_config_file_loads() {
    let credentials = tempfile::tempdir().expect("a temp dir can be created");
    std::fs::write(
        credentials.path().join("kifs.password"),
        "example-password\n",
    )
    .expect("the temp dir is writable");
    // SAFETY: this binary runs a single test, so no other thread reads the environment.
    unsafe {
        std::env::set_var("REDIVIS_API_TOKEN", "example-token");
        std::env::set_var("CREDENTIALS_DIRECTORY", credentials.path());
    }

    let files = shipped_configs();
    let names: Vec<String> = files
        .iter()
        .map(|f| {
            f.file_name()
                .expect("a file")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(names.contains(&"demo.toml".to_string()), "{names:?}");
    assert!(names.contains(&"example.toml".to_string()), "{names:?}");

    let mut failures = Vec::new();
    for (file, name) in files.iter().zip(&names) {
        let options = LoadOptions {
            check_folders_exist: name.starts_with("demo"),
            ..LoadOptions::default()
        };
        match Config::load_with(file, options) {
            Ok(config) => {
                let plan = config.plan();
                assert_eq!(
                    plan.matches(" → ").count(),
                    config.folders.len(),
                    "{name}: one plan line per folder:\n{plan}"
                );
                assert!(!plan.contains("example-token") && !plan.contains("example-password"));
                match name.as_str() {
                    "demo.toml" => check_demo(&config),
                    "example.toml" => check_example(&config),
                    _ => {}
                }
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The demo runs the embedded emulator and sends one folder to each service.
fn check_demo(config: &Config) {
    let emulator = config
        .emulator
        .as_ref()
        .expect("the demo starts the emulator");
    assert_eq!(emulator.listen.to_string(), "127.0.0.1:8787");
    assert!(emulator.data_dir.ends_with("demo/remote"));
    assert!(config.state_dir.ends_with("demo/state"));
    let targets: Vec<&Target> = config.folders.iter().map(|f| &f.target).collect();
    assert_eq!(
        targets,
        [
            &Target::KifsDirectory {
                directory: "demo".into(),
                create: true
            },
            &Target::RedivisTable("demo.uploads:next.files".into()),
        ]
    );
}

/// The example reads its secrets from the environment and from systemd credentials.
fn check_example(config: &Config) {
    let redivis = config.redivis.as_ref().expect("the example uses Redivis");
    assert_eq!(redivis.token.expose(), "example-token");
    let kifs = config.kifs.as_ref().expect("the example uses KiFS");
    match &kifs.auth {
        KifsAuth::Basic { username, password } => {
            assert_eq!(username, "ingest");
            assert_eq!(password.expose(), "example-password");
        }
        other => panic!("the example uses basic auth, got {other:?}"),
    }
    assert!(config.emulator.is_none());
}
