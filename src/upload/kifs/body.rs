//! `/upload/files` request bodies streamed from the files they carry, so that memory stays
//! at a few chunks per request whatever the file, part or batch size.
//!
//! The body is the encoded request frame ([`UploadFrame`]) with each `file_data` element
//! read from its file in [`STREAM_CHUNK`]-byte positional reads on the blocking pool; the
//! next chunk is read while the current one is sent (`buffered(2)`). In JSON mode each chunk
//! is base64-encoded on its own, which joins into one valid text because the chunk size is a
//! multiple of 3.
//!
//! Small files are read together: a run of whole files (with the frame pieces between
//! them) that fits in [`SMALL_RUN`] bytes is one read on the blocking pool, not one per
//! file. A trip to the blocking pool cost about 20 µs of CPU on the development VM, five
//! times an open and read of a 4 KiB file, and a batch carries thousands of such files.
//!
//! A file that cannot be read as the version being uploaded (changed, vanished, unreadable)
//! ends the body with an I/O error, which aborts the request; the precise reason is kept in
//! [`StreamedRequest::failure`] so the caller reports it rather than a transport error.
//! Each element is checked once all its bytes are read and before the last of them goes
//! out: the open file must still be the version it was opened as (a write that overlapped
//! a read shows there), so a body that ends well carried each element's version whole
//! ([`StreamedRequest::read_and_checked`]), and a torn one ends before the server can
//! store it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use base64::prelude::*;
use bytes::Bytes;
use futures::StreamExt;

use super::wire::{StringMap, UploadFrame};
use crate::config::KifsEncoding;
use crate::fingerprint::Fingerprint;
use crate::upload::UploadError;
use crate::upload::chunk::{FileReader, read_whole_into};

/// Bytes per read: 1.5 MiB, a multiple of 3 (see the module doc).
pub const STREAM_CHUNK: usize = 3 << 19;

/// The most bytes one read of small files gathers, as sent (encoded elements and the
/// pieces between them): half a MiB, so that the next run reuses the freed pages of a
/// run's buffer. (Chosen under glibc's heap, which at 1.5 MiB mapped a fresh region for
/// every run, so the kernel zeroed and faulted in one page per 4 KiB file, then unmapped
/// it. jemalloc, the allocator since, reuses freed pages of either size.)
pub const SMALL_RUN: u64 = 512 << 10;

/// Where one `file_data` element's bytes come from: `len` bytes at `offset` of a file.
pub struct Source {
    path: PathBuf,
    fingerprint: Fingerprint,
    offset: u64,
    len: u64,
    /// Opened on first read, so a batch of many files does not hold them all open.
    reader: Mutex<Option<Arc<FileReader>>>,
    /// Set once all its bytes were read and the open file was still its version after
    /// the last read ([`StreamedRequest::read_and_checked`]).
    checked: AtomicBool,
}

impl Source {
    /// A range of a file already open.
    pub fn opened(
        reader: Arc<FileReader>,
        path: PathBuf,
        fingerprint: Fingerprint,
        offset: u64,
        len: u64,
    ) -> Source {
        Source {
            path,
            fingerprint,
            offset,
            len,
            reader: Mutex::new(Some(reader)),
            checked: AtomicBool::new(false),
        }
    }

    /// A whole file, opened (and checked against `fingerprint`) when its bytes are needed.
    pub fn lazy(path: PathBuf, fingerprint: Fingerprint) -> Source {
        Source {
            path,
            fingerprint,
            offset: 0,
            len: fingerprint.size,
            reader: Mutex::new(None),
            checked: AtomicBool::new(false),
        }
    }

    /// A whole file that no read has opened yet: it can be read in one go with others.
    fn is_whole_unopened(&self) -> bool {
        self.offset == 0
            && self.len == self.fingerprint.size
            && self
                .reader
                .lock()
                .expect("the reader slot is never poisoned")
                .is_none()
    }

    fn reader(&self) -> Result<Arc<FileReader>, UploadError> {
        let mut slot = self
            .reader
            .lock()
            .expect("the reader slot is never poisoned");
        if let Some(reader) = slot.as_ref() {
            return Ok(Arc::clone(reader));
        }
        let reader = Arc::new(FileReader::open(&self.path, &self.fingerprint)?);
        *slot = Some(Arc::clone(&reader));
        Ok(reader)
    }

    /// Closes the file once its last chunk is read (a batch holds one file open at a time).
    fn release(&self) {
        *self
            .reader
            .lock()
            .expect("the reader slot is never poisoned") = None;
    }
}

/// One `/upload/files` request with streamed elements; [`StreamedRequest::body`] can be
/// called again for a retry.
pub struct StreamedRequest {
    enc: KifsEncoding,
    frame: UploadFrame,
    sources: Arc<Vec<Source>>,
    lengths: Vec<u64>,
    failure: Arc<Mutex<Option<(usize, UploadError)>>>,
}

impl StreamedRequest {
    pub fn new(
        enc: KifsEncoding,
        file_names: &[String],
        sources: Vec<Source>,
        options: &StringMap,
    ) -> StreamedRequest {
        let lengths: Vec<u64> = sources.iter().map(|s| s.len).collect();
        StreamedRequest {
            enc,
            frame: UploadFrame::new(enc, file_names, &lengths, options),
            sources: Arc::new(sources),
            lengths,
            failure: Arc::new(Mutex::new(None)),
        }
    }

    pub fn len(&self) -> u64 {
        self.frame.body_len(self.enc, &self.lengths)
    }

    /// Why the last body ended early: the element's index and the local reason.
    pub fn failure(&self) -> Option<(usize, UploadError)> {
        self.failure
            .lock()
            .expect("the failure slot is never poisoned")
            .take()
    }

    /// Whether all the bytes of the element at `position` were read and its file was still
    /// the version being uploaded after the last read (module doc): a body that went out
    /// carried that version, so no look at the file after the answer is needed to say what
    /// was uploaded. False for an empty element (nothing is read) and before a body read
    /// the element.
    pub fn read_and_checked(&self, position: usize) -> bool {
        self.sources
            .get(position)
            .is_some_and(|source| source.checked.load(Ordering::Relaxed))
    }

    /// A fresh body: the frame pieces with the elements read from their files.
    ///
    /// Reads run two at a time (`buffered`), which hands their bytes on in order; the
    /// check of an element read in chunks comes after that, when its last chunk is handed
    /// on, so that every earlier read of it is over (two may be under way at once).
    pub fn body(&self) -> reqwest::Body {
        let (sources, failure) = (Arc::clone(&self.sources), Arc::clone(&self.failure));
        let enc = self.enc;
        let read = move |item| {
            let (sources, failure) = (Arc::clone(&sources), Arc::clone(&failure));
            async move {
                let read = match item {
                    Item::Piece(piece) => Ok((piece, None)),
                    Item::Read {
                        source,
                        at,
                        len,
                        last,
                    } => read_chunk(&sources, source, at, len, last, enc).await,
                    Item::SmallFiles { first, between } => {
                        read_small_files(sources, first, between, enc)
                            .await
                            .map(|bytes| (bytes, None))
                    }
                };
                read.map_err(|(index, err)| fail(&failure, index, err))
            }
        };
        let (sources, failure) = (Arc::clone(&self.sources), Arc::clone(&self.failure));
        let check = move |read: std::io::Result<(Bytes, Option<LastRead>)>| {
            let (sources, failure) = (Arc::clone(&sources), Arc::clone(&failure));
            async move {
                let (bytes, last) = read?;
                if let Some(LastRead { index, reader }) = last {
                    let source = &sources[index];
                    match reader.check_unchanged(&source.path).await {
                        Ok(()) => source.checked.store(true, Ordering::Relaxed),
                        Err(err) => return Err(fail(&failure, index, err)),
                    }
                }
                Ok(bytes)
            }
        };
        let stream = futures::stream::iter(self.items())
            .map(read)
            .buffered(2)
            .then(check);
        reqwest::Body::wrap_stream(stream)
    }

    /// The body's parts in order: each frame piece, then its element's bytes, as chunked
    /// reads of one file or, for a run of small whole files, one read of them all.
    fn items(&self) -> Vec<Item> {
        let pieces = &self.frame.pieces;
        let mut items = Vec::new();
        let mut index = 0;
        while index < pieces.len() {
            items.push(Item::Piece(pieces[index].clone()));
            let Some(source) = self.sources.get(index) else {
                index += 1;
                continue;
            };
            let run = self.small_run(index);
            // An empty file alone needs no read at all.
            if run > 1 || (run == 1 && source.len > 0) {
                let between = pieces[index + 1..index + run].to_vec();
                items.push(Item::SmallFiles {
                    first: index,
                    between,
                });
                index += run;
                continue;
            }
            let mut at = 0;
            while at < source.len {
                let len = (source.len - at).min(STREAM_CHUNK as u64);
                items.push(Item::Read {
                    source: index,
                    at,
                    len: len as usize,
                    last: at + len == source.len,
                });
                at += len;
            }
            index += 1;
        }
        items
    }

    /// How many sources from `first` on are whole files not yet opened whose bytes as
    /// sent, with the frame pieces between them, fit in [`SMALL_RUN`] (0: `first` is not
    /// one).
    fn small_run(&self, first: usize) -> usize {
        let mut bytes = 0u64;
        let mut run = 0;
        for (index, source) in self.sources.iter().enumerate().skip(first) {
            if !source.is_whole_unopened() {
                break;
            }
            let piece = if index > first {
                self.frame.pieces[index].len() as u64
            } else {
                0
            };
            bytes += piece + UploadFrame::element_len(self.enc, source.len);
            if bytes > SMALL_RUN {
                break;
            }
            run += 1;
        }
        run
    }
}

/// One part of a body (see [`StreamedRequest::items`]).
enum Item {
    Piece(Bytes),
    /// `len` bytes at `at` of the element `source`; `last` closes its file.
    Read {
        source: usize,
        at: u64,
        len: usize,
        last: bool,
    },
    /// The whole files `first..first + between.len() + 1`, with the frame pieces
    /// `between` them, read in one trip to the blocking pool (module doc).
    SmallFiles {
        first: usize,
        between: Vec<Bytes>,
    },
}

/// The last read of an element read in chunks: its index, and its reader, which holds the
/// file open for the check that follows ([`StreamedRequest::body`]).
struct LastRead {
    index: usize,
    reader: Arc<FileReader>,
}

/// The bytes of one [`Item::Read`], encoded, and for its element's last read what the check
/// after it needs; an error names the element it is about.
async fn read_chunk(
    sources: &[Source],
    index: usize,
    at: u64,
    len: usize,
    last: bool,
    enc: KifsEncoding,
) -> Result<(Bytes, Option<LastRead>), (usize, UploadError)> {
    let source = &sources[index];
    let reader = source.reader().map_err(|err| (index, err))?;
    let read = reader.read_at(source.offset + at, len).await;
    let last = match last {
        true => {
            source.release();
            Some(LastRead { index, reader })
        }
        false => None,
    };
    let data = match read {
        Ok(data) if data.len() == len => data,
        // The file shrank under us: it is being rewritten.
        Ok(_) => return Err((index, UploadError::Changed)),
        Err(err) => return Err((index, err)),
    };
    let bytes = match enc {
        KifsEncoding::Binary => data,
        KifsEncoding::Json => {
            tokio::task::spawn_blocking(move || Bytes::from(BASE64_STANDARD.encode(&data)))
                .await
                .expect("base64 encoding does not panic")
        }
    };
    Ok((bytes, last))
}

/// The bytes of one [`Item::SmallFiles`]: each file read whole and encoded, the pieces
/// between them in place.
async fn read_small_files(
    sources: Arc<Vec<Source>>,
    first: usize,
    between: Vec<Bytes>,
    enc: KifsEncoding,
) -> Result<Bytes, (usize, UploadError)> {
    tokio::task::spawn_blocking(move || {
        let files = &sources[first..=first + between.len()];
        let elements: u64 = files
            .iter()
            .map(|s| UploadFrame::element_len(enc, s.len))
            .sum();
        let pieces: usize = between.iter().map(Bytes::len).sum();
        let mut out = Vec::with_capacity(elements as usize + pieces);
        let mut raw = Vec::new();
        for (offset, source) in files.iter().enumerate() {
            if offset > 0 {
                out.extend_from_slice(&between[offset - 1]);
            }
            if source.len == 0 {
                continue;
            }
            let read = |into: &mut Vec<u8>| {
                read_whole_into(&source.path, &source.fingerprint, into)
                    .map_err(|err| (first + offset, err))
            };
            match enc {
                KifsEncoding::Binary => read(&mut out)?,
                KifsEncoding::Json => {
                    raw.clear();
                    read(&mut raw)?;
                    let start = out.len();
                    out.resize(
                        start + UploadFrame::element_len(enc, source.len) as usize,
                        0,
                    );
                    BASE64_STANDARD
                        .encode_slice(&raw, &mut out[start..])
                        .expect("the room made is the encoded length");
                }
            }
            source.checked.store(true, Ordering::Relaxed);
        }
        Ok(Bytes::from(out))
    })
    .await
    .expect("reading small files does not panic")
}

/// Keeps the first local failure and turns it into the I/O error that aborts the body.
fn fail(
    slot: &Mutex<Option<(usize, UploadError)>>,
    index: usize,
    err: UploadError,
) -> std::io::Error {
    let message = err.to_string();
    let mut slot = slot.lock().expect("the failure slot is never poisoned");
    if slot.is_none() {
        *slot = Some((index, err));
    }
    std::io::Error::other(message)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use http_body_util::BodyExt;

    use super::*;

    /// The body's frames as sent, or the error that ended it.
    async fn frames_of(body: reqwest::Body) -> Result<Vec<Bytes>, String> {
        let mut body = body;
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| err.to_string())?;
            if let Ok(data) = frame.into_data() {
                frames.push(data);
            }
        }
        Ok(frames)
    }

    /// Files `f0`, `f1`, ... of the given sizes in `dir`, as lazy sources, with their bytes.
    fn files(dir: &Path, sizes: &[usize]) -> (Vec<String>, Vec<Source>, Vec<Vec<u8>>) {
        let mut names = Vec::new();
        let mut sources = Vec::new();
        let mut contents = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let path = dir.join(format!("f{i}"));
            let data: Vec<u8> = (0..size).map(|b| (b * 7 + i) as u8).collect();
            std::fs::write(&path, &data).unwrap();
            let fingerprint = Fingerprint::read(&path).unwrap();
            names.push(format!("dir/f{i}"));
            sources.push(Source::lazy(path, fingerprint));
            contents.push(data);
        }
        (names, sources, contents)
    }

    #[tokio::test]
    async fn small_whole_files_go_in_few_reads_and_the_body_is_byte_for_byte_the_frame() {
        // 300 small files (one empty), a file larger than a read, then 300 more.
        let mut sizes: Vec<usize> = (0..300).map(|i| 100 + i * 13).collect();
        sizes[7] = 0;
        sizes.push(STREAM_CHUNK + 1000);
        sizes.extend((0..300).map(|i| 4096 + i));
        for enc in [KifsEncoding::Binary, KifsEncoding::Json] {
            let dir = tempfile::tempdir().unwrap();
            let (names, sources, contents) = files(dir.path(), &sizes);
            let lengths: Vec<u64> = sizes.iter().map(|&s| s as u64).collect();
            let frame = UploadFrame::new(enc, &names, &lengths, &StringMap::new());
            let mut expected = Vec::new();
            for (i, piece) in frame.pieces.iter().enumerate() {
                expected.extend_from_slice(piece);
                if let Some(data) = contents.get(i) {
                    match enc {
                        KifsEncoding::Binary => expected.extend_from_slice(data),
                        KifsEncoding::Json => {
                            expected.extend_from_slice(BASE64_STANDARD.encode(data).as_bytes())
                        }
                    }
                }
            }
            let request = StreamedRequest::new(enc, &names, sources, &StringMap::new());
            let frames = frames_of(request.body()).await.expect("every file reads");
            assert_eq!(frames.concat(), expected, "{enc:?}");
            assert_eq!(request.len(), expected.len() as u64);
            // Every file read was checked, the large one too; the empty one was not read.
            for (position, &size) in sizes.iter().enumerate() {
                assert_eq!(
                    request.read_and_checked(position),
                    size > 0,
                    "file {position}"
                );
            }
            // One read per half MiB of small files and per chunk of the large one, each
            // after a piece: a read per file would be over 600 frames.
            assert!(
                frames.len() <= 16,
                "{enc:?}: {} frames for {} files",
                frames.len(),
                sizes.len()
            );
        }
    }

    #[tokio::test]
    async fn a_read_of_small_files_stays_within_a_small_run_as_sent() {
        // 1,000 files of 4 KiB: 4 MiB in binary, more in base64, but no read over SMALL_RUN.
        let sizes = vec![4096; 1000];
        for enc in [KifsEncoding::Binary, KifsEncoding::Json] {
            let dir = tempfile::tempdir().unwrap();
            let (names, sources, _) = files(dir.path(), &sizes);
            let request = StreamedRequest::new(enc, &names, sources, &StringMap::new());
            let frames = frames_of(request.body()).await.expect("every file reads");
            let largest = frames.iter().map(Bytes::len).max().unwrap_or(0) as u64;
            assert!(largest <= SMALL_RUN, "{enc:?}: a read of {largest} bytes");
            // A piece and a read per run, and the closing piece: runs nearly full.
            let runs = (frames.len() as u64 - 1) / 2;
            assert!(
                runs <= request.len() / SMALL_RUN + 2,
                "{enc:?}: {runs} reads for {} bytes",
                request.len()
            );
        }
    }

    /// A write to a file between its chunked reads: the check after its last read ends the
    /// body before that chunk goes out, so the server never gets the whole element.
    #[tokio::test]
    async fn a_file_written_between_its_reads_ends_the_body_before_its_last_bytes() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let size = 2 * STREAM_CHUNK + 10;
        let (names, sources, _) = files(dir.path(), &[size]);
        let request =
            StreamedRequest::new(KifsEncoding::Binary, &names, sources, &StringMap::new());
        let mut body = request.body();
        let mut sent = 0;
        // The frame's piece, then the first chunk.
        while sent <= request.frame.pieces[0].len() {
            let frame = body.frame().await.expect("more frames").expect("a frame");
            sent += frame.into_data().map_or(0, |data| data.len());
        }
        let mut writer = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("f0"))
            .unwrap();
        writer.write_all(b"more").unwrap();
        let ended = loop {
            match body.frame().await {
                None => break Ok(()),
                Some(Err(err)) => break Err(err),
                Some(Ok(frame)) => sent += frame.into_data().map_or(0, |data| data.len()),
            }
        };
        assert!(ended.is_err(), "the body ends with an error");
        assert!(
            sent < request.len() as usize - 10,
            "the last chunk went out"
        );
        let (index, err) = request.failure().expect("the failure is kept");
        assert_eq!(index, 0);
        assert!(matches!(err, UploadError::Changed), "{err:?}");
        assert!(!request.read_and_checked(0));
    }

    #[tokio::test]
    async fn a_small_file_that_changed_ends_the_body_and_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (names, sources, _) = files(dir.path(), &[10, 20, 30, 40]);
        std::fs::write(dir.path().join("f2"), b"longer than it was when offered").unwrap();
        let request =
            StreamedRequest::new(KifsEncoding::Binary, &names, sources, &StringMap::new());
        assert_eq!(request.frame.pieces.len(), names.len() + 1);
        let ended = frames_of(request.body()).await;
        assert!(ended.is_err(), "the body ends with an error");
        let (index, err) = request.failure().expect("the failure is kept");
        assert_eq!(index, 2);
        assert!(matches!(err, UploadError::Changed), "{err:?}");
    }
}
