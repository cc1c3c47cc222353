//! The size rule of a resumable session's chunks (protocol §7 in
//! `docs/protocols/redivis.md`), on its own so that the configuration's checks and the
//! emulator can ask it without the upload code.

/// Every chunk but a session's last is a multiple of this many bytes (256 KiB): a session
/// refuses any other (protocol §7).
pub const CHUNK_GRANULE: u64 = 256 << 10;

/// Whether `size` may be the chunk size of a session: a positive multiple of
/// [`CHUNK_GRANULE`].
pub fn is_valid_chunk_size(size: u64) -> bool {
    size > 0 && size.is_multiple_of(CHUNK_GRANULE)
}
