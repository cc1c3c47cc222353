//! The memory a Redivis table's name snapshot takes per upload it knows, counted by this
//! test binary's allocator: the snapshot grows with every file the daemon uploads to the
//! table (our own creates are added to it), so its size per name bounds the daemon's
//! memory per file ever uploaded there (module `upload::redivis::names`, "Memory").
//!
//! Real parts: the listing that takes the snapshot goes to the emulator over HTTP; the
//! names and URIs are shaped like the daemon's (nested export paths, the emulator's URIs).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use upsync::config::Secret;
use upsync::emulator::{self, EmulatorOptions};
use upsync::upload::redivis::names::{IndexConfig, Known, NameIndex, escape};
use upsync::upload::retry::{CallScope, RetryPolicy};

/// The system allocator, counting the bytes held.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator with the caller's guarantees.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size, Ordering::Relaxed);
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const TABLE: &str = "owner.dataset:next.table";
const TOKEN: &str = "redivis-test-token-5b1e93";
/// Uploads added to the snapshot: enough that its tables' growth averages out.
const NAMES: usize = 100_000;
/// The most a name may take. Before the snapshot kept hashes, it took 250 bytes.
const BOUND_PER_NAME: usize = 40;

#[tokio::test]
async fn a_name_snapshot_takes_a_few_dozen_bytes_per_upload_it_knows() {
    let tmp = tempfile::tempdir().expect("temp dir can be created");
    let mut options = EmulatorOptions::with_data_dir(tmp.path().join("remote"));
    options.redivis.redivis_token = Some(Secret::new(TOKEN));
    let emulator = emulator::start("127.0.0.1:0", options)
        .await
        .expect("emulator starts on a free port");
    let base = format!("http://{}", emulator.addr);
    let api = common::redivis_api_client(&base, TOKEN, RetryPolicy::default());
    let index = NameIndex::new(IndexConfig::default());
    // The first lookup lists the (empty) table: from then on the snapshot is kept.
    let first = index
        .lookup(&api, TABLE, "absent_csv", &CallScope::default())
        .await
        .expect("the table lists");
    assert_eq!(first, Known::Free);

    let uploads: Vec<(String, String)> = (0..NAMES)
        .map(|i| {
            let name = format!("exports/2026/{:02}/{:02}/part-{i:06}.csv", i % 12, i % 28);
            let uri = format!(
                "/tables/owner.dataset%3Anext.table/uploads/{i:x}-{:08x}",
                i * 7919
            );
            (escape(&name), uri)
        })
        .collect();
    let before = HELD.load(Ordering::SeqCst);
    for (escaped, uri) in &uploads {
        index.created(TABLE, escaped, uri);
    }
    let after = HELD.load(Ordering::SeqCst);
    let per_name = after.saturating_sub(before) / NAMES;
    println!("name snapshot: {per_name} bytes per upload over {NAMES} uploads");
    let (last_name, _) = uploads.last().expect("names were made");
    assert!(
        matches!(
            index
                .lookup(&api, TABLE, last_name, &CallScope::default())
                .await,
            Ok(Known::Held(_))
        ),
        "the snapshot knows the uploads added to it"
    );
    assert!(
        per_name <= BOUND_PER_NAME,
        "{per_name} bytes per upload (at most {BOUND_PER_NAME})"
    );
}
