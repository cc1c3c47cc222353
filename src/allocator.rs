//! The daemon's allocator: glibc's malloc, except while the start-up scan looks at files
//! (a stat and a ledger lookup per file, `watch::looks`): those allocations come from
//! mimalloc ([`ScanHeap`]).
//!
//! # Why two allocators
//!
//! A restart over a large tree is one ledger lookup per file on each of the scan's two
//! threads. sled reads each page of the ledger into memory on the thread that looks it up
//! and frees it on whichever thread evicts it, through its epoch collector, often the other
//! scan thread. glibc serves a free from another thread's arena under that arena's lock,
//! so the two threads kept waiting on each other: in a restart over a million files, about
//! 17,000 of its 60,000 thread switches were waits on those locks (`perf record -e
//! context-switches`, most of them under `free` called from sled's epoch collector).
//! mimalloc takes a block freed by another thread without a lock.
//!
//! mimalloc for the whole process was measured too: it made a first mirror cheaper, but
//! every thread keeps the blocks other threads free in pages of its own until it
//! allocates again, and the runtime's threads take turns, so the daemon's peak memory in a
//! first mirror of a million files went from 140 to 320 MiB (of 200,000: from 110 to 217
//! MiB), even with the tuning below. With mimalloc for every allocation of the walk
//! (offers and sled's writes included), 200,000 files still peaked at 178–198 MiB. The
//! looks alone allocate little that outlives them (the ledger pages sled caches, bounded by
//! its cache): 120 MiB, and the restart is as fast as with mimalloc everywhere.
//!
//! # How
//!
//! [`Allocator`] is the process's global allocator (`main.rs`). An allocation comes from
//! mimalloc on a thread that holds a [`ScanHeap`], from glibc on any other. A block goes
//! back to the allocator it came from, whatever thread frees it: mimalloc's page map says
//! whether it owns an address (`mi_is_in_heap_region`, a lookup in a table, no lock).
//!
//! At start ([`tune`]) mimalloc is told to return a freed page to the system at once (its
//! default waits a second), and the process not to use transparent huge pages: mimalloc
//! asks for them, and a 2 MiB page that keeps one live block stays resident (with mimalloc
//! for the whole process, a restart's peak was 158 MiB with them, 90 MiB without).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use mimalloc::MiMalloc;

thread_local! {
    /// Whether this thread allocates from mimalloc. No destructor, so the allocator may
    /// read it at any point of a thread's life.
    static ON_MIMALLOC: Cell<bool> = const { Cell::new(false) };
}

/// glibc's malloc, or mimalloc on a thread holding a [`ScanHeap`] (module doc).
pub struct Allocator;

/// Whether mimalloc allocated the block at `ptr`.
fn from_mimalloc(ptr: *mut u8) -> bool {
    // SAFETY: mimalloc looks the address up in its page map; any address may be asked.
    unsafe { libmimalloc_sys::mi_is_in_heap_region(ptr.cast()) }
}

/// Whether this thread holds a [`ScanHeap`], so allocates from mimalloc.
pub(crate) fn on_scan_heap() -> bool {
    ON_MIMALLOC.with(Cell::get)
}

/// The allocator this thread allocates from now.
fn for_this_thread() -> &'static dyn GlobalAlloc {
    if on_scan_heap() { &MiMalloc } else { &System }
}

/// The allocator that gave out the block at `ptr`.
fn owner_of(ptr: *mut u8) -> &'static dyn GlobalAlloc {
    if from_mimalloc(ptr) {
        &MiMalloc
    } else {
        &System
    }
}

// SAFETY: every block is allocated by one of two allocators that are each sound, and is
// freed or resized by the same one (`owner_of`).
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { for_this_thread().alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { for_this_thread().alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` goes back to the allocator that gave it out.
        unsafe { owner_of(ptr).dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is resized by the allocator that gave it out.
        unsafe { owner_of(ptr).realloc(ptr, layout, new_size) }
    }
}

/// While held, the thread allocates from mimalloc (when [`Allocator`] is the global
/// allocator; in a program without it, nothing changes). Dropping it restores what the
/// thread did before.
#[must_use = "the thread allocates from mimalloc only while the guard is held"]
pub struct ScanHeap {
    before: bool,
}

impl ScanHeap {
    pub fn enter() -> ScanHeap {
        ScanHeap {
            before: ON_MIMALLOC.with(|on| on.replace(true)),
        }
    }
}

impl Drop for ScanHeap {
    fn drop(&mut self) {
        ON_MIMALLOC.with(|on| on.set(self.before));
    }
}

/// mimalloc's number for its purge delay option (`mi_option_purge_delay` in the
/// `mi_option_t` of the bundled mimalloc; the test below checks it names that option).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Returns freed mimalloc pages at once and turns transparent huge pages off for the
/// process (module doc). Call first thing in `main`.
pub fn tune() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    // SAFETY: sets an option of the allocator, which reads options at every use.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_whose_default_is_a_second() {
        // The bundled mimalloc's default purge delay is 1000 ms, and no other option of
        // its table defaults to 1000: a wrong number fails here.
        // SAFETY: reads an option.
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(default, 1000);
    }

    #[test]
    fn a_block_goes_back_to_the_allocator_that_gave_it_whatever_the_thread_does_now() {
        let layout = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: each block is allocated with `layout`, written within it, resized and
        // freed once, through `Allocator`.
        unsafe {
            let from_glibc = Allocator.alloc(layout);
            let scan = ScanHeap::enter();
            let from_mi = Allocator.alloc(layout);
            assert!(!from_mimalloc(from_glibc));
            assert!(from_mimalloc(from_mi));
            // Freed and resized on a thread that is scanning, and on one that is not.
            from_mi.write_bytes(7, 100);
            let grown_glibc = Allocator.realloc(from_glibc, layout, 5000);
            assert!(!from_mimalloc(grown_glibc));
            drop(scan);
            let grown_mi = Allocator.realloc(from_mi, layout, 5000);
            assert!(from_mimalloc(grown_mi));
            assert_eq!(*grown_mi.add(99), 7, "the bytes moved with the block");
            let big = Layout::from_size_align(5000, 8).unwrap();
            let address = grown_mi as usize;
            let other = std::thread::spawn(move || Allocator.dealloc(address as *mut u8, big));
            other.join().unwrap();
            Allocator.dealloc(grown_glibc, big);
            assert!(!on_scan_heap(), "dropping the guard restored the thread");
        }
    }
}
