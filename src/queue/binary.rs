//! The binary encoding of job records (format 6), and the reading of a job record in
//! either encoding.
//!
//! Formats before 6 stored jobs as JSON, and decoding and encoding them was most of the
//! tenth of the daemon's instructions per small file that JSON took
//! (`docs/small-file-costs.md`, "Built: job records in binary"). A record of this encoding
//! starts with [`TAG`], a byte no JSON record starts with (JSON records start with `{`), so
//! a database keeps its older records as they are and a record is read in whichever
//! encoding it was written; every write uses this one.
//!
//! ```text
//! record      = TAG id folder rel fingerprint state kind flags attempts corrupt_imports
//!               option<last_error> option<import> option<unconfirmed_attempt_ms>
//!               option<claimed(fingerprint)> created_at_ms updated_at_ms
//! unsigned    = LEB128 (7 bits a byte, low bits first)
//! signed      = zigzag, then as unsigned (mtimes before 1970 are negative)
//! string      = unsigned length ++ UTF-8 bytes
//! option<T>   = 0 | 1 T
//! fingerprint = size inode mtime_ns(signed) option<ctime_ns(signed)>
//! ```
//!
//! Ledger entries stay JSON. Encoded this way they would take about 55 bytes instead of
//! 180, but sled's own cost per entry (about 165 bytes on disk after a compaction, measured
//! with either encoding) would then make a compacted database hold 2.6 to 3 times its
//! entries' bytes, against 1.7 times with JSON: over the twice the idle daemon's database
//! may take (the same document has the measurements).
//!
//! A record must be read to its last byte: a shorter or longer one is reported corrupt,
//! never guessed at.

use super::job::{Import, Job, JobId, JobKind, JobState};
use super::{FileKey, Fingerprint};

/// The first byte of a record in this encoding (version 1 of it).
pub(super) const TAG: u8 = 1;

/// Whether `raw` is a record in this encoding (else it is JSON).
pub(super) fn is_binary(raw: &[u8]) -> bool {
    raw.first() == Some(&TAG)
}

pub(super) fn encode_job(job: &Job) -> Vec<u8> {
    let mut out = Writer::with_tag(64 + job.key.folder.len() + job.key.rel.len());
    out.unsigned(job.id.0);
    out.string(&job.key.folder);
    out.string(&job.key.rel);
    out.fingerprint(&job.fingerprint);
    out.state(&job.state);
    out.byte(match job.kind {
        JobKind::Upload => 0,
        JobKind::Delete => 1,
    });
    out.byte(flags(job));
    out.unsigned(job.attempts.into());
    out.unsigned(job.corrupt_imports.into());
    out.option(job.last_error.as_deref(), Writer::string);
    out.option(job.import.as_ref(), Writer::import);
    out.option(job.unconfirmed_attempt_ms, Writer::unsigned);
    out.option(job.claimed.as_ref(), Writer::fingerprint);
    out.unsigned(job.created_at_ms);
    out.unsigned(job.updated_at_ms);
    out.0
}

pub(super) fn decode_job(raw: &[u8]) -> Result<Job, String> {
    let mut input = Reader::after_tag(raw)?;
    let id = JobId(input.unsigned()?);
    let key = FileKey {
        folder: input.string()?,
        rel: input.string()?,
    };
    let fingerprint = input.fingerprint()?;
    let state = input.state()?;
    let kind = match input.byte()? {
        0 => JobKind::Upload,
        1 => JobKind::Delete,
        other => return Err(format!("unknown job kind {other}")),
    };
    let flags = input.byte()?;
    if flags & !ALL_FLAGS != 0 {
        return Err(format!("unknown job flags {flags:#04x}"));
    }
    let job = Job {
        id,
        key,
        fingerprint,
        state,
        kind,
        approved: flags & APPROVED != 0,
        finalize_started: flags & FINALIZE_STARTED != 0,
        in_line: flags & IN_LINE != 0,
        attempts: input.unsigned_u32()?,
        corrupt_imports: input.unsigned_u32()?,
        last_error: input.option(Reader::string)?,
        import: input.option(Reader::import)?,
        unconfirmed_attempt_ms: input.option(Reader::unsigned)?,
        claimed: input.option(Reader::fingerprint)?,
        created_at_ms: input.unsigned()?,
        updated_at_ms: input.unsigned()?,
    };
    input.end()?;
    Ok(job)
}

const APPROVED: u8 = 1;
const FINALIZE_STARTED: u8 = 2;
const IN_LINE: u8 = 4;
const ALL_FLAGS: u8 = APPROVED | FINALIZE_STARTED | IN_LINE;

fn flags(job: &Job) -> u8 {
    let flag = |set: bool, flag: u8| if set { flag } else { 0 };
    flag(job.approved, APPROVED)
        | flag(job.finalize_started, FINALIZE_STARTED)
        | flag(job.in_line, IN_LINE)
}

/// The state's tag byte, in the order of [`JobState`]'s variants.
mod state_tag {
    pub const QUEUED: u8 = 0;
    pub const ACTIVE: u8 = 1;
    pub const FINALIZING: u8 = 2;
    pub const IMPORTING: u8 = 3;
    pub const RETRY_WAIT: u8 = 4;
    pub const FAILED: u8 = 5;
}

fn zigzag(value: i128) -> u128 {
    ((value << 1) ^ (value >> 127)) as u128
}

fn unzigzag(value: u128) -> i128 {
    ((value >> 1) as i128) ^ -((value & 1) as i128)
}

/// A record being encoded.
struct Writer(Vec<u8>);

impl Writer {
    fn with_tag(capacity: usize) -> Writer {
        let mut out = Vec::with_capacity(capacity);
        out.push(TAG);
        Writer(out)
    }

    fn byte(&mut self, byte: u8) {
        self.0.push(byte);
    }

    /// `value` in LEB128.
    fn wide(&mut self, mut value: u128) {
        while value >= 0x80 {
            self.0.push(value as u8 | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn unsigned(&mut self, value: u64) {
        self.wide(value.into());
    }

    fn signed(&mut self, value: i128) {
        self.wide(zigzag(value));
    }

    fn string(&mut self, text: &str) {
        self.unsigned(text.len() as u64);
        self.0.extend_from_slice(text.as_bytes());
    }

    fn option<T>(&mut self, value: Option<T>, write: impl FnOnce(&mut Writer, T)) {
        match value {
            None => self.byte(0),
            Some(value) => {
                self.byte(1);
                write(self, value);
            }
        }
    }

    fn fingerprint(&mut self, fingerprint: &Fingerprint) {
        self.unsigned(fingerprint.size);
        self.unsigned(fingerprint.inode);
        self.signed(fingerprint.mtime_ns);
        self.option(fingerprint.ctime_ns, Writer::signed);
    }

    fn state(&mut self, state: &JobState) {
        match state {
            JobState::Queued => self.byte(state_tag::QUEUED),
            JobState::Active => self.byte(state_tag::ACTIVE),
            JobState::Finalizing => self.byte(state_tag::FINALIZING),
            JobState::Importing => self.byte(state_tag::IMPORTING),
            JobState::RetryWait { next_attempt_at_ms } => {
                self.byte(state_tag::RETRY_WAIT);
                self.unsigned(*next_attempt_at_ms);
            }
            JobState::Failed {
                reason,
                failed_at_ms,
                kind,
            } => {
                self.byte(state_tag::FAILED);
                self.string(reason);
                self.unsigned(*failed_at_ms);
                self.option(kind.as_deref(), Writer::string);
            }
        }
    }

    fn import(&mut self, import: &Import) {
        self.string(&import.remote);
        self.string(&import.target);
        self.fingerprint(&import.fingerprint);
        self.string(&import.md5);
        self.unsigned(import.posted_at_ms);
        self.unsigned(import.transfer_ms);
        self.option(import.failed.as_deref(), Writer::string);
    }
}

/// A record being decoded: what is left of it.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn after_tag(raw: &'a [u8]) -> Result<Reader<'a>, String> {
        match raw.split_first() {
            Some((&TAG, rest)) => Ok(Reader(rest)),
            _ => Err("not a record of the binary encoding".into()),
        }
    }

    fn end(&self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(format!("{} bytes past the end of the record", self.0.len()))
        }
    }

    fn byte(&mut self) -> Result<u8, String> {
        let (&byte, rest) = self.0.split_first().ok_or("the record ends early")?;
        self.0 = rest;
        Ok(byte)
    }

    /// A LEB128 number of at most `bits` bits.
    fn wide(&mut self, bits: u32) -> Result<u128, String> {
        let mut value = 0u128;
        let mut shift = 0;
        loop {
            let byte = self.byte()?;
            let low = u128::from(byte & 0x7f);
            // Past `bits`, or bits above them in the last byte that may hold any.
            if shift >= bits || low >> (bits - shift).min(7) != 0 {
                return Err(format!("a number of more than {bits} bits"));
            }
            value |= low << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    fn unsigned(&mut self) -> Result<u64, String> {
        self.wide(64).map(|value| value as u64)
    }

    fn unsigned_u32(&mut self) -> Result<u32, String> {
        self.wide(32).map(|value| value as u32)
    }

    fn signed(&mut self) -> Result<i128, String> {
        self.wide(128).map(unzigzag)
    }

    fn string(&mut self) -> Result<String, String> {
        let len = usize::try_from(self.unsigned()?).map_err(|_| "a string too long")?;
        if len > self.0.len() {
            return Err("a string runs past the end of the record".into());
        }
        let (text, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(text.to_vec()).map_err(|_| "a string that is not UTF-8".into())
    }

    fn option<T>(
        &mut self,
        read: impl FnOnce(&mut Reader<'a>) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        match self.byte()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            other => Err(format!("an option marked {other}")),
        }
    }

    fn fingerprint(&mut self) -> Result<Fingerprint, String> {
        Ok(Fingerprint {
            size: self.unsigned()?,
            inode: self.unsigned()?,
            mtime_ns: self.signed()?,
            ctime_ns: self.option(Reader::signed)?,
        })
    }

    fn state(&mut self) -> Result<JobState, String> {
        Ok(match self.byte()? {
            state_tag::QUEUED => JobState::Queued,
            state_tag::ACTIVE => JobState::Active,
            state_tag::FINALIZING => JobState::Finalizing,
            state_tag::IMPORTING => JobState::Importing,
            state_tag::RETRY_WAIT => JobState::RetryWait {
                next_attempt_at_ms: self.unsigned()?,
            },
            state_tag::FAILED => JobState::Failed {
                reason: self.string()?,
                failed_at_ms: self.unsigned()?,
                kind: self.option(Reader::string)?,
            },
            other => return Err(format!("unknown job state {other}")),
        })
    }

    fn import(&mut self) -> Result<Import, String> {
        Ok(Import {
            remote: self.string()?,
            target: self.string()?,
            fingerprint: self.fingerprint()?,
            md5: self.string()?,
            posted_at_ms: self.unsigned()?,
            transfer_ms: self.unsigned()?,
            failed: self.option(Reader::string)?,
        })
    }
}

#[cfg(test)]
mod tests;
