//! The two renames the standard library lacks: one that never replaces what the target
//! name holds, and one that swaps two names in one step (Linux `renameat2`).

use std::path::Path;

/// Renames `from` to `to`, failing with `AlreadyExists` when `to` exists.
pub fn without_replacing(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    return renameat2(from, to, libc::RENAME_NOREPLACE);
    // Without renameat2: a look before the rename, which a file appearing in between can
    // still lose to.
    #[cfg(not(target_os = "linux"))]
    {
        if std::fs::symlink_metadata(to).is_ok() {
            return Err(std::io::ErrorKind::AlreadyExists.into());
        }
        std::fs::rename(from, to)
    }
}

/// Swaps what the names `a` and `b` hold, atomically.
pub fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    return renameat2(a, b, libc::RENAME_EXCHANGE);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "names can be exchanged atomically only on Linux",
        ))
    }
}

#[cfg(target_os = "linux")]
fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let from = CString::new(from.as_os_str().as_bytes())?;
    let to = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
