//! A spool folder's settings: `after_upload` (what happens to a local file once the remote
//! confirmed it) and `archive_dir` (where `"move"` puts it), with their checks.
//!
//! A spool folder never propagates deletions: the files it removes itself would otherwise
//! read as files deleted by someone, and their remote copies would be deleted in turn. So
//! `after_upload = "delete"` or `"move"` together with `on_delete = "delete"` is refused.

use std::path::PathBuf;

use super::deletes::OnDelete;
use super::paths;
use super::raw::RawFolder;
use super::validate::Checker;

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
