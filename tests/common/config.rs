//! Config files for the end-to-end tests: one builder writes every test's TOML, so a key
//! renamed or a default changed is changed here once.
//!
//! Each section is an ordered list of `key = value` lines where a later value for the same
//! key replaces the earlier one, so a test can override a default (`concurrency`,
//! `create_directory`) without producing a duplicate key that TOML refuses.

use std::path::Path;

/// The lines of one TOML section, a key set twice keeping its last value in its first place;
/// then any sub-tables (`[folder.redivis_options]` and its keys), as given.
#[derive(Clone, Debug, Default)]
struct Lines(Vec<(String, String)>, Vec<String>);

impl Lines {
    fn set(&mut self, key: &str, value: &str) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_string(),
            None => self.0.push((key.to_string(), value.to_string())),
        }
    }

    /// Sets each `key = value` line of `text` (blank lines are skipped); from a `[table]`
    /// header on, the lines are kept as they are, to follow the section's own keys.
    fn set_all(&mut self, text: &str) {
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if line.starts_with('[') || !self.1.is_empty() {
                self.1.push(line.to_string());
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not a `key = value` line: {line:?}"));
            self.set(key.trim(), value.trim());
        }
    }

    fn remove(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }

    fn render(&self, out: &mut String) {
        for (key, value) in &self.0 {
            out.push_str(&format!("{key} = {value}\n"));
        }
        for line in &self.1 {
            out.push_str(line);
            out.push('\n');
        }
    }
}

/// A TOML string literal of `text`.
pub fn quoted(text: &str) -> String {
    format!("{text:?}")
}

/// One `[[folder]]` section, with `settle = "1s"` unless changed.
#[derive(Clone, Debug)]
pub struct FolderBuilder(Lines);

impl FolderBuilder {
    /// A folder at `path` (relative to the config file) mirrored to KiFS `directory`, which
    /// the daemon creates when missing.
    pub fn kifs(path: &str, directory: &str) -> FolderBuilder {
        let mut lines = Self::at(path);
        lines.set("kifs_directory", &quoted(directory));
        lines.set("create_directory", "true");
        FolderBuilder(lines)
    }

    /// A folder at `path` mirrored to the Redivis table `table`.
    pub fn redivis(path: &str, table: &str) -> FolderBuilder {
        let mut lines = Self::at(path);
        lines.set("redivis_table", &quoted(table));
        FolderBuilder(lines)
    }

    fn at(path: &str) -> Lines {
        let mut lines = Lines::default();
        lines.set("path", &quoted(path));
        lines.set("settle", &quoted("1s"));
        lines
    }

    /// Sets each `key = value` line of `text`, replacing keys set before.
    pub fn with(mut self, text: &str) -> FolderBuilder {
        self.0.set_all(text);
        self
    }

    /// Leaves `key` out (e.g. `create_directory`, to see a missing directory refused).
    pub fn without(mut self, key: &str) -> FolderBuilder {
        self.0.remove(key);
        self
    }
}

/// A whole config file: top-level keys (`state_dir = "state"` to begin with), the `[kifs]`
/// and `[redivis]` sections when a remote is given, and the folders in order.
#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    top: Lines,
    kifs: Option<Lines>,
    redivis: Option<Lines>,
    folders: Vec<FolderBuilder>,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigBuilder {
    pub fn new() -> ConfigBuilder {
        let mut top = Lines::default();
        top.set("state_dir", &quoted("state"));
        ConfigBuilder {
            top,
            kifs: None,
            redivis: None,
            folders: Vec::new(),
        }
    }

    /// Sets top-level `key = value` lines of `text`, replacing keys set before.
    pub fn top(mut self, text: &str) -> ConfigBuilder {
        self.top.set_all(text);
        self
    }

    /// The `[kifs]` section for the emulator's KiFS `url`.
    pub fn kifs(mut self, url: &str) -> ConfigBuilder {
        let mut lines = Lines::default();
        lines.set("url", &quoted(url));
        self.kifs = Some(lines);
        self
    }

    /// More `[kifs]` lines (after [`Self::kifs`]).
    pub fn kifs_with(mut self, text: &str) -> ConfigBuilder {
        self.kifs
            .as_mut()
            .expect("kifs(url) comes first")
            .set_all(text);
        self
    }

    /// The `[redivis]` section for the emulator's Redivis `api_url`, with the token read
    /// from the environment variable `token_env`.
    pub fn redivis(self, api_url: &str, token_env: &str) -> ConfigBuilder {
        self.redivis_section(api_url, ("token_env", token_env))
    }

    /// The `[redivis]` section for the emulator's Redivis `api_url`, with the `token` itself
    /// in the file.
    pub fn redivis_with_token(self, api_url: &str, token: &str) -> ConfigBuilder {
        self.redivis_section(api_url, ("token", token))
    }

    /// The `[redivis]` section for the emulator's Redivis `api_url`, with the token read
    /// from the file `token_file` (relative to the config file).
    pub fn redivis_with_token_file(self, api_url: &str, token_file: &str) -> ConfigBuilder {
        self.redivis_section(api_url, ("token_file", token_file))
    }

    fn redivis_section(mut self, api_url: &str, (key, value): (&str, &str)) -> ConfigBuilder {
        let mut lines = Lines::default();
        lines.set("api_url", &quoted(api_url));
        lines.set(key, &quoted(value));
        self.redivis = Some(lines);
        self
    }

    /// More `[redivis]` lines (after [`Self::redivis`]).
    pub fn redivis_with(mut self, text: &str) -> ConfigBuilder {
        self.redivis
            .as_mut()
            .expect("redivis(url) comes first")
            .set_all(text);
        self
    }

    pub fn folder(mut self, folder: FolderBuilder) -> ConfigBuilder {
        self.folders.push(folder);
        self
    }

    /// Every folder, each changed by `change` (e.g. the same extra keys for all).
    pub fn each_folder(mut self, change: impl Fn(FolderBuilder) -> FolderBuilder) -> Self {
        self.folders = self.folders.into_iter().map(change).collect();
        self
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        self.top.render(&mut out);
        for (name, section) in [("kifs", &self.kifs), ("redivis", &self.redivis)] {
            if let Some(lines) = section {
                out.push_str(&format!("[{name}]\n"));
                lines.render(&mut out);
            }
        }
        for folder in &self.folders {
            out.push_str("[[folder]]\n");
            folder.0.render(&mut out);
        }
        out
    }

    /// Writes the config to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.render()).expect("the config file can be written");
    }
}
