//! Checks on remote target names, done at load time so a bad name fails `upsync check`
//! instead of every upload: KiFS directory names and Redivis table references.

/// Checks a top-level KiFS directory name against the KiFS name rules
/// ([`crate::upload::kifs::names`]); the error says what is wrong, naming the offending
/// character.
pub(crate) fn check_kifs_directory(name: &str) -> Result<(), String> {
    use crate::upload::kifs::names::{MAX_NAME_LEN, NameProblem, check_directory};
    check_directory(name).map_err(|problem| match problem {
        NameProblem::Character('/') => format!(
            "expected a top-level KiFS directory name without '/', found \"{name}\" \
             (KiFS directories are flat; files land at <directory>/<relative path>)"
        ),
        NameProblem::Character(c) => {
            let hint = if c == '~' {
                " ('~' is only allowed first, as in a home directory \"~user\")"
            } else {
                ""
            };
            format!(
                "KiFS directory \"{name}\" contains the character {c:?}, which KiFS does not \
                 allow{hint} (allowed: letters, digits, space and . - : [ ] ( ) # =, or a \
                 leading ~)"
            )
        }
        NameProblem::TooLong { chars } => format!(
            "expected a KiFS directory name of at most {MAX_NAME_LEN} characters, found one \
             of {chars}"
        ),
        _ => "expected a KiFS directory name, found \"\"".to_string(),
    })
}

/// Checks a Redivis table reference `owner.dataset[:…]:next.table[:refId]`: an owner (user or
/// organization), a dataset with qualifiers of which `next` (the unreleased version, the only
/// one that takes uploads) must be one, and a table with an optional reference id.
pub(crate) fn check_redivis_table(reference: &str) -> Result<(), String> {
    const SHAPE: &str = "a table reference like \"owner.dataset:next.table\"";
    let parts: Vec<&str> = reference.split('.').collect();
    if parts.len() != 3 {
        return Err(format!(
            "expected {SHAPE} (three parts separated by '.'), found \"{reference}\""
        ));
    }
    let (owner, dataset, table) = (parts[0], parts[1], parts[2]);
    if owner.is_empty() || !owner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "expected {SHAPE}, found owner \"{owner}\" in \"{reference}\" (owner names use \
             letters, digits and '_')"
        ));
    }
    let dataset_parts: Vec<&str> = dataset.split(':').collect();
    let table_parts: Vec<&str> = table.split(':').collect();
    if dataset_parts.iter().any(|p| p.trim().is_empty()) {
        return Err(format!(
            "expected {SHAPE}, found an empty dataset name or qualifier in \"{reference}\""
        ));
    }
    if table_parts.iter().any(|p| p.trim().is_empty()) || table_parts.len() > 2 {
        return Err(format!(
            "expected {SHAPE}, found table \"{table}\" in \"{reference}\" (a table is \
             name[:referenceId])"
        ));
    }
    if !dataset_parts[1..].contains(&"next") {
        return Err(format!(
            "Redivis accepts uploads only into an unreleased dataset version: write the \
             dataset as \"{}:next\" (expected \"{owner}.{}:next.{table}\", found \"{reference}\")",
            dataset_parts[0], dataset_parts[0],
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kifs_directories_with_allowed_characters_pass() {
        for ok in ["ingest", "data 2024", "a.b-c:d[e](f)#g=h", "~anonymous"] {
            assert_eq!(check_kifs_directory(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn kifs_directory_errors_name_the_character() {
        let err = check_kifs_directory("my_dir").expect_err("'_' is not a KiFS character");
        assert!(err.contains("'_'"), "{err}");
        let err = check_kifs_directory("a~b").expect_err("'~' only leads a home directory");
        assert!(err.contains("'~'"), "{err}");
        let err = check_kifs_directory("a/b").expect_err("directories are flat");
        assert!(err.contains("without '/'"), "{err}");
        assert!(check_kifs_directory("").is_err());
    }

    #[test]
    fn redivis_references_need_three_parts_and_next() {
        assert_eq!(check_redivis_table("demo.uploads:next.files"), Ok(()));
        assert_eq!(
            check_redivis_table("imathews.example:123:next.test:456"),
            Ok(())
        );
        let err = check_redivis_table("demo.uploads.files").expect_err("no :next");
        assert!(err.contains(":next"), "{err}");
        let err = check_redivis_table("demo.uploads:current.files").expect_err("released");
        assert!(err.contains("unreleased"), "{err}");
        assert!(check_redivis_table("uploads:next.files").is_err());
        assert!(check_redivis_table("de-mo.uploads:next.files").is_err());
        assert!(check_redivis_table("demo.:next.files").is_err());
        assert!(check_redivis_table("demo.uploads:next.").is_err());
    }
}
