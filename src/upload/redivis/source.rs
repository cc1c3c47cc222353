//! The bytes of one file as a session sends them, with their MD5: what the chunk loop of
//! [`super::session`] reads, so that the loop itself only speaks the resume protocol.
//!
//! - [`ChunkSource::chunk_at`] gives the chunk at an offset, the file checked unchanged
//!   before and after the read; the chunk read ahead is taken when it is the one asked for.
//! - [`ChunkSource::while_sending`] runs a chunk's PUT and, meanwhile, reads the next chunk
//!   and hashes this one on the blocking pool (from a copy of the digest), so neither the
//!   disk nor MD5 holds up the network.
//! - [`ChunkSource::confirmed`] moves the digest to the offset the server confirmed: the
//!   hash computed ahead when the server took the whole chunk, else the file read again
//!   (a digest cannot be rewound, nor fed bytes the server did not keep).
//!
//! At most two chunks are held at once (the one travelling and the one read ahead), both in
//! the reader's buffer pool ([`crate::upload::chunk`]).

use std::future::Future;

use bytes::Bytes;
use md5::{Digest, Md5};

use crate::upload::UploadError;
use crate::upload::chunk::FileReader;

/// The MD5 of a file's first `upto` bytes, kept in step with the confirmed offset.
pub struct RunningMd5 {
    hasher: Md5,
    upto: u64,
    /// The digest of `[0, end)` computed ahead, while the chunk ending at `end` was sent;
    /// taken when the server confirms exactly `end`.
    speculated: Option<(u64, Md5)>,
}

impl Default for RunningMd5 {
    fn default() -> Self {
        RunningMd5 {
            hasher: Md5::new(),
            upto: 0,
            speculated: None,
        }
    }
}

impl RunningMd5 {
    /// Moves the digest to cover `[0, to)`, using `chunk` (bytes at `chunk_start`) where it
    /// covers the range and the file elsewhere.
    pub async fn advance(
        &mut self,
        to: u64,
        reader: &FileReader,
        chunk: Option<(u64, &Bytes)>,
        read_size: u64,
    ) -> Result<(), UploadError> {
        if let Some((end, hasher)) = self.speculated.take()
            && end == to
            && self.upto < end
        {
            self.hasher = hasher;
            self.upto = end;
        }
        if to < self.upto {
            // MD5 cannot be rewound: start over from the file.
            *self = RunningMd5::default();
        }
        while self.upto < to {
            if let Some((start, bytes)) = chunk {
                let end = start + bytes.len() as u64;
                if start <= self.upto && self.upto < end {
                    let from = (self.upto - start) as usize;
                    let until = (to.min(end) - start) as usize;
                    self.hasher.update(&bytes[from..until]);
                    self.upto += (until - from) as u64;
                    continue;
                }
            }
            let len = (to - self.upto).min(read_size) as usize;
            let bytes = reader.read_at(self.upto, len).await?;
            if bytes.is_empty() {
                return Err(UploadError::Changed);
            }
            self.hasher.update(&bytes);
            self.upto += bytes.len() as u64;
        }
        Ok(())
    }

    pub fn upto(&self) -> u64 {
        self.upto
    }

    pub fn hex(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}

/// The MD5 (hex) of the whole file, read `read_size` bytes at a time.
pub async fn file_md5(reader: &FileReader, read_size: u64) -> Result<String, UploadError> {
    let mut md5 = RunningMd5::default();
    md5.advance(reader.size, reader, None, read_size).await?;
    Ok(md5.hex())
}

/// One chunk of the file: `bytes` from offset `start`.
pub struct Chunk {
    pub start: u64,
    pub bytes: Bytes,
}

impl Chunk {
    /// The offset just past the chunk.
    pub fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

/// A file's chunks for one session, read ahead and hashed while they travel.
pub struct ChunkSource<'a> {
    reader: &'a FileReader,
    chunk_size: u64,
    /// Fails when the file is no longer the version being sent.
    check: &'a (dyn Fn() -> Result<(), UploadError> + Sync),
    /// The next chunk, read while the previous one was sent.
    ahead: Option<Chunk>,
    md5: RunningMd5,
}

impl<'a> ChunkSource<'a> {
    pub fn new(
        reader: &'a FileReader,
        chunk_size: u64,
        check: &'a (dyn Fn() -> Result<(), UploadError> + Sync),
    ) -> ChunkSource<'a> {
        ChunkSource {
            reader,
            chunk_size,
            check,
            ahead: None,
            md5: RunningMd5::default(),
        }
    }

    /// The length of the chunk at `offset`: a whole chunk, or the rest of the file.
    fn len_at(&self, offset: u64) -> usize {
        self.reader.size.saturating_sub(offset).min(self.chunk_size) as usize
    }

    /// The chunk at `offset`, read while the file was checked unchanged before and after.
    pub async fn chunk_at(&mut self, offset: u64) -> Result<Chunk, UploadError> {
        (self.check)()?;
        let len = self.len_at(offset);
        let chunk = match self.ahead.take() {
            Some(ahead) if ahead.start == offset && ahead.bytes.len() == len => ahead,
            stale => {
                // Its buffer goes back to the pool before the read needs one.
                drop(stale);
                Chunk {
                    start: offset,
                    bytes: self.reader.read_at(offset, len).await?,
                }
            }
        };
        (self.check)()?;
        Ok(chunk)
    }

    /// Runs `send` (the PUT of `chunk`) while the chunk is hashed ahead and the next one is
    /// read; `chunk` is dropped before this returns, so its buffer is free again.
    pub async fn while_sending<T>(&mut self, chunk: Chunk, send: impl Future<Output = T>) -> T {
        let end = chunk.end();
        // Used only if the server takes the whole chunk, so hashed from a copy.
        let speculative = (self.md5.upto() == chunk.start).then(|| {
            let mut hasher = self.md5.hasher.clone();
            let bytes = chunk.bytes.clone();
            tokio::task::spawn_blocking(move || {
                hasher.update(&bytes);
                hasher
            })
        });
        let next_len = self.len_at(end);
        let reader = self.reader;
        let read_ahead = async {
            if next_len > 0 {
                reader.read_at(end, next_len).await.ok()
            } else {
                None
            }
        };
        let (sent, following) = tokio::join!(send, read_ahead);
        self.ahead = following.map(|bytes| Chunk { start: end, bytes });
        if let Some(hashed) = speculative {
            let hasher = hashed.await.expect("hashing a chunk does not panic");
            self.md5.speculated = Some((end, hasher));
        }
        drop(chunk);
        sent
    }

    /// The server holds `[0, offset)`: the digest covers exactly that.
    pub async fn confirmed(&mut self, offset: u64) -> Result<(), UploadError> {
        self.md5
            .advance(offset, self.reader, None, self.chunk_size)
            .await
    }

    /// The MD5 (hex) of the confirmed bytes.
    pub fn md5_hex(&self) -> String {
        self.md5.hex()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprint;

    fn file_of(len: usize) -> (tempfile::TempDir, FileReader, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let fp = Fingerprint::read(&path).unwrap();
        let reader = FileReader::open(&path, &fp).unwrap();
        (dir, reader, data)
    }

    fn md5_of(bytes: &[u8]) -> String {
        hex::encode(Md5::digest(bytes))
    }

    #[tokio::test]
    async fn the_running_md5_follows_the_offset_forwards_and_backwards() {
        let (_dir, reader, data) = file_of(1000);
        let mut md5 = RunningMd5::default();
        let chunk = Bytes::copy_from_slice(&data[300..600]);
        md5.advance(450, &reader, Some((300, &chunk)), 64)
            .await
            .unwrap();
        assert_eq!(md5.hex(), md5_of(&data[..450]));
        md5.advance(200, &reader, None, 64).await.unwrap();
        assert_eq!(md5.hex(), md5_of(&data[..200]));
        md5.advance(1000, &reader, Some((300, &chunk)), 64)
            .await
            .unwrap();
        assert_eq!(md5.hex(), md5_of(&data));
    }

    #[tokio::test]
    async fn chunks_sent_whole_take_the_hash_computed_ahead_and_a_partial_one_rereads() {
        let (_dir, reader, data) = file_of(1000);
        let check = || Ok(());
        let mut source = ChunkSource::new(&reader, 400, &check);
        let first = source.chunk_at(0).await.unwrap();
        assert_eq!(&first.bytes[..], &data[..400]);
        let sent = source.while_sending(first, async { 7 }).await;
        assert_eq!(sent, 7);
        source.confirmed(400).await.unwrap();
        assert_eq!(source.md5_hex(), md5_of(&data[..400]));

        // The second chunk was read ahead; the server keeps only part of it.
        let second = source.chunk_at(400).await.unwrap();
        assert_eq!(&second.bytes[..], &data[400..800]);
        source.while_sending(second, async {}).await;
        source.confirmed(600).await.unwrap();
        assert_eq!(source.md5_hex(), md5_of(&data[..600]));

        let rest = source.chunk_at(600).await.unwrap();
        assert_eq!(&rest.bytes[..], &data[600..1000]);
        assert_eq!(rest.end(), 1000);
        source.while_sending(rest, async {}).await;
        source.confirmed(1000).await.unwrap();
        assert_eq!(source.md5_hex(), md5_of(&data));
        assert_eq!(file_md5(&reader, 64).await.unwrap(), md5_of(&data));
    }

    #[tokio::test]
    async fn a_chunk_is_refused_when_the_file_check_fails() {
        let (_dir, reader, _data) = file_of(100);
        let check = || Err(UploadError::Changed);
        let mut source = ChunkSource::new(&reader, 64, &check);
        assert!(matches!(
            source.chunk_at(0).await,
            Err(UploadError::Changed)
        ));
    }
}
