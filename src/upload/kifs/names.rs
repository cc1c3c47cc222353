//! KiFS file name rules, checked locally so a bad name fails with a clear reason before any
//! byte is sent (`protocols/kifs.md` §4).

/// A full file name path (directory + name) may not be longer than this.
pub const MAX_NAME_LEN: usize = 1024;

const ALLOWED_PUNCTUATION: &str = " /.-:[]()#=";

/// Checks a full KiFS path `dir/sub/name`; the error names the offending character.
///
/// Letters are restricted to ASCII: whether KiFS accepts other letters is unverified, and a
/// name the server might reject is better refused here with a reason.
pub fn validate_name(name: &str) -> Result<(), String> {
    let length = name.chars().count();
    if length > MAX_NAME_LEN {
        return Err(format!(
            "KiFS name is {length} characters long, more than the limit of {MAX_NAME_LEN}: '{}…'",
            name.chars().take(60).collect::<String>()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ALLOWED_PUNCTUATION.contains(*c)))
    {
        return Err(format!(
            "KiFS does not allow the character {} in file names: '{}' (allowed: letters, digits, space, / . - : [ ] ( ) # =)",
            describe_char(bad),
            name.escape_debug()
        ));
    }
    let mut segments = name.split('/');
    let directory = segments.next().unwrap_or("");
    if directory.is_empty() || name.starts_with('/') {
        return Err(format!(
            "KiFS name '{name}' must start with a directory name"
        ));
    }
    let rest: Vec<&str> = segments.collect();
    if rest.is_empty() || rest.iter().any(|segment| segment.is_empty()) {
        return Err(format!("KiFS name '{name}' has an empty path segment"));
    }
    Ok(())
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
    }

    #[test]
    fn names_the_offending_character() {
        for (name, shown) in [
            ("ingest/a_b.csv", "'_'"),
            ("ingest/a~b", "'~'"),
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
}
