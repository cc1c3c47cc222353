//! Reading a file in chunks for upload, noticing when it changes or vanishes underneath.
//!
//! The reader holds the file open (so a rename or unlink does not swap the content under
//! us) and reads with positional reads on the blocking pool, one chunk at a time: memory
//! is bounded by the chunk size, never by the file size.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::UploadError;
use crate::fingerprint::Fingerprint;

pub struct FileReader {
    file: Arc<File>,
    pub size: u64,
}

/// Chunk buffers (1.5 MiB KiFS reads, 8 MiB Redivis chunks) are allocated and freed on
/// many threads. glibc would serve them from per-thread arenas and keep the freed ones, so
/// resident memory grows with the number of blocking-pool threads that ever read a chunk
/// (one 4 GiB upload measured 1.6× the resident memory of a 1 GiB one). A fixed mmap
/// threshold of 1 MiB makes every buffer this size its own mapping, returned to the system
/// when freed; smaller allocations are untouched.
fn return_chunk_buffers_to_the_system() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator tuning; it is called once, before any
        // chunk buffer exists, and a failure (0) just leaves the default behaviour.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        }
    });
}

impl FileReader {
    /// Opens `path` and checks that it still is the version `expected` describes.
    pub fn open(path: &Path, expected: &Fingerprint) -> Result<FileReader, UploadError> {
        return_chunk_buffers_to_the_system();
        let file = File::open(path).map_err(|err| open_error(path, err))?;
        let meta = file.metadata().map_err(|err| {
            UploadError::Unreadable(format!("cannot stat {}: {err}", path.display()))
        })?;
        if !meta.is_file() {
            return Err(UploadError::Unreadable(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        if Fingerprint::of(&meta) != *expected {
            return Err(UploadError::Changed);
        }
        Ok(FileReader {
            file: Arc::new(file),
            size: meta.len(),
        })
    }

    /// Reads `len` bytes at `offset` (fewer only at end of file).
    pub async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, UploadError> {
        let file = Arc::clone(&self.file);
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            let mut filled = 0;
            while filled < len {
                match file.read_at(&mut buf[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(err) => return Err(err),
                }
            }
            buf.truncate(filled);
            Ok(buf)
        })
        .await
        .expect("file read task does not panic");
        let buf = read.map_err(|err| UploadError::Unreadable(format!("read failed: {err}")))?;
        if (buf.len() as u64) < (len as u64).min(self.size.saturating_sub(offset)) {
            // The file shrank while we held it open: it is being rewritten.
            return Err(UploadError::Changed);
        }
        Ok(Bytes::from(buf))
    }
}

fn open_error(path: &Path, err: std::io::Error) -> UploadError {
    match err.kind() {
        std::io::ErrorKind::NotFound => UploadError::Vanished(path.display().to_string()),
        std::io::ErrorKind::PermissionDenied => {
            UploadError::Unreadable(format!("cannot read {}: permission denied", path.display()))
        }
        _ => UploadError::Unreadable(format!("cannot open {}: {err}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_chunks_and_notices_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, b"0123456789").unwrap();
        let fp = Fingerprint::read(&path).unwrap();
        let reader = FileReader::open(&path, &fp).unwrap();
        assert_eq!(&reader.read_at(0, 4).await.unwrap()[..], b"0123");
        assert_eq!(&reader.read_at(8, 4).await.unwrap()[..], b"89");

        std::fs::write(&path, b"01234").unwrap();
        assert!(matches!(
            reader.read_at(4, 4).await,
            Err(UploadError::Changed)
        ));
        assert!(matches!(
            FileReader::open(&path, &fp),
            Err(UploadError::Changed)
        ));
    }

    #[test]
    fn a_missing_file_is_reported_as_vanished() {
        let dir = tempfile::tempdir().unwrap();
        let fp = Fingerprint {
            size: 1,
            mtime_ns: 0,
            inode: 0,
        };
        let err = FileReader::open(&dir.path().join("gone"), &fp)
            .err()
            .unwrap();
        assert!(matches!(err, UploadError::Vanished(_)));
    }
}
