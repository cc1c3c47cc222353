//! A spool folder's settings: `after_upload` (what happens to a local file once the remote
//! confirmed it) and `archive_dir` (where `"move"` puts it), with their checks.
//!
//! A spool folder never propagates deletions: the files it removes itself would otherwise
//! read as files deleted by someone, and their remote copies would be deleted in turn. So
//! `after_upload = "delete"` or `"move"` together with `on_delete = "delete"` is refused.
//!
//! A move is a rename, which cannot cross file systems: an `archive_dir` on another file
//! system than its folder would leave every uploaded file in the folder. `check` refuses it
//! ([`archive_on_another_file_system`]); the daemon, which takes folders that do not exist
//! yet, warns when it starts watching the folder (the files stay, and are uploaded).

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::LoadOptions;
use super::checker::Checker;
use super::deletes::OnDelete;
use super::paths;
use super::raw::RawFolder;

/// What happens to a local file once the remote confirmed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AfterUpload {
    /// The file stays (the default).
    #[default]
    Keep,
    /// The file is deleted.
    Delete,
    /// The file is moved into this directory, under its path relative to the folder.
    Move(PathBuf),
}

/// Reads `after_upload` and `archive_dir` of folder `i`, whose `on_delete` is `on_delete`.
pub(super) fn after_upload(
    ck: &mut Checker<'_>,
    f: &RawFolder,
    i: usize,
    on_delete: OnDelete,
) -> AfterUpload {
    let key = |name: &str| format!("folder[{i}].{name}");
    let archive = f
        .archive_dir
        .as_ref()
        .map(|dir| (dir.span(), paths::resolve(&ck.base, dir.get_ref())));
    let Some(value) = &f.after_upload else {
        if let Some((span, _)) = &archive {
            ck.error(
                span,
                &key("archive_dir"),
                "only applies with after_upload = \"move\" (remove the key)",
            );
        }
        return AfterUpload::Keep;
    };
    let action = match (value.get_ref().as_str(), archive) {
        ("keep", None) => AfterUpload::Keep,
        ("delete", None) => AfterUpload::Delete,
        ("move", Some((_, dir))) => AfterUpload::Move(dir),
        ("move", None) => {
            ck.error(
                &value.span(),
                &key("after_upload"),
                "\"move\" needs archive_dir = \"/path/to/archive\" (where uploaded files go)",
            );
            return AfterUpload::Keep;
        }
        ("keep" | "delete", Some((span, _))) => {
            ck.error(
                &span,
                &key("archive_dir"),
                "only applies with after_upload = \"move\" (remove the key)",
            );
            return AfterUpload::Keep;
        }
        (other, _) => {
            ck.error(
                &value.span(),
                &key("after_upload"),
                format!("\"{other}\" is not a choice (expected \"keep\", \"delete\" or \"move\")"),
            );
            return AfterUpload::Keep;
        }
    };
    if action != AfterUpload::Keep && on_delete == OnDelete::Delete {
        ck.error(
            &value.span(),
            &key("after_upload"),
            "a spool folder cannot also have on_delete = \"delete\": the files it removes after \
             their upload would have their remote copies deleted (remove one of the two)",
        );
    }
    action
}

/// Refuses `archive_dir` of folder `i` (at `folder`) when it lies on another file system
/// than the folder. Only when folders are looked at ([`LoadOptions::check_folders_exist`]).
pub(super) fn check_archive_file_system(
    ck: &mut Checker<'_>,
    f: &RawFolder,
    i: usize,
    folder: &Path,
    after_upload: &AfterUpload,
    options: &LoadOptions,
) {
    let (AfterUpload::Move(archive), Some(given)) = (after_upload, &f.archive_dir) else {
        return;
    };
    if !options.check_folders_exist {
        return;
    }
    if let Some(problem) = archive_on_another_file_system(folder, archive) {
        ck.error(&given.span(), &format!("folder[{i}].archive_dir"), problem);
    }
}

/// Why the files of the folder at `folder` cannot be moved into `archive`: the two lie on
/// different file systems (`st_dev`; for an archive not created yet, its nearest existing
/// ancestor's, where it would be created). `None` when they share one, or when either
/// cannot be looked at: a missing folder is reported on its own.
pub fn archive_on_another_file_system(folder: &Path, archive: &Path) -> Option<String> {
    let folder_device = std::fs::metadata(folder).ok()?.dev();
    let (existing, meta) = nearest_existing(archive)?;
    if meta.dev() == folder_device {
        return None;
    }
    let archive_at = if existing == archive {
        format!("\"{}\"", archive.display())
    } else {
        format!(
            "\"{}\" (to be created in \"{}\")",
            archive.display(),
            existing.display()
        )
    };
    Some(format!(
        "{archive_at} lies on another file system than the folder \"{}\": files are moved \
         there by a rename, which cannot cross file systems, so every uploaded file would \
         stay in the folder (expected an archive_dir on the folder's file system, or \
         after_upload = \"delete\" or \"keep\")",
        folder.display()
    ))
}

/// `path` itself or its nearest ancestor that exists, with its metadata: where a missing
/// directory would be created. `None` when one cannot be looked at.
pub fn nearest_existing(path: &Path) -> Option<(&Path, Metadata)> {
    let mut existing = path;
    loop {
        match std::fs::metadata(existing) {
            Ok(meta) => return Some((existing, meta)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                existing = existing.parent()?;
            }
            Err(_) => return None,
        }
    }
}

/// A new directory on another file system than `than`, for the tests of moves that cannot
/// cross one; `None` (with the reason printed) when no candidate lies on another.
#[cfg(test)]
pub(crate) fn dir_on_another_file_system(than: &Path) -> Option<tempfile::TempDir> {
    let device = std::fs::metadata(than).expect("the path exists").dev();
    let candidates = [
        PathBuf::from("/dev/shm"),
        std::env::temp_dir(),
        PathBuf::from("/var/tmp"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
    ];
    let found = candidates
        .iter()
        .filter(|dir| std::fs::metadata(dir).is_ok_and(|meta| meta.dev() != device))
        .find_map(|dir| tempfile::tempdir_in(dir).ok());
    if found.is_none() {
        eprintln!(
            "skipped: none of {candidates:?} is writable on another file system than {}",
            than.display()
        );
    }
    found
}
