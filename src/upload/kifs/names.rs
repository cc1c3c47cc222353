//! KiFS name rules, stated once: the client checks a target here before any byte is sent,
//! the configuration checks `kifs_directory` at load time, and the emulator rejects what
//! the server would (`docs/protocols/kifs.md` §4).
//!
//! 1. Characters: ASCII letters and digits, space, and `/ . - : [ ] ( ) # =`. Letters are
//!    restricted to ASCII: whether KiFS accepts other letters is unverified, and a name the
//!    server might reject is better refused here with a reason.
//! 2. `~` only as the first character of the directory: a home directory `~user`.
//! 3. A full path (directory and name) is at most [`MAX_NAME_LEN`] characters.
//! 4. Shape: `directory/name`, the directory one flat level (no `/`), then one or more
//!    segments, none of them empty, `.` or `..`.
//!
//! A check answers with a [`NameProblem`]; each caller words it for its reader (an upload
//! failure, a configuration error, a server's `ERROR` reply). [`validate_name`] is the
//! client's wording.

/// A full file name path (directory + name) may not be longer than this, in characters.
pub const MAX_NAME_LEN: usize = 1024;

/// The allowed characters, as error messages list them.
pub const ALLOWED_CHARACTERS: &str = "letters, digits, space, / . - : [ ] ( ) # =";

const PUNCTUATION: &str = " /.-:[]()#=";

/// What is wrong with a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameProblem {
    Empty,
    /// Longer than [`MAX_NAME_LEN`] characters.
    TooLong {
        chars: usize,
    },
    /// A character the rules do not allow where it stands (`/` in a directory name, `~`
    /// anywhere but first in the directory).
    Character(char),
    /// Nothing before the first `/`.
    NoDirectory,
    /// Nothing after the directory.
    NoFileName,
    /// `a//b` or a trailing `/`.
    EmptySegment,
    /// A `.` or `..` segment.
    DotSegment(String),
}

/// Whether `/show/files`-style patterns may hold the wildcards `*` and `?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wildcards {
    Refused,
    Allowed,
}

/// Checks a top-level directory name (rules 1, 2 and 3; no `/`).
pub fn check_directory(name: &str) -> Result<(), NameProblem> {
    if name.is_empty() {
        return Err(NameProblem::Empty);
    }
    check_length(name)?;
    check_directory_chars(name)
}

/// Checks a full path `directory/sub/name` (every rule).
pub fn check_path(path: &str) -> Result<(), NameProblem> {
    check_path_with(path, Wildcards::Refused)
}

/// Checks a full path, or a pattern over the part after the directory when `wildcards`
/// allows `*` and `?` there.
pub fn check_path_with(path: &str, wildcards: Wildcards) -> Result<(), NameProblem> {
    let (_, rest) = split_directory(path)?;
    if rest.is_empty() {
        return Err(NameProblem::NoFileName);
    }
    check_rest(rest, wildcards)
}

/// Splits `path` into its directory and the rest (empty when there is no `/`), checking
/// the length and the directory.
pub fn split_directory(path: &str) -> Result<(&str, &str), NameProblem> {
    if path.is_empty() {
        return Err(NameProblem::Empty);
    }
    check_length(path)?;
    let (directory, rest) = path.split_once('/').unwrap_or((path, ""));
    if directory.is_empty() {
        return Err(NameProblem::NoDirectory);
    }
    check_directory_chars(directory)?;
    Ok((directory, rest))
}

/// Checks the part after `directory/`: characters and segments.
pub fn check_rest(rest: &str, wildcards: Wildcards) -> Result<(), NameProblem> {
    let wildcard = |c: char| wildcards == Wildcards::Allowed && (c == '*' || c == '?');
    if let Some(c) = rest.chars().find(|&c| !(is_allowed(c) || wildcard(c))) {
        return Err(NameProblem::Character(c));
    }
    for segment in rest.split('/') {
        match segment {
            "" => return Err(NameProblem::EmptySegment),
            "." | ".." => return Err(NameProblem::DotSegment(segment.to_string())),
            _ => {}
        }
    }
    Ok(())
}

/// Rule 1: a character allowed anywhere in a file name path.
pub fn is_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || PUNCTUATION.contains(c)
}

fn check_length(path: &str) -> Result<(), NameProblem> {
    let chars = path.chars().count();
    if chars > MAX_NAME_LEN {
        return Err(NameProblem::TooLong { chars });
    }
    Ok(())
}

fn check_directory_chars(directory: &str) -> Result<(), NameProblem> {
    let allowed = |(i, c): &(usize, char)| (is_allowed(*c) && *c != '/') || (*c == '~' && *i == 0);
    match directory.char_indices().find(|ic| !allowed(ic)) {
        Some((_, c)) => Err(NameProblem::Character(c)),
        None => Ok(()),
    }
}

/// The client's check of a full KiFS path; the error names the offending character.
pub fn validate_name(name: &str) -> Result<(), String> {
    check_path(name).map_err(|problem| match problem {
        NameProblem::Character(c) => format!(
            "KiFS does not allow the character {} in file names: '{}' (allowed: \
             {ALLOWED_CHARACTERS})",
            describe_char(c),
            name.escape_debug()
        ),
        NameProblem::TooLong { chars } => format!(
            "KiFS name is {chars} characters long, more than the limit of {MAX_NAME_LEN}: '{}…'",
            name.chars().take(60).collect::<String>()
        ),
        NameProblem::Empty | NameProblem::NoDirectory => {
            format!("KiFS name '{name}' must start with a directory name")
        }
        NameProblem::NoFileName | NameProblem::EmptySegment => {
            format!("KiFS name '{name}' has an empty path segment")
        }
        NameProblem::DotSegment(segment) => {
            format!("KiFS name '{name}' has a path segment '{segment}'")
        }
    })
}

fn describe_char(c: char) -> String {
    if c.is_control() || c.is_whitespace() {
        format!("{:?} (U+{:04X})", c, c as u32)
    } else {
        format!("'{c}' (U+{:04X})", c as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_characters() {
        validate_name("ingest/Report 2024-01 [v2] (final) #3 a=b:c.csv").unwrap();
        validate_name("ingest/nested/deeper/x.bin").unwrap();
        validate_name("~alice/notes.txt").unwrap();
    }

    #[test]
    fn names_the_offending_character() {
        for (name, shown) in [
            ("ingest/a_b.csv", "'_'"),
            ("ingest/a~b", "'~'"),
            ("in~gest/ab", "'~'"),
            ("ingest/a+b", "'+'"),
            ("ingest/a,b", "','"),
            ("ingest/été.csv", "'é'"),
            ("ingest/line\nbreak", "'\\n'"),
        ] {
            let err = validate_name(name).unwrap_err();
            assert!(err.contains(shown), "{name}: {err}");
        }
    }

    #[test]
    fn enforces_the_length_limit() {
        let ok = format!("d/{}", "x".repeat(MAX_NAME_LEN - 2));
        validate_name(&ok).unwrap();
        let long = format!("d/{}", "x".repeat(MAX_NAME_LEN - 1));
        assert!(
            validate_name(&long)
                .unwrap_err()
                .contains("1025 characters")
        );
    }

    #[test]
    fn rejects_empty_segments() {
        assert!(validate_name("d//x").is_err());
        assert!(validate_name("d/").is_err());
        assert!(validate_name("/d/x").is_err());
    }

    #[test]
    fn each_rule_has_its_problem() {
        let table: [(&str, NameProblem); 9] = [
            ("", NameProblem::Empty),
            ("d", NameProblem::NoFileName),
            ("d/", NameProblem::NoFileName),
            ("/d/x", NameProblem::NoDirectory),
            ("d//x", NameProblem::EmptySegment),
            ("d/x/", NameProblem::EmptySegment),
            ("d/../x", NameProblem::DotSegment("..".into())),
            ("d/a*b", NameProblem::Character('*')),
            ("a~b/x", NameProblem::Character('~')),
        ];
        for (path, problem) in table {
            assert_eq!(check_path(path), Err(problem), "{path:?}");
        }
        assert_eq!(check_path_with("d/*.csv", Wildcards::Allowed), Ok(()));
    }

    #[test]
    fn directories_are_flat_and_may_be_home_directories() {
        assert_eq!(check_directory("data 2024.a-b:c[d](e)#f=g"), Ok(()));
        assert_eq!(check_directory("~anonymous"), Ok(()));
        assert_eq!(check_directory("a/b"), Err(NameProblem::Character('/')));
        assert_eq!(check_directory("a~b"), Err(NameProblem::Character('~')));
        assert_eq!(check_directory("my_dir"), Err(NameProblem::Character('_')));
        assert_eq!(check_directory(""), Err(NameProblem::Empty));
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            check_directory(&long),
            Err(NameProblem::TooLong {
                chars: MAX_NAME_LEN + 1
            })
        );
    }
}
