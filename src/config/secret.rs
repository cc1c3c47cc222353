//! A secret string (token, password) that never shows in Debug, Display or logs, and how
//! the config reads one: inline (demo only), from a file, or from an environment variable.
//!
//! Secret files also work with systemd credentials (`LoadCredential=`): when the file is not
//! at its resolved path and `CREDENTIALS_DIRECTORY` is set, `$CREDENTIALS_DIRECTORY/<file
//! name>` is tried. Messages name the key, the file or the variable, never the content.
//! Other `*_file` keys (`ca_file`) are looked up the same way, through [`read_key_file`].
//!
//! A secret must be sendable: a bearer token goes into the `Authorization` header as it is,
//! so it may hold only visible ASCII and spaces (what an HTTP header value takes); a
//! password is base64-encoded there, so it may hold any character but a control character.
//! A line break inside a secret file's value is the usual mistake this catches.
//!
//! Commands that never reach a remote (`status`, `ls`, `retry`, `forget`) check the keys'
//! shape without reading files or variables ([`super::LoadOptions::read_secrets`]): those
//! often exist only inside the service (`EnvironmentFile=`, `$CREDENTIALS_DIRECTORY`).
//! The same holds for `ca_file`, which they leave unread too.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::errors::Source;
use super::paths;

/// `value` is `None` when the config was loaded without reading secrets, for a command
/// that reaches no remote. `file` is the file it was read from, read again when rotated
/// ([`Secret::reread`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: Option<String>,
    file: Option<(PathBuf, Sent)>,
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret {
            value: Some(value.into()),
            file: None,
        }
    }

    /// A secret whose keys were checked but whose file or variable was not read.
    pub(crate) fn unread() -> Secret {
        Secret {
            value: None,
            file: None,
        }
    }

    /// Whether the value was read (see [`Secret::unread`]).
    pub fn is_read(&self) -> bool {
        self.value.is_some()
    }

    /// The secret itself, for the one place that puts it on the wire.
    ///
    /// Panics on an unread secret: sending anything else than the configured secret would
    /// be worse than stopping.
    pub fn expose(&self) -> &str {
        self.value
            .as_deref()
            .expect("only commands that load the config with read_secrets reach a remote")
    }

    /// A secret read from a file, read again: `Ok(None)` when it was not read from a file
    /// or the file holds the same secret, the new secret when the file was rotated, and an
    /// error that names the file (never its content) when the file cannot be used now (in
    /// the middle of its rotation, say): the secret in use stays.
    pub fn reread(&self) -> Result<Option<Secret>, String> {
        let (Some(current), Some((path, sent))) = (&self.value, &self.file) else {
            return Ok(None);
        };
        let bytes = std::fs::read(path)
            .map_err(|err| format!("cannot read the secret file \"{}\": {err}", path.display()))?;
        let value = secret_in(&bytes, *sent)
            .map_err(|problem| format!("the secret file \"{}\" {problem}", path.display()))?;
        if value == *current {
            return Ok(None);
        }
        Ok(Some(Secret {
            value: Some(value),
            file: self.file.clone(),
        }))
    }
}

/// The secret a secret file's `bytes` hold (without its final line break), or what is
/// wrong with it, in words that do not show it.
fn secret_in(bytes: &[u8], sent: Sent) -> Result<String, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "is not valid UTF-8 text".to_string())?;
    // `echo token > file` and editors add a final newline that is not part of the secret.
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err("is empty".into());
    }
    if let Some(problem) = unsendable(value, sent) {
        return Err(problem);
    }
    Ok(value.to_owned())
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Reads environment variables; injected so tests need not mutate the process environment.
pub(crate) type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// How a secret travels in the `Authorization` header, which decides what it may hold.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// As it is (`Bearer <token>`): visible ASCII and spaces only.
    Verbatim,
    /// Base64-encoded (`Basic <user:password>`): anything but control characters.
    Encoded,
}

/// The three ways one secret can be given, as found in one table.
pub(crate) struct SecretKeys<'a> {
    /// Table path for messages, e.g. "redivis".
    pub table: &'a str,
    /// Base key name: "token" or "password"; the others are `<name>_file`, `<name>_env`.
    pub name: &'a str,
    pub sent: Sent,
    pub inline: Option<&'a Spanned<String>>,
    pub file: Option<&'a Spanned<String>>,
    pub env: Option<&'a Spanned<String>>,
}

impl SecretKeys<'_> {
    fn key(&self, suffix: &str) -> String {
        format!("{}.{}{}", self.table, self.name, suffix)
    }

    /// Which of the three keys are present, with their spans.
    pub fn given(&self) -> Vec<(String, std::ops::Range<usize>)> {
        [(self.inline, ""), (self.file, "_file"), (self.env, "_env")]
            .into_iter()
            .filter_map(|(value, suffix)| {
                value.map(|v| (format!("{}{}", self.name, suffix), v.span()))
            })
            .collect()
    }

    /// Reads the secret. `Ok(None)` when none of the three keys is present. Without `read`,
    /// a file or variable is only checked to be named, and the secret is [`Secret::unread`].
    pub fn resolve(
        &self,
        src: &Source<'_>,
        base: &Path,
        env: EnvLookup<'_>,
        read: bool,
    ) -> Result<Option<Secret>, String> {
        let given = self.given();
        if given.len() > 1 {
            let (_, first_span) = &given[0];
            let names: Vec<&str> = given.iter().map(|(n, _)| n.as_str()).collect();
            let (second, second_span) = &given[1];
            return Err(src.key_error(
                second_span,
                &format!("{}.{}", self.table, second),
                format!(
                    "give only one of {}, {}_file, {}_env; found {} (lines {} and {})",
                    self.name,
                    self.name,
                    self.name,
                    names.join(" and "),
                    src.line_of(first_span.start),
                    src.line_of(second_span.start),
                ),
            ));
        }
        if let Some(value) = self.inline {
            if value.get_ref().is_empty() {
                return Err(src.key_error(&value.span(), &self.key(""), "is empty"));
            }
            if let Some(problem) = unsendable(value.get_ref(), self.sent) {
                return Err(src.key_error(&value.span(), &self.key(""), problem));
            }
            return Ok(Some(Secret::new(value.get_ref().clone())));
        }
        if let Some(file) = self.file {
            let key = self.key("_file");
            if !read {
                check_file_named(src, &key, file, &SECRET_FILE)?;
                return Ok(Some(Secret::unread()));
            }
            return read_secret_file(src, &key, file, base, env, self.sent).map(Some);
        }
        if let Some(var) = self.env {
            let key = self.key("_env");
            if !read {
                check_variable_name(src, &key, var)?;
                return Ok(Some(Secret::unread()));
            }
            return read_secret_env(src, &key, var, env, self.sent).map(Some);
        }
        Ok(None)
    }
}

/// Secret files read again while the daemon runs, so that a token or password rotated in
/// place (by a secrets agent, a script) is used without a reload.
impl super::Config {
    /// The config with its secret files read again: `None` when no secret changed. A file
    /// that cannot be used now is named in `problems` (never its content), and its secret
    /// stays as it was.
    pub fn with_rotated_secrets(&self, problems: &mut Vec<String>) -> Option<super::Config> {
        let mut rotated = self.clone();
        let mut changed = false;
        let mut reread = |secret: &mut Secret| match secret.reread() {
            Ok(Some(new)) => {
                *secret = new;
                changed = true;
            }
            Ok(None) => {}
            Err(problem) => problems.push(problem),
        };
        if let Some(kifs) = &mut rotated.kifs {
            match &mut kifs.auth {
                super::KifsAuth::Basic { password, .. } => reread(password),
                super::KifsAuth::Bearer { token } => reread(token),
                super::KifsAuth::None => {}
            }
        }
        if let Some(redivis) = &mut rotated.redivis {
            reread(&mut redivis.token);
        }
        changed.then_some(rotated)
    }
}

/// Why `value` cannot be sent as `sent` says, in words that do not show it.
pub(crate) fn unsendable(value: &str, sent: Sent) -> Option<String> {
    let expected = match sent {
        Sent::Verbatim => {
            "expected visible ASCII characters and spaces, which is what an HTTP header takes"
        }
        Sent::Encoded => "expected printable characters",
    };
    let found = value.chars().find_map(|c| match c {
        '\n' | '\r' => Some("a line break (a secret is one line)"),
        c if c.is_control() => Some("a control character (such as a tab)"),
        c if !c.is_ascii() && sent == Sent::Verbatim => Some("a character that is not ASCII"),
        _ => None,
    })?;
    Some(format!("holds {found}; {expected}"))
}

fn read_secret_file(
    src: &Source<'_>,
    key: &str,
    file: &Spanned<String>,
    base: &Path,
    env: EnvLookup<'_>,
    sent: Sent,
) -> Result<Secret, String> {
    let span = file.span();
    let (path, bytes) = read_key_file(src, key, file, base, env, &SECRET_FILE)?;
    let value = secret_in(&bytes, sent).map_err(|problem| {
        src.key_error(
            &span,
            key,
            format!("the secret file \"{}\" {problem}", path.display()),
        )
    })?;
    Ok(Secret {
        value: Some(value),
        file: Some((path, sent)),
    })
}

/// How messages about one kind of `*_file` key name the file and its content.
pub(crate) struct FileKind {
    /// "secret file", "CA file".
    pub name: &'static str,
    /// What the file holds: "the secret", "CA certificates (PEM)".
    pub holding: &'static str,
}

const SECRET_FILE: FileKind = FileKind {
    name: "secret file",
    holding: "the secret",
};

/// Reads the file a `*_file` key names: resolved against the config's directory, or, when
/// it is not there and systemd passed credentials, `$CREDENTIALS_DIRECTORY/<file name>`.
/// Returns the path actually read and its bytes; errors are located messages.
pub(crate) fn read_key_file(
    src: &Source<'_>,
    key: &str,
    file: &Spanned<String>,
    base: &Path,
    env: EnvLookup<'_>,
    kind: &FileKind,
) -> Result<(PathBuf, Vec<u8>), String> {
    let span = file.span();
    check_file_named(src, key, file, kind)?;
    let path = paths::join(base, file.get_ref());
    let (path, result) = match std::fs::read(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => match credential_path(&path, env) {
            Some(credential) => {
                let result = std::fs::read(&credential);
                match result {
                    Err(e2) if e2.kind() == io::ErrorKind::NotFound => {
                        return Err(src.key_error(
                            &span,
                            key,
                            format!(
                                "cannot read the {} \"{}\" (also tried the systemd credential \"{}\"): {}",
                                kind.name,
                                path.display(),
                                credential.display(),
                                e
                            ),
                        ));
                    }
                    other => (credential, other),
                }
            }
            None => (path, Err(e)),
        },
        other => (path, other),
    };
    let bytes = result.map_err(|e| {
        src.key_error(
            &span,
            key,
            format!(
                "cannot read the {} \"{}\": {}",
                kind.name,
                path.display(),
                e
            ),
        )
    })?;
    Ok((path, bytes))
}

/// A `*_file` key must name a file, even where the file is not read.
pub(crate) fn check_file_named(
    src: &Source<'_>,
    key: &str,
    file: &Spanned<String>,
    kind: &FileKind,
) -> Result<(), String> {
    if file.get_ref().trim().is_empty() {
        return Err(src.key_error(
            &file.span(),
            key,
            format!(
                "expected the path of a file holding {}, found \"\"",
                kind.holding
            ),
        ));
    }
    Ok(())
}

/// `$CREDENTIALS_DIRECTORY/<file name>`, when systemd passed credentials to the service.
fn credential_path(path: &Path, env: EnvLookup<'_>) -> Option<PathBuf> {
    let dir = env("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty())?;
    let name = path.file_name()?;
    Some(PathBuf::from(dir).join(name))
}

/// A `*_env` key must name a variable, even where the variable is not read.
fn check_variable_name(src: &Source<'_>, key: &str, var: &Spanned<String>) -> Result<(), String> {
    let name = var.get_ref();
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(src.key_error(
            &var.span(),
            key,
            format!("expected the name of an environment variable, found \"{name}\""),
        ));
    }
    Ok(())
}

fn read_secret_env(
    src: &Source<'_>,
    key: &str,
    var: &Spanned<String>,
    env: EnvLookup<'_>,
    sent: Sent,
) -> Result<Secret, String> {
    let span = var.span();
    let name = var.get_ref();
    check_variable_name(src, key, var)?;
    match env(name) {
        None => Err(src.key_error(
            &span,
            key,
            format!("the environment variable {name} is not set (expected it to hold the secret)"),
        )),
        Some(value) if value.is_empty() => Err(src.key_error(
            &span,
            key,
            format!("the environment variable {name} is empty (expected it to hold the secret)"),
        )),
        Some(value) => match value.into_string() {
            Ok(value) => match unsendable(&value, sent) {
                Some(problem) => Err(src.key_error(
                    &span,
                    key,
                    format!("the environment variable {name} {problem}"),
                )),
                None => Ok(Secret::new(value)),
            },
            Err(_) => Err(src.key_error(
                &span,
                key,
                format!("the environment variable {name} is not valid UTF-8"),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(secret.expose(), "hunter2");
    }
}
