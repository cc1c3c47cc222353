//! What every check of the configuration writes to: the source being checked, where its
//! relative paths start, the environment secrets come from, and the messages found so far
//! (every one of them located at its file, line and key).

use std::ops::Range;
use std::path::PathBuf;

use super::errors::Source;
use super::secret::EnvLookup;

/// Collects located messages while the config is checked.
pub(super) struct Checker<'a> {
    pub src: &'a Source<'a>,
    pub base: PathBuf,
    pub env: EnvLookup<'a>,
    /// [`super::LoadOptions::read_secrets`].
    pub read_secrets: bool,
    pub errors: Vec<String>,
}

impl Checker<'_> {
    pub fn error(&mut self, span: &Range<usize>, key: &str, what: impl AsRef<str>) {
        self.errors.push(self.src.key_error(span, key, what));
    }
}
