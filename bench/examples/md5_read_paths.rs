//! What it costs one thread to compute the MD5 of a file in the page cache, read three ways:
//! into a buffer with `pread` (what the daemon does for Redivis uploads), from a memory map
//! of the file, and (the floor) from memory with no file at all.
//!
//! ```text
//! head -c 1G /dev/urandom > big && cargo run --release -p upsync-bench --example md5_read_paths -- big
//! ```
//!
//! The question it answers: would hashing from a memory map save the kernel's copy of
//! every byte into the daemon's buffer? Each way is timed on the thread's CPU clock, in
//! windows of the same size as the daemon's Redivis chunks, three rounds each.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use md5::{Digest, Md5};

/// The size of each read or mapped window: the daemon's default Redivis chunk.
const WINDOW: usize = 8 << 20;
const ROUNDS: usize = 3;

fn main() -> Result<(), String> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: md5_read_paths FILE (a large file, e.g. 1 GiB)")?;
    let file = File::open(&path).map_err(|err| format!("{path}: {err}"))?;
    let size = file.metadata().map_err(|err| err.to_string())?.len();
    // Once through, so every round finds the file in the page cache.
    hash_read(&file, size)?;
    let block = vec![0x5au8; 64 << 20];
    for round in 1..=ROUNDS {
        let (read_cpu, read_digest) = timed(|| hash_read(&file, size))?;
        let (map_cpu, map_digest) = timed(|| hash_mapped(&file, size))?;
        let (memory_cpu, _) = timed(|| Ok(hash_memory(&block, size)))?;
        if read_digest != map_digest {
            return Err("the two reads of the file hashed differently".into());
        }
        let per_gib = |cpu: Duration| cpu.as_secs_f64() * (1u64 << 30) as f64 / size as f64;
        println!(
            "round {round}: CPU per GiB: pread {:.3} s, memory map {:.3} s, MD5 of memory {:.3} s",
            per_gib(read_cpu),
            per_gib(map_cpu),
            per_gib(memory_cpu)
        );
    }
    Ok(())
}

/// Reads the file window by window into one buffer and hashes each window.
fn hash_read(file: &File, size: u64) -> Result<[u8; 16], String> {
    let mut buffer = vec![0u8; WINDOW];
    let mut hasher = Md5::new();
    let mut offset = 0;
    while offset < size {
        let read = file
            .read_at(&mut buffer, offset)
            .map_err(|err| format!("read: {err}"))?;
        if read == 0 {
            return Err("the file shrank".into());
        }
        hasher.update(&buffer[..read]);
        offset += read as u64;
    }
    Ok(hasher.finalize().into())
}

/// Maps the file window by window and hashes each mapping in place.
fn hash_mapped(file: &File, size: u64) -> Result<[u8; 16], String> {
    let mut hasher = Md5::new();
    let mut offset = 0;
    while offset < size {
        let len = (size - offset).min(WINDOW as u64) as usize;
        // SAFETY: a fresh read-only shared mapping of `len` bytes of an open file at a
        // window-aligned (so page-aligned) offset; nothing else maps or truncates the file
        // while this program runs.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: `map` is a live mapping of `len` readable bytes until the munmap below.
        hasher.update(unsafe { std::slice::from_raw_parts(map.cast::<u8>(), len) });
        // SAFETY: unmaps exactly the mapping made above, which nothing refers to any more.
        unsafe { libc::munmap(map, len) };
        offset += len as u64;
    }
    Ok(hasher.finalize().into())
}

/// Hashes `size` bytes of memory (`block` over and over): MD5 with no file.
fn hash_memory(block: &[u8], size: u64) -> [u8; 16] {
    let mut hasher = Md5::new();
    let mut left = size;
    while left > 0 {
        let take = left.min(block.len() as u64) as usize;
        hasher.update(&block[..take]);
        left -= take as u64;
    }
    hasher.finalize().into()
}

/// Runs `work` and returns the CPU time the calling thread spent in it.
fn timed<T>(work: impl FnOnce() -> Result<T, String>) -> Result<(Duration, T), String> {
    let started = thread_cpu()?;
    let out = work()?;
    Ok((thread_cpu()? - started, out))
}

fn thread_cpu() -> Result<Duration, String> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `now`, which lives across the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return Err(format!(
            "clock_gettime: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
}
