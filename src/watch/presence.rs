//! Whether the files a folder tracks are still there, one directory listing per directory
//! instead of a look at each file ([`Presence`]).
//!
//! After every whole-folder scan each file with a job is checked ([`super::forget_vanished`]),
//! and so is every tracked file under a directory that went away; a dry run checks the
//! uploaded files of a folder that propagates deletions the same way (`daemon::dry_run`). A `stat` per file cost as
//! much as the scan's own look at it: in a first mirror of small files, one of the five
//! `statx` calls of each file. The files come in the ledger's byte order, so the files of a
//! directory come together, interrupted only by those of its subdirectories. So:
//!
//! 1. The listings of the directories on the path of the file last asked about are kept,
//!    outermost first. A file drops those that are not its directory or above it: a
//!    directory's files never come back once the order has left it, so each directory is
//!    listed once.
//! 2. A file is there when its directory's listing holds its name, whatever is at that name
//!    now: a directory or a link in a file's place is not a deletion of the file (the rule of
//!    [`super::is_gone`], which this answers the same as).
//! 3. A directory that does not exist holds none of its files: they are gone.
//! 4. A directory that cannot be listed (no longer a directory, not readable), or whose
//!    listing would take the names kept past [`MAX_NAMES`], has each of its files looked at
//!    on its own, as [`super::is_gone`] does. So the memory stays bounded whatever the size
//!    of a directory or the depth of the tree.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::ErrorKind;
use std::path::Path;

/// The most names the kept listings hold together (step 4): a few hundred KiB.
pub(crate) const MAX_NAMES: usize = 16_384;

/// What is known of one directory's entries.
enum Listing {
    /// The names it held when listed.
    Names(HashSet<OsString>),
    /// It does not exist (step 3).
    Missing,
    /// Not listed: its files are looked at one by one (step 4).
    Unlisted,
}

/// Answers whether files of the folder at `root` are gone, in the order the ledger hands
/// them on (module doc).
pub(crate) struct Presence<'a> {
    root: &'a Path,
    /// The directories (relative, `""` for the root) on the path of the last file asked
    /// about, outermost first, with their listings.
    kept: Vec<(String, Listing)>,
    /// How many names `kept` holds.
    names: usize,
    max_names: usize,
    /// How many directories were listed (for the tests of step 1).
    #[cfg(test)]
    listed: usize,
}

impl<'a> Presence<'a> {
    pub(crate) fn new(root: &'a Path) -> Presence<'a> {
        Presence::with_max_names(root, MAX_NAMES)
    }

    fn with_max_names(root: &'a Path, max_names: usize) -> Presence<'a> {
        Presence {
            root,
            kept: Vec::new(),
            names: 0,
            max_names,
            #[cfg(test)]
            listed: 0,
        }
    }

    /// Whether nothing is at `rel` (relative to the root) any more.
    pub(crate) fn is_gone(&mut self, rel: &str) -> bool {
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        match self.listing_of(dir) {
            Listing::Names(names) => !names.contains(OsStr::new(name)),
            Listing::Missing => true,
            Listing::Unlisted => super::is_gone(&self.root.join(rel)),
        }
    }

    /// The listing of `dir`, listed now unless kept (step 1).
    fn listing_of(&mut self, dir: &str) -> &Listing {
        while let Some((kept, _)) = self.kept.last()
            && kept != dir
            && !is_above(kept, dir)
        {
            if let Some((_, Listing::Names(names))) = self.kept.pop() {
                self.names -= names.len();
            }
        }
        if self.kept.last().is_none_or(|(kept, _)| kept != dir) {
            let listing = self.list(dir);
            self.kept.push((dir.to_string(), listing));
        }
        &self.kept.last().expect("pushed above if missing").1
    }

    /// Lists `dir` within what the kept listings leave of [`MAX_NAMES`] (steps 3 and 4).
    fn list(&mut self, dir: &str) -> Listing {
        #[cfg(test)]
        {
            self.listed += 1;
        }
        // For the root, `join("")` ends the path with a separator, which lists the same.
        let entries = match std::fs::read_dir(self.root.join(dir)) {
            Ok(entries) => entries,
            Err(err) if err.kind() == ErrorKind::NotFound => return Listing::Missing,
            Err(_) => return Listing::Unlisted,
        };
        let room = self.max_names.saturating_sub(self.names);
        let mut names = HashSet::new();
        for entry in entries {
            let Ok(entry) = entry else {
                return Listing::Unlisted;
            };
            if names.len() == room {
                return Listing::Unlisted;
            }
            names.insert(entry.file_name());
        }
        self.names += names.len();
        Listing::Names(names)
    }
}

/// Whether directory `above` (relative, `""` for the root) holds `dir`, at any depth.
fn is_above(above: &str, dir: &str) -> bool {
    above.is_empty()
        || dir
            .strip_prefix(above)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A folder with files at `rels` (directories made as needed).
    fn folder_with(rels: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("a temp dir");
        for rel in rels {
            let path = dir.path().join(rel);
            fs::create_dir_all(path.parent().expect("a file has a parent")).expect("mkdir");
            fs::write(&path, b"x").expect("write");
        }
        dir
    }

    /// Every file's answer, asked in the given order, beside what a look at it says.
    fn answers(presence: &mut Presence<'_>, root: &Path, rels: &[&str]) -> Vec<(bool, bool)> {
        rels.iter()
            .map(|rel| {
                (
                    presence.is_gone(rel),
                    crate::watch::is_gone(&root.join(rel)),
                )
            })
            .collect()
    }

    /// In the ledger's byte order: a directory's files around those of its subdirectory.
    const TRACKED: &[&str] = &["a/b/c", "a/b/d/e", "a/b/d/f", "a/b/g", "a/h", "i", "j/k"];

    #[test]
    fn answers_as_a_look_at_each_file_does() {
        let folder = folder_with(TRACKED);
        let root = folder.path();
        fs::remove_file(root.join("a/b/d/f")).unwrap();
        fs::remove_file(root.join("i")).unwrap();
        // Something else in a file's place is not its deletion.
        fs::remove_file(root.join("a/b/g")).unwrap();
        fs::create_dir(root.join("a/b/g")).unwrap();
        // A directory gone takes its files with it.
        fs::remove_dir_all(root.join("j")).unwrap();
        let mut presence = Presence::new(root);
        let got = answers(&mut presence, root, TRACKED);
        let gone: Vec<bool> = got.iter().map(|(listed, _)| *listed).collect();
        assert_eq!(
            gone,
            [false, false, true, false, false, true, true],
            "{TRACKED:?}"
        );
        assert!(
            got.iter().all(|(listed, looked)| listed == looked),
            "{got:?}"
        );
    }

    #[test]
    fn each_directory_is_listed_once_though_its_subdirectory_comes_between_its_files() {
        let folder = folder_with(TRACKED);
        let mut presence = Presence::new(folder.path());
        for rel in TRACKED {
            assert!(!presence.is_gone(rel), "{rel}");
        }
        // a/b, a/b/d, a, the root, j: a/b once although a/b/d's files came between.
        assert_eq!(presence.listed, 5);
    }

    #[test]
    fn a_directory_that_cannot_be_listed_has_its_files_looked_at() {
        let folder = folder_with(&["a", "b/c"]);
        let root = folder.path();
        // "a" is a file: listing it as a directory fails with "not a directory", and a look
        // at "a/x" fails the same way, which is not a deletion.
        let mut presence = Presence::new(root);
        assert!(!presence.is_gone("a/x"));
        assert!(!crate::watch::is_gone(&root.join("a/x")));
        assert!(!presence.is_gone("b/c"));
        assert!(presence.is_gone("b/d"));
    }

    #[test]
    fn listings_past_the_bound_are_not_kept_and_their_files_are_looked_at() {
        let rels: Vec<String> = (0..10).map(|i| format!("big/f{i}")).collect();
        let mut all: Vec<&str> = rels.iter().map(String::as_str).collect();
        all.push("big/small/x");
        let folder = folder_with(&all);
        let root = folder.path();
        fs::remove_file(root.join("big/f3")).unwrap();
        let mut presence = Presence::with_max_names(root, 4);
        let got = answers(&mut presence, root, &all);
        assert!(
            got.iter().all(|(listed, looked)| listed == looked),
            "{got:?}"
        );
        assert!(got[3].0, "big/f3 was removed");
        assert_eq!(presence.names, 1, "only big/small's listing is kept");
        assert!(
            presence
                .kept
                .iter()
                .any(|(dir, listing)| dir == "big" && matches!(listing, Listing::Unlisted))
        );
    }

    #[test]
    fn a_directory_is_above_only_whole_components_below_it() {
        assert!(is_above("", "a"));
        assert!(is_above("a", "a/b"));
        assert!(is_above("a", "a/b/c"));
        assert!(!is_above("a", "ab"));
        assert!(!is_above("a/b", "a"));
        assert!(!is_above("a", "a"));
    }
}
