//! Path resolution: relative paths in the config are relative to the config file's
//! directory, and every resolved path is absolute and normalized.
//!
//! Folder paths are queue keys, so one folder must always resolve to one spelling:
//! the canonical path when the path exists, otherwise the canonical path of its deepest
//! existing ancestor with the rest appended (lexically cleaned).

use std::path::{Component, Path, PathBuf};

/// The directory relative config paths are resolved against, made absolute.
pub(crate) fn base_dir(config_path: &Path) -> PathBuf {
    let parent = match config_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    absolute(&parent)
}

/// `value` joined onto `base` (unless already absolute), then normalized.
pub(crate) fn resolve(base: &Path, value: &str) -> PathBuf {
    normalize(&base.join(value))
}

/// `base.join(value)` without touching the file system beyond making it absolute; for
/// secret files, where the reported path should be the one the user can recognise.
pub(crate) fn join(base: &Path, value: &str) -> PathBuf {
    lexical_clean(&absolute(&base.join(value)))
}

/// Absolute, symlink-free where the path exists, lexically clean where it does not.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let path = absolute(path);
    if let Ok(canonical) = path.canonicalize() {
        return canonical;
    }
    let path = lexical_clean(&path);
    // Canonicalize the deepest existing ancestor and keep the not-yet-existing tail.
    let mut tail = Vec::new();
    let mut current = path.as_path();
    while let Some(parent) = current.parent() {
        if let Some(name) = current.file_name() {
            tail.push(name.to_os_string());
        }
        if let Ok(canonical) = parent.canonicalize() {
            let mut out = canonical;
            for name in tail.iter().rev() {
                out.push(name);
            }
            return out;
        }
        current = parent;
    }
    path
}

fn absolute(path: &Path) -> PathBuf {
    // std::path::absolute only fails for an empty path or an unreadable cwd; then the
    // relative path is the best that can be said.
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A file or directory named on the command line (`retry`, `forget`), spelled as folder
/// paths are, so that it can be found in the folder holding it: `.` and `..` resolved by
/// text, as a shell's `cd` does, and the directory holding it normalized like a folder
/// path. The last component is kept as given: a symlink inside a folder is a file of that
/// folder, whatever it points to.
pub fn command_line_path(path: &Path) -> PathBuf {
    let path = lexical_clean(&absolute(path));
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => normalize(parent).join(name),
        _ => path,
    }
}

/// Removes `.` and resolves `..` by text. Only used on parts of a path that do not exist
/// (so no symlink can make `..` mean something else) or for display.
fn lexical_clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// True when `a` and `b` are the same path or one lies inside the other.
pub(crate) fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_against_the_base_directory() {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let base = dir.path().canonicalize().expect("the temp dir exists");
        std::fs::create_dir(base.join("inbox")).expect("the temp dir is writable");
        assert_eq!(resolve(&base, "inbox"), base.join("inbox"));
        assert_eq!(resolve(&base, "./inbox/../inbox/"), base.join("inbox"));
        assert_eq!(resolve(&base, "/abs/x"), PathBuf::from("/abs/x"));
    }

    #[test]
    fn missing_paths_keep_their_tail_under_the_canonical_ancestor() {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let base = dir.path().canonicalize().expect("the temp dir exists");
        assert_eq!(resolve(&base, "a/../b/state"), base.join("b").join("state"));
    }

    #[test]
    fn command_line_paths_resolve_their_directory_and_keep_their_last_name() {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let base = dir.path().canonicalize().expect("the temp dir exists");
        std::fs::create_dir(base.join("real")).expect("the temp dir is writable");
        std::os::unix::fs::symlink(base.join("real"), base.join("via")).expect("symlinks work");
        std::os::unix::fs::symlink("/elsewhere", base.join("real").join("link"))
            .expect("symlinks work");
        assert_eq!(
            command_line_path(&base.join("via/./x/../link")),
            base.join("real").join("link")
        );
        assert_eq!(
            command_line_path(&base.join("via/gone.csv")),
            base.join("real").join("gone.csv")
        );
        assert_eq!(command_line_path(Path::new("/")), PathBuf::from("/"));
    }

    #[test]
    fn nested_and_equal_paths_overlap_but_siblings_do_not() {
        assert!(overlaps(Path::new("/data"), Path::new("/data/raw")));
        assert!(overlaps(Path::new("/data/raw"), Path::new("/data")));
        assert!(overlaps(Path::new("/data"), Path::new("/data")));
        assert!(!overlaps(Path::new("/data/raw"), Path::new("/data/raw2")));
    }
}
