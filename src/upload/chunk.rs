//! Reading a file in chunks for upload, noticing when it changes or vanishes underneath.
//!
//! The reader holds the file open (so a rename or unlink does not swap the content under
//! us) and reads with positional reads on the blocking pool, one chunk at a time, into a
//! small pool of buffers that belongs to the reader: memory is bounded by the chunk size
//! times the pool's size, never by the file size or by how long the upload runs.
//!
//! Files are opened without updating their access time where the kernel allows it
//! (`O_NOATIME`, for files the daemon's user owns): reading a file to copy it is not a use
//! of it, and on a filesystem mounted `relatime` the first read of every new file would
//! otherwise dirty its inode, one more write to the disk per file uploaded.
//!
//! # The buffer pool
//!
//! A chunk is handed out as [`Bytes`] whose owner is a pooled buffer: when the last clone
//! is dropped (the HTTP body is written, the hash is done) the buffer goes back to its pool
//! instead of to the allocator. So one upload allocates its buffers once and reuses them,
//! instead of mapping, zeroing and faulting in a fresh 8 MiB region per chunk.
//! - At most [`POOL_BUFFERS`] buffers of a reader are out at once; a read that finds none
//!   free waits for one to come back (the chunk in flight is released as soon as the
//!   transport has written it).
//! - Should a buffer not come back within [`POOL_WAIT`] (a transport still holding a body it
//!   gave up on), the read proceeds with a one-off buffer that is freed when dropped: a
//!   slow connection costs memory for a moment, never a stuck upload.
//! - A buffer grows to the largest read asked of it and never shrinks; a short last chunk
//!   is a shorter view of the same buffer.
//! - A read lands at an address aligned to [`READ_ALIGN`], not where the allocator's block
//!   starts (16 bytes past a page for a chunk-sized block). The kernel copies a read out of
//!   its page cache several times slower into a destination that is not aligned to 32
//!   bytes on some CPUs: on an AMD EPYC, reading a cached GiB into 8 MiB buffers took 0.70
//!   s of system time at an offset of 16 bytes and 0.14–0.16 s at 0, 32, 64 or 4096, and
//!   the daemon's CPU per GiB sent to Redivis had 0.7 s of such copying beside 2.3 s of
//!   MD5.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::UploadError;
use crate::fingerprint::Fingerprint;

/// Buffers one reader lends out at once: the chunk being sent and the one read ahead.
pub const POOL_BUFFERS: usize = 2;

/// How long a read waits for a lent buffer to come back before using a one-off buffer.
pub const POOL_WAIT: Duration = Duration::from_secs(2);

/// The alignment of the first byte of every read (module doc): a cache line.
pub const READ_ALIGN: usize = 64;

/// Reusable read buffers, shared by a reader and the chunks it handed out.
#[derive(Clone)]
pub struct BufferPool {
    shared: Arc<PoolShared>,
}

struct PoolShared {
    slots: Mutex<Slots>,
    returned: tokio::sync::Notify,
    limit: usize,
    wait: Duration,
}

#[derive(Default)]
struct Slots {
    free: Vec<Vec<u8>>,
    lent: usize,
    /// Buffers this pool allocated for itself over its life (one-off buffers excluded).
    allocated: usize,
    /// One-off buffers handed out because none came back in time.
    one_off: usize,
}

/// A buffer taken from a pool (or a one-off one), returned to the pool when dropped.
struct Lent {
    buf: Vec<u8>,
    /// Where the read goes in `buf`: the first byte aligned to [`READ_ALIGN`].
    start: usize,
    /// Bytes from `start` that hold data.
    filled: usize,
    home: Option<Arc<PoolShared>>,
}

impl Lent {
    /// A buffer whose aligned window holds `len` bytes, lent for `home` (none: one-off).
    fn of(mut buf: Vec<u8>, len: usize, home: Option<Arc<PoolShared>>) -> Lent {
        let start = aligned_window(&mut buf, len);
        Lent {
            buf,
            start,
            filled: 0,
            home,
        }
    }

    /// The `len` bytes a read fills.
    fn window(&mut self, len: usize) -> &mut [u8] {
        &mut self.buf[self.start..self.start + len]
    }
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.filled]
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let Some(home) = self.home.take() else {
            return;
        };
        let buf = std::mem::take(&mut self.buf);
        let mut slots = home.slots.lock().expect("the pool lock is never poisoned");
        slots.lent -= 1;
        slots.free.push(buf);
        drop(slots);
        home.returned.notify_one();
    }
}

/// What a pool has done so far (for tests and diagnostics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub allocated: usize,
    pub lent: usize,
    pub one_off: usize,
}

impl BufferPool {
    /// A pool lending at most `limit` buffers at once, waiting at most `wait` for one.
    pub fn new(limit: usize, wait: Duration) -> BufferPool {
        BufferPool {
            shared: Arc::new(PoolShared {
                slots: Mutex::new(Slots::default()),
                returned: tokio::sync::Notify::new(),
                limit: limit.max(1),
                wait,
            }),
        }
    }

    pub fn stats(&self) -> PoolStats {
        let slots = self
            .shared
            .slots
            .lock()
            .expect("the pool lock is never poisoned");
        PoolStats {
            allocated: slots.allocated,
            lent: slots.lent,
            one_off: slots.one_off,
        }
    }

    /// A buffer of at least `len` bytes: a free one, a new one while fewer than the limit
    /// exist, else the first one returned (or a one-off one after the wait).
    async fn take(&self, len: usize) -> Lent {
        let shared = &self.shared;
        let deadline = tokio::time::Instant::now() + shared.wait;
        loop {
            // Registered before the lock is released, so a return in between is not missed.
            let returned = shared.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            let buf = {
                let mut slots = shared
                    .slots
                    .lock()
                    .expect("the pool lock is never poisoned");
                if let Some(buf) = slots.free.pop() {
                    slots.lent += 1;
                    Some(buf)
                } else if slots.lent < shared.limit {
                    slots.lent += 1;
                    slots.allocated += 1;
                    Some(Vec::new())
                } else {
                    None
                }
            };
            if let Some(buf) = buf {
                return Lent::of(buf, len, Some(Arc::clone(shared)));
            }
            if tokio::time::timeout_at(deadline, returned).await.is_err() {
                shared
                    .slots
                    .lock()
                    .expect("the pool lock is never poisoned")
                    .one_off += 1;
                tracing::debug!(
                    len,
                    "no chunk buffer came back in time; using a one-off one"
                );
                return Lent::of(Vec::new(), len, None);
            }
        }
    }
}

/// Makes `buf` long enough to hold `len` bytes from an address aligned to [`READ_ALIGN`],
/// and returns where they start. A new buffer is zeroed by the allocator (fresh pages for
/// chunk-sized ones); a reused one keeps its old bytes, which reads overwrite.
fn aligned_window(buf: &mut Vec<u8>, len: usize) -> usize {
    let needed = len + READ_ALIGN - 1;
    if buf.len() < needed {
        if buf.is_empty() {
            *buf = vec![0u8; needed];
        } else {
            buf.resize(needed, 0);
        }
    }
    // The offset depends on where the allocator put the block, which a resize may move.
    buf.as_ptr().addr().wrapping_neg() % READ_ALIGN
}

pub struct FileReader {
    file: Arc<File>,
    pub size: u64,
    /// The version the file was when opened, which every byte read must be of.
    expected: Fingerprint,
    pool: BufferPool,
}

impl FileReader {
    /// Opens `path` and checks that it still is the version `expected` describes.
    pub fn open(path: &Path, expected: &Fingerprint) -> Result<FileReader, UploadError> {
        let (file, size) = open_checked(path, expected)?;
        Ok(FileReader {
            file: Arc::new(file),
            size,
            expected: *expected,
            pool: BufferPool::new(POOL_BUFFERS, POOL_WAIT),
        })
    }

    /// Reads `len` bytes at `offset` (fewer only at end of file) into a pooled buffer, which
    /// goes back to the pool when the last clone of the returned bytes is dropped.
    pub async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, UploadError> {
        let mut lent = self.pool.take(len).await;
        let file = Arc::clone(&self.file);
        let read = tokio::task::spawn_blocking(move || {
            lent.filled = fill_at(&file, lent.window(len), offset)?;
            Ok::<_, std::io::Error>(lent)
        })
        .await
        .expect("file read task does not panic");
        let lent = read.map_err(|err| UploadError::Unreadable(format!("read failed: {err}")))?;
        if (lent.filled as u64) < (len as u64).min(self.size.saturating_sub(offset)) {
            // The file shrank while we held it open: it is being rewritten.
            return Err(UploadError::Changed);
        }
        Ok(Bytes::from_owner(lent))
    }

    /// Fails with [`UploadError::Changed`] when the open file is no longer the version it
    /// was opened as ([`still_version`]): asked once every read of a range is over, this
    /// says the bytes read are of that version. `path` names the file in an error.
    pub async fn check_unchanged(&self, path: &Path) -> Result<(), UploadError> {
        let file = Arc::clone(&self.file);
        let (path, expected) = (path.to_path_buf(), self.expected);
        tokio::task::spawn_blocking(move || still_version(&file, &path, &expected))
            .await
            .expect("a look at an open file does not panic")
    }

    /// The same reader lending buffers from `pool` instead of its own.
    pub fn with_pool(self, pool: BufferPool) -> FileReader {
        FileReader { pool, ..self }
    }

    /// The reader's buffer pool (what it allocated, what is out).
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }
}

/// Opens `path` for reading without changing its access time (module doc), and checks that
/// it is a regular file and still the version `expected` describes; returns it with its size.
fn open_checked(path: &Path, expected: &Fingerprint) -> Result<(File, u64), UploadError> {
    let file = open_folder_file(path).map_err(|err| open_error(path, err))?;
    let meta = stat_open(&file, path)?;
    if !meta.is_file() {
        return Err(UploadError::Unreadable(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    is_version(&meta, expected)?;
    Ok((file, meta.len()))
}

/// The open `file`'s metadata (`path` names it in the error).
fn stat_open(file: &File, path: &Path) -> Result<std::fs::Metadata, UploadError> {
    file.metadata()
        .map_err(|err| UploadError::Unreadable(format!("cannot stat {}: {err}", path.display())))
}

/// [`UploadError::Changed`] unless `meta` is of the version `expected` describes.
fn is_version(meta: &std::fs::Metadata, expected: &Fingerprint) -> Result<(), UploadError> {
    match Fingerprint::of(meta) == *expected {
        true => Ok(()),
        false => Err(UploadError::Changed),
    }
}

/// Opens `path` for reading as a file of the folder: never through a symlink
/// (`O_NOFOLLOW`: the folder's files are what is there, not what a link points to), and
/// without waiting (`O_NONBLOCK`: opening a FIFO would wait for a writer, holding the
/// worker, and a FIFO is refused after the open anyway; reads of a regular file ignore the
/// flag). `O_NOATIME` too where the kernel allows it: only the file's owner (or a process
/// with CAP_FOWNER) may ask, and anyone else is refused with EPERM, so then the file is
/// opened without it.
fn open_folder_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |flags| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | flags)
            .open(path)
    };
    #[cfg(target_os = "linux")]
    match open(libc::O_NOATIME) {
        Err(err) if err.raw_os_error() == Some(libc::EPERM) => {}
        opened => return opened,
    }
    open(0)
}

/// Appends the whole of the file at `path`, which must be the version `expected` describes
/// when opened and still be it once read ([`still_version`]), to `out`; on an error `out`
/// is left as it was. Blocking, and for small files: a caller on the blocking pool reads
/// many of them in one trip there (a KiFS batch), where a trip per file would cost more
/// CPU than the reads.
pub fn read_whole_into(
    path: &Path,
    expected: &Fingerprint,
    out: &mut Vec<u8>,
) -> Result<(), UploadError> {
    let (file, size) = open_checked(path, expected)?;
    let start = out.len();
    out.resize(start + size as usize, 0);
    let err = match fill_at(&file, &mut out[start..], 0) {
        Ok(filled) if filled == size as usize => match still_version(&file, path, expected) {
            Ok(()) => return Ok(()),
            Err(err) => err,
        },
        // The file shrank while we held it open: it is being rewritten.
        Ok(_) => UploadError::Changed,
        Err(err) => UploadError::Unreadable(format!("read failed: {err}")),
    };
    out.truncate(start);
    Err(err)
}

/// Whether the open `file` is still the version `expected` describes: asked once its
/// bytes are read, this says they are that version whole. A write that overlapped the
/// read stamps the file's times before it copies its bytes in, so it shows here. A look
/// on the descriptor, not on the path: the bytes read are the open file's, whatever the
/// path names by now (a file renamed over it is a new version, which the watcher offers).
fn still_version(file: &File, path: &Path, expected: &Fingerprint) -> Result<(), UploadError> {
    is_version(&stat_open(file, path)?, expected)
}

/// Reads `file` from `offset` into `buf` until `buf` is full or the file ends; returns how
/// many bytes it read.
fn fill_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

fn open_error(path: &Path, err: std::io::Error) -> UploadError {
    if err.raw_os_error() == Some(libc::ELOOP) {
        return UploadError::Unreadable(format!(
            "{} is not a regular file (a symbolic link)",
            path.display()
        ));
    }
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

    /// Sets the access time of `path` three days back, well before its modification time,
    /// so that a read on a `relatime` mount would move it.
    fn age_access_time(path: &Path) -> std::time::SystemTime {
        let old = std::time::SystemTime::now() - Duration::from_secs(3 * 86_400);
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_accessed(old))
            .unwrap();
        std::fs::metadata(path).unwrap().accessed().unwrap()
    }

    #[tokio::test]
    async fn reading_a_file_to_upload_it_leaves_its_access_time_alone() {
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join("probe");
        std::fs::write(&probe, b"read as anyone would").unwrap();
        let aged = age_access_time(&probe);
        std::fs::read(&probe).unwrap();
        if std::fs::metadata(&probe).unwrap().accessed().unwrap() == aged {
            eprintln!("skipping: reads do not update access times on this filesystem");
            return;
        }

        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let aged = age_access_time(&path);
        // Setting a time changes the change time, so the version is taken after.
        let fp = Fingerprint::read(&path).unwrap();
        let reader = FileReader::open(&path, &fp).unwrap();
        assert_eq!(&reader.read_at(0, 10).await.unwrap()[..], b"0123456789");
        drop(reader);
        let mut whole = Vec::new();
        read_whole_into(&path, &fp, &mut whole).unwrap();
        assert_eq!(whole, b"0123456789");
        assert_eq!(std::fs::metadata(&path).unwrap().accessed().unwrap(), aged);
    }

    /// A FIFO or a symlink where a file was is refused at once: the open neither waits for
    /// a FIFO's writer (which would hold the worker for good) nor follows the link.
    #[test]
    fn a_fifo_or_a_symlink_is_refused_without_waiting_or_following() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.csv");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0);
        let target = dir.path().join("target.csv");
        std::fs::write(&target, b"a,b\n").unwrap();
        let link = dir.path().join("link.csv");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for path in [fifo, link] {
            let fp = Fingerprint::read(&path).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let opening = path.clone();
            // On a thread of its own: an open that waits for a writer fails the test below
            // instead of hanging it.
            std::thread::spawn(move || {
                let _ = tx.send(FileReader::open(&opening, &fp).map(drop));
            });
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Err(UploadError::Unreadable(reason))) => {
                    assert!(reason.contains("is not a regular file"), "{reason}")
                }
                Ok(Err(other)) => panic!("{}: {other}", path.display()),
                Ok(Ok(())) => panic!("{} was opened", path.display()),
                Err(_) => panic!("opening {} waits", path.display()),
            }
        }
    }

    #[test]
    fn a_whole_read_appends_the_file_or_leaves_the_buffer_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let fp = Fingerprint::read(&path).unwrap();
        let mut out = b"head:".to_vec();
        read_whole_into(&path, &fp, &mut out).unwrap();
        assert_eq!(out, b"head:abc");
        std::fs::write(&path, b"abcdef").unwrap();
        let err = read_whole_into(&path, &fp, &mut out).unwrap_err();
        assert!(matches!(err, UploadError::Changed), "{err:?}");
        assert_eq!(out, b"head:abc");
        let err = read_whole_into(&dir.path().join("gone"), &fp, &mut out).unwrap_err();
        assert!(matches!(err, UploadError::Vanished(_)), "{err:?}");
    }

    /// A write while the file is open shows on its descriptor once the read is over, even
    /// one that only adds bytes beyond those the read takes: what was read is then not the
    /// version whole.
    #[test]
    fn a_file_written_while_open_is_no_longer_its_version() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let fp = Fingerprint::read(&path).unwrap();
        let (file, _) = open_checked(&path, &fp).unwrap();
        still_version(&file, &path, &fp).unwrap();
        let mut writer = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        writer.write_all(b"def").unwrap();
        let err = still_version(&file, &path, &fp).unwrap_err();
        assert!(matches!(err, UploadError::Changed), "{err:?}");
    }

    #[test]
    fn a_whole_read_that_comes_up_short_is_a_change_and_leaves_the_buffer_as_it_was() {
        // A sysfs attribute says it holds a page and reads a few bytes: what a file that
        // shrinks between the open and the read looks like.
        let short = Path::new("/sys/devices/system/cpu/online");
        let Ok(fp) = Fingerprint::read(short) else {
            eprintln!("skipping: no {}", short.display());
            return;
        };
        assert!(fp.size > std::fs::read(short).unwrap().len() as u64);
        let mut out = b"head:".to_vec();
        let err = read_whole_into(short, &fp, &mut out).unwrap_err();
        assert!(matches!(err, UploadError::Changed), "{err:?}");
        assert_eq!(out, b"head:");
    }

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

    fn file_of(len: usize) -> (tempfile::TempDir, FileReader, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let fp = Fingerprint::read(&path).unwrap();
        let reader = FileReader::open(&path, &fp).unwrap();
        (dir, reader, data)
    }

    #[tokio::test]
    async fn chunk_buffers_are_reused_instead_of_allocated_per_read() {
        let (_dir, reader, data) = file_of(10_000);
        for round in 0..3 {
            for at in (0..10_000).step_by(1000) {
                let chunk = reader.read_at(at as u64, 1000).await.unwrap();
                assert_eq!(
                    &chunk[..],
                    &data[at..at + 1000],
                    "round {round}, offset {at}"
                );
            }
        }
        let stats = reader.pool().stats();
        assert_eq!(stats.allocated, 1, "{stats:?}");
        assert_eq!(stats.lent, 0, "{stats:?}");
        assert_eq!(stats.one_off, 0, "{stats:?}");
    }

    #[tokio::test]
    async fn a_short_last_chunk_is_exactly_the_rest_of_the_file_in_a_reused_buffer() {
        let (_dir, reader, data) = file_of(2500);
        let full = reader.read_at(0, 1000).await.unwrap();
        assert_eq!(&full[..], &data[..1000]);
        drop(full);
        let last = reader.read_at(2000, 1000).await.unwrap();
        assert_eq!(last.len(), 500);
        assert_eq!(&last[..], &data[2000..]);
        // The same buffer, and no bytes of the earlier chunk past the end of this one.
        assert_eq!(reader.pool().stats().allocated, 1);
        let cloned = last.clone();
        drop(last);
        assert_eq!(&cloned[..], &data[2000..]);
    }

    #[tokio::test]
    async fn every_read_starts_at_an_aligned_address_whatever_the_buffer() {
        let (_dir, reader, data) = file_of(3 << 20);
        // Sizes that make the allocator place and move the block differently: small,
        // chunk-sized (a mapping of its own), and a reused buffer grown in place or moved.
        for (at, len) in [(0, 100), (5, 3 << 20), (7, 1000), (0, (3 << 20) - 1)] {
            let chunk = reader.read_at(at as u64, len).await.unwrap();
            assert_eq!(
                chunk.as_ptr().addr() % READ_ALIGN,
                0,
                "offset {at}, {len} bytes"
            );
            assert_eq!(&chunk[..], &data[at..(at + len).min(data.len())]);
        }
        let one_off = reader.with_pool(BufferPool::new(1, Duration::ZERO));
        let _held = one_off.read_at(0, 10).await.unwrap();
        let late = one_off.read_at(1, 10).await.unwrap();
        assert_eq!(one_off.pool().stats().one_off, 1);
        assert_eq!(late.as_ptr().addr() % READ_ALIGN, 0, "a one-off buffer");
    }

    #[tokio::test]
    async fn no_more_than_the_pool_size_is_lent_and_a_read_waits_for_a_returned_buffer() {
        let (_dir, reader, data) = file_of(4000);
        let reader = reader.with_pool(BufferPool::new(2, Duration::from_secs(30)));
        let first = reader.read_at(0, 1000).await.unwrap();
        let second = reader.read_at(1000, 1000).await.unwrap();
        assert_eq!(reader.pool().stats().lent, 2);

        let third = reader.read_at(2000, 1000);
        tokio::pin!(third);
        // Still waiting: every buffer is out.
        let waited = tokio::time::timeout(Duration::from_millis(200), third.as_mut()).await;
        assert!(waited.is_err());
        drop(first);
        let third = third.await.unwrap();
        assert_eq!(&third[..], &data[2000..3000]);
        assert_eq!(&second[..], &data[1000..2000]);
        let stats = reader.pool().stats();
        assert_eq!((stats.allocated, stats.lent, stats.one_off), (2, 2, 0));
    }

    #[tokio::test]
    async fn a_buffer_that_never_comes_back_costs_a_one_off_buffer_not_a_stuck_read() {
        let (_dir, reader, data) = file_of(3000);
        let reader = reader.with_pool(BufferPool::new(2, Duration::from_millis(50)));
        let _held = [
            reader.read_at(0, 1000).await.unwrap(),
            reader.read_at(1000, 1000).await.unwrap(),
        ];
        let late = reader.read_at(2000, 1000).await.unwrap();
        assert_eq!(&late[..], &data[2000..]);
        let stats = reader.pool().stats();
        assert_eq!((stats.allocated, stats.one_off), (2, 1));
        drop(late);
        // The one-off buffer is freed, not kept: the pool still lends its two.
        assert_eq!(reader.pool().stats().lent, 2);
    }

    #[test]
    fn a_missing_file_is_reported_as_vanished() {
        let dir = tempfile::tempdir().unwrap();
        let fp = Fingerprint {
            size: 1,
            mtime_ns: 0,
            inode: 0,
            ctime_ns: Some(0),
        };
        let err = FileReader::open(&dir.path().join("gone"), &fp)
            .err()
            .unwrap();
        assert!(matches!(err, UploadError::Vanished(_)));
    }
}
