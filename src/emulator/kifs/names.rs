//! How the emulated server answers names: file names, `/show/files`-style selectors and
//! directory names are checked against the KiFS name rules ([`crate::upload::kifs::names`],
//! `docs/protocols/kifs.md` §4), and a broken rule is worded as the server's `ERROR`
//! message. Also the `*`/`?` wildcards of show/delete/download.
//!
//! The server's own choices on top of the rules: one leading `/` is stripped and accepted
//! (the documentation's example has one); a created directory may not start with `~`
//! (home directories come from `create_home_directory`).

use crate::upload::kifs::names::{
    self as rules, ALLOWED_CHARACTERS, MAX_NAME_LEN, NameProblem, Wildcards,
};

/// A validated full file name: `directory/rest`, leading `/` stripped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileName {
    pub full: String,
    pub directory: String,
}

/// What a show/delete/download path selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Selector {
    pub directory: String,
    /// `None` = every file in the directory; else a pattern over the part after `dir/`.
    pub pattern: Option<String>,
}

impl Selector {
    pub(crate) fn matches(&self, full: &str) -> bool {
        let Some((directory, rest)) = full.split_once('/') else {
            return false;
        };
        directory == self.directory
            && self
                .pattern
                .as_deref()
                .is_none_or(|pattern| wildcard_match(pattern, rest))
    }

    /// The single file name selected when the pattern has no wildcard.
    pub(crate) fn literal(&self) -> Option<String> {
        let pattern = self.pattern.as_deref()?;
        (!pattern.contains(['*', '?'])).then(|| format!("{}/{pattern}", self.directory))
    }
}

fn shorten(name: &str) -> String {
    if name.chars().count() <= 60 {
        name.to_string()
    } else {
        let head: String = name.chars().take(40).collect();
        format!("{head}...")
    }
}

/// A rejected character as the message shows it: itself, or escaped when invisible.
fn show_char(c: char) -> String {
    if c.is_control() || (c.is_whitespace() && c != ' ') {
        c.escape_default().to_string()
    } else {
        c.to_string()
    }
}

/// The server's message for a file name or selector that breaks a rule.
fn file_name_error(name: &str, problem: NameProblem) -> String {
    let name = shorten(name);
    match problem {
        NameProblem::Empty => "Invalid file name '': the name is empty".to_string(),
        NameProblem::TooLong { chars } => {
            format!("Invalid file name '{name}': {chars} characters, the limit is {MAX_NAME_LEN}")
        }
        NameProblem::Character(c) => format!(
            "Invalid file name '{name}': character '{}' is not allowed (allowed: \
             {ALLOWED_CHARACTERS})",
            show_char(c)
        ),
        NameProblem::NoDirectory => format!("Invalid file name '{name}': empty directory name"),
        NameProblem::NoFileName => format!(
            "Invalid file name '{name}': no file name after the directory (expected \
             'directory/name')"
        ),
        NameProblem::EmptySegment => format!(
            "Invalid file name '{name}': empty path segment (names look like \
             'directory/sub/name')"
        ),
        NameProblem::DotSegment(segment) => {
            format!("Invalid file name '{name}': path segment '{segment}' is not allowed")
        }
    }
}

/// Validates a file name for upload.
pub(crate) fn parse_file_name(raw: &str) -> Result<FileName, String> {
    let name = raw.strip_prefix('/').unwrap_or(raw);
    rules::check_path(name).map_err(|problem| file_name_error(name, problem))?;
    let (directory, _) = name.split_once('/').unwrap_or((name, ""));
    Ok(FileName {
        full: name.to_string(),
        directory: directory.to_string(),
    })
}

/// Validates a show/delete/download path: a directory, or `dir/` + name or pattern.
pub(crate) fn parse_selector(raw: &str) -> Result<Selector, String> {
    let name = raw.strip_prefix('/').unwrap_or(raw);
    let error = |problem| file_name_error(name, problem);
    let (directory, rest) = rules::split_directory(name).map_err(error)?;
    let pattern = if rest.is_empty() {
        None
    } else {
        rules::check_rest(rest, Wildcards::Allowed).map_err(error)?;
        Some(rest.to_string())
    };
    Ok(Selector {
        directory: directory.to_string(),
        pattern,
    })
}

/// Validates a directory name for create/delete directory.
pub(crate) fn check_directory_name(name: &str) -> Result<(), String> {
    let problem = match rules::check_directory(name) {
        Ok(()) if name.starts_with('~') => NameProblem::Character('~'),
        Ok(()) if name == "." || name == ".." => NameProblem::DotSegment(name.to_string()),
        Ok(()) => return Ok(()),
        Err(problem) => problem,
    };
    let shown = shorten(name);
    Err(match problem {
        NameProblem::Empty => "Invalid directory name '': the name is empty".to_string(),
        NameProblem::TooLong { .. } => {
            format!("Invalid directory name '{shown}': longer than {MAX_NAME_LEN} characters")
        }
        NameProblem::Character(c) => format!(
            "Invalid directory name '{shown}': character '{}' is not allowed (allowed: letters, \
             digits, space, . - : [ ] ( ) # =)",
            show_char(c)
        ),
        _ => format!("Invalid directory name '{shown}'"),
    })
}

/// `*` = any run of characters (also across `/`, names being flat strings), `?` = exactly
/// one character.
pub(crate) fn wildcard_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    // Greedy matching with one backtrack point: the last `*` seen and where it started.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((star_p, star_n)) = star {
            pi = star_p + 1;
            ni = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscore_is_rejected_with_the_allowed_list() {
        assert_eq!(
            parse_file_name("dir/a_b.txt").unwrap_err(),
            "Invalid file name 'dir/a_b.txt': character '_' is not allowed (allowed: letters, \
             digits, space, / . - : [ ] ( ) # =)"
        );
    }

    #[test]
    fn every_documented_character_is_accepted() {
        let name = parse_file_name("/d/sub dir/a.b-c:d[e](f)#g=h9").unwrap();
        assert_eq!(name.full, "d/sub dir/a.b-c:d[e](f)#g=h9");
        assert_eq!(name.directory, "d");
        assert!(
            parse_file_name("~alice/x").is_ok(),
            "home directories hold files"
        );
    }

    #[test]
    fn each_rejected_character_is_named() {
        for c in ['_', '~', '+', ',', '\'', '&', '@', '%', 'é', '*'] {
            let err = parse_file_name(&format!("d/a{c}b")).unwrap_err();
            assert!(err.contains(&format!("character '{c}'")), "{err}");
        }
    }

    #[test]
    fn bad_shapes_are_rejected() {
        for (name, needle) in [
            ("", "empty"),
            ("d", "no file name"),
            ("d/", "no file name"),
            ("d//x", "empty path segment"),
            ("d/x/", "empty path segment"),
            ("d/../x", "'..'"),
            ("d/./x", "'.'"),
            ("//d/x", "empty directory"),
        ] {
            let err = parse_file_name(name).unwrap_err();
            assert!(err.contains(needle), "{name}: {err}");
        }
    }

    #[test]
    fn names_over_1024_characters_are_rejected() {
        let ok = format!("d/{}", "a".repeat(1022));
        assert!(parse_file_name(&ok).is_ok());
        let long = format!("d/{}", "a".repeat(1023));
        let err = parse_file_name(&long).unwrap_err();
        assert!(err.contains("1025 characters, the limit is 1024"), "{err}");
    }

    #[test]
    fn wildcards_match_after_the_directory() {
        assert!(wildcard_match("*.csv", "a.csv"));
        assert!(wildcard_match("*.csv", "sub/a.csv"), "* crosses /");
        assert!(!wildcard_match("*.csv", "a.csvx"));
        assert!(wildcard_match("a?c", "abc"));
        assert!(!wildcard_match("a?c", "ac"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("a*b*c", "aXbYbZc"));
        assert!(!wildcard_match("a*b*c", "aXbYbZ"));
        let selector = parse_selector("d/*.txt").unwrap();
        assert!(selector.matches("d/x.txt"));
        assert!(!selector.matches("e/x.txt"));
        assert_eq!(selector.literal(), None);
        assert_eq!(parse_selector("d/x").unwrap().literal(), Some("d/x".into()));
        assert_eq!(parse_selector("d").unwrap().pattern, None);
    }
}
