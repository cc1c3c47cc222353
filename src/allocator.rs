//! The allocator of every upsync process (the daemon, `sync`, the emulator, each command):
//! jemalloc, with one arena ([`MALLOC_CONF`]).
//!
//! # Why jemalloc
//!
//! The daemon's work is small allocations freed on other threads than their own: sled
//! reads a page of the ledger on the thread that looks it up and frees it through its
//! epoch collector on whichever thread comes next, a job is built on a worker and dropped
//! on the store's thread. glibc serves a free from another thread's arena under that
//! arena's lock, so the threads waited on each other (a restart over a million files spent
//! about a tenth of its time on those locks); jemalloc takes such a free into the freeing
//! thread's cache without a lock. Measured against glibc (with mimalloc for the start-up
//! scan's looks, which this replaced), release builds on the development VM:
//!
//! - `bench/instructions.sh`: 160.4 k and 159.9 k instructions per small file instead of
//!   185.7 k and 186.3 k;
//! - a first mirror of 200,000 files of 1 KiB by hand (everything on tmpfs): 9.1 s of the
//!   daemon's CPU instead of 12.9–13.6 s, at the same peak (90–98 MiB against 93–98);
//! - `upsync-bench --only million`: the first mirror of a million files with 53 µs of the
//!   daemon's CPU per file instead of 105 µs, peaking at 116.2 MiB instead of 119.0, and
//!   the restarts over them 1.09 and 1.07 times `find` instead of 1.28 and 1.64.
//!
//! mimalloc for the whole process was about as cheap, but kept the blocks one thread
//! freed in pages of that thread's own heap, and the daemon's store work runs on whichever
//! thread calls it: the first mirror of a million files peaked at 181 MiB
//! (`docs/small-file-costs.md`).
//!
//! # Why one arena
//!
//! Memory freed into an arena serves that arena only, and jemalloc's default is four
//! arenas per core, a thread's arena chosen at its first allocation. The first mirror of
//! 200,000 files peaked at 166 MiB with the default, 122 MiB with two arenas and 95–98 MiB
//! with one, with no more CPU: the threads' caches take most allocations and frees without
//! touching the arena, so its locks are rarely waited on.
//!
//! The options are compiled in; jemalloc reads `_RJEM_MALLOC_CONF` from the environment
//! after them, so an operator can still change one without a build.
//!
//! When freed memory goes back to the system is module `daemon::heap`'s.

use std::ffi::{CStr, c_char};

pub use tikv_jemallocator::Jemalloc as Allocator;

/// jemalloc's options as it reads them at its start (module doc): the string its
/// `malloc_conf` symbol points at.
pub const OPTIONS: &CStr = c"narenas:1";

/// A pointer to a string that lives as long as the program, which jemalloc only reads.
#[repr(transparent)]
pub struct ConfString(*const c_char);

// SAFETY: the pointer is to a constant string, never written.
unsafe impl Sync for ConfString {}

/// The options jemalloc reads at its start: the symbol it declares weak, defined here.
/// (tikv-jemalloc-sys builds jemalloc with the `_rjem_` prefix on its symbols.)
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: ConfString = ConfString(OPTIONS.as_ptr());

/// Turns transparent huge pages off for the process. Call first thing in `main`.
///
/// Where the system backs every anonymous mapping with huge pages (`always`), a 2 MiB page
/// that keeps one live block stays resident whatever the allocator returns around it: with
/// mimalloc, a restart peaked at 158 MiB with them and 90 MiB without.
pub fn tune() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Calls jemalloc's control `name` (`mallctl`), writing nothing to it and reading its
/// value into `value` when one is given; its error number if it refused.
fn control<T>(name: &CStr, value: Option<&mut T>) -> Result<(), i32> {
    let mut len = std::mem::size_of::<T>();
    let (value, len) = match value {
        Some(value) => (std::ptr::from_mut(value).cast(), &raw mut len),
        None => (std::ptr::null_mut(), std::ptr::null_mut()),
    };
    // SAFETY: `name` is NUL-terminated; jemalloc writes at most `len` bytes into `value`,
    // which the caller's borrow keeps alive across the call, or nothing when both are null.
    let code =
        unsafe { tikv_jemalloc_sys::mallctl(name.as_ptr(), value, len, std::ptr::null_mut(), 0) };
    if code == 0 { Ok(()) } else { Err(code) }
}

/// Runs jemalloc's control `name`, which takes and gives nothing (a purge), or returns
/// its error number.
pub(crate) fn run_control(name: &CStr) -> Result<(), i32> {
    control::<()>(name, None)
}

/// Reads jemalloc's control `name` as a `T`, or its error number.
#[cfg(test)]
fn read_control<T: Default>(name: &CStr) -> Result<T, i32> {
    let mut value = T::default();
    control(name, Some(&mut value)).map(|()| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jemalloc_reads_the_options_compiled_in() {
        // Its default on two cores or more is eight arenas: a symbol jemalloc does not
        // find (another prefix, a name mistyped) fails here.
        let arenas: u32 = read_control(c"opt.narenas").unwrap();
        assert_eq!(arenas, 1);
    }

    #[test]
    fn a_control_jemalloc_does_not_have_is_an_error() {
        assert!(run_control(c"arena.4096.no_such_control").is_err());
        assert!(read_control::<u32>(c"opt.no_such_option").is_err());
    }
}
