//! Whether a folder lives on a file system that other machines write to: one where a file
//! event tells only of changes made through this machine.
//!
//! inotify reports what this kernel does to a file. On an NFS or SMB share, a cluster file
//! system or a FUSE mount (sshfs, s3fs, virtiofs, a bind of another directory), a file
//! written by another machine, or beneath the mount, raises no event here. Such a folder's
//! new files would wait for the periodic rescan (`rescan_interval`, ten minutes by
//! default), or for ever with rescans turned off; so the folder's watcher also rescans it
//! as often as it rescans a directory it cannot watch (module `folder`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The `statfs` magic numbers (`linux/magic.h` and the file systems' own sources) of file
/// systems written to from elsewhere, with the name a log line gives them.
const SHARED: &[(u32, &str)] = &[
    (0x0000_6969, "nfs"),
    (0x0000_517b, "smb"),
    (0xff53_4d42, "cifs"),
    (0xfe53_4d42, "smb2"),
    (0x6573_5546, "fuse"),
    (0x00c3_6400, "ceph"),
    (0x0102_1997, "9p"),
    (0x5346_414f, "afs"),
    (0x6b41_4653, "afs"),
    (0x7375_7245, "coda"),
    (0x0000_564c, "ncp"),
    (0x7461_636f, "ocfs2"),
    (0x0116_1970, "gfs2"),
    (0x0bd0_0bd0, "lustre"),
    (0x4750_4653, "gpfs"),
];

/// The name of the shared file system `path` is on, or `None` when it is local (or cannot
/// be asked: the folder is then watched as before).
pub fn shared_kind(path: &Path) -> Option<&'static str> {
    let magic = fs_magic(path)?;
    SHARED
        .iter()
        .find(|(known, _)| *known == magic)
        .map(|(_, name)| *name)
}

/// `statfs(2)`'s `f_type`: a magic number that fits 32 bits on every architecture, though
/// its C type is wider on some.
fn fs_magic(path: &Path) -> Option<u32> {
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `stat` a buffer of the struct statfs
    // fills; it is read only after the call succeeded.
    let stat = unsafe {
        if libc::statfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    #[allow(clippy::unnecessary_cast)]
    Some(stat.f_type as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_dir_and_a_missing_path_are_not_shared() {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        assert_eq!(shared_kind(dir.path()), None);
        assert_eq!(shared_kind(&dir.path().join("missing")), None);
    }
}
