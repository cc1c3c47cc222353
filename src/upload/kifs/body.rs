//! `/upload/files` request bodies streamed from the files they carry, so that memory stays
//! at a few chunks per request whatever the file, part or batch size.
//!
//! The body is the encoded request frame ([`UploadFrame`]) with each `file_data` element
//! read from its file in [`STREAM_CHUNK`]-byte positional reads on the blocking pool; the
//! next chunk is read while the current one is sent (`buffered(2)`). In JSON mode each chunk
//! is base64-encoded on its own, which joins into one valid text because the chunk size is a
//! multiple of 3.
//!
//! A file that cannot be read as the version being uploaded (changed, vanished, unreadable)
//! ends the body with an I/O error, which aborts the request; the precise reason is kept in
//! [`StreamedRequest::failure`] so the caller reports it rather than a transport error.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use base64::prelude::*;
use bytes::Bytes;
use futures::StreamExt;

use super::wire::{StringMap, UploadFrame};
use crate::config::KifsEncoding;
use crate::fingerprint::Fingerprint;
use crate::upload::UploadError;
use crate::upload::chunk::FileReader;

/// Bytes per read: 1.5 MiB, a multiple of 3 (see the module doc).
pub const STREAM_CHUNK: usize = 3 << 19;

/// Where one `file_data` element's bytes come from: `len` bytes at `offset` of a file.
pub struct Source {
    path: PathBuf,
    fingerprint: Fingerprint,
    offset: u64,
    len: u64,
    /// Opened on first read, so a batch of many files does not hold them all open.
    reader: Mutex<Option<Arc<FileReader>>>,
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
        }
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

    /// A fresh body: the frame pieces with the elements read from their files.
    pub fn body(&self) -> reqwest::Body {
        enum Item {
            Piece(Bytes),
            Read {
                source: usize,
                at: u64,
                len: usize,
                last: bool,
            },
        }
        let mut items = Vec::new();
        for (index, piece) in self.frame.pieces.iter().enumerate() {
            items.push(Item::Piece(piece.clone()));
            let Some(source) = self.sources.get(index) else {
                continue;
            };
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
        }
        let sources = Arc::clone(&self.sources);
        let failure = Arc::clone(&self.failure);
        let enc = self.enc;
        let stream = futures::stream::iter(items)
            .map(move |item| {
                let sources = Arc::clone(&sources);
                let failure = Arc::clone(&failure);
                async move {
                    let (index, at, len, last) = match item {
                        Item::Piece(piece) => return Ok(piece),
                        Item::Read {
                            source,
                            at,
                            len,
                            last,
                        } => (source, at, len, last),
                    };
                    let source = &sources[index];
                    let read = match source.reader() {
                        Ok(reader) => reader.read_at(source.offset + at, len).await,
                        Err(err) => Err(err),
                    };
                    if last {
                        source.release();
                    }
                    let data = match read {
                        Ok(data) if data.len() == len => data,
                        // The file shrank under us: it is being rewritten.
                        Ok(_) => return Err(fail(&failure, index, UploadError::Changed)),
                        Err(err) => return Err(fail(&failure, index, err)),
                    };
                    Ok(match enc {
                        KifsEncoding::Binary => data,
                        KifsEncoding::Json => tokio::task::spawn_blocking(move || {
                            Bytes::from(BASE64_STANDARD.encode(&data))
                        })
                        .await
                        .expect("base64 encoding does not panic"),
                    })
                }
            })
            .buffered(2);
        reqwest::Body::wrap_stream(stream)
    }
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
