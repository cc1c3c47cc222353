//! Redivis upload names: the escaping rule (protocol §2), collision detection, and the
//! per-table name index that answers the conflict check without one request per file.
//!
//! Redivis addresses an upload by its *escaped* name: characters other than letters,
//! digits and `_` become `_`, runs of `_` collapse, leading and trailing `_` drop, and case
//! is ignored. So `a.b.csv`, `a_b.csv` and `A-B.csv` are the same upload (`a_b_csv`). Two
//! local files that escape alike must not overwrite each other: the first one to claim the
//! escaped name in a table keeps it while its upload is in progress or waiting to retry;
//! once it is uploaded (or gone, or failed for good) the table holds the name, and the
//! remote check (an upload already in the table under another name) guards it, as it does
//! for earlier runs. So the claims kept in memory are as many as the uploads under way,
//! not as many as the files ever uploaded (about 180 bytes each).
//!
//! # The name index ([`NameIndex`])
//! Before sending a byte, every upload asks whether its escaped name is already held in the
//! table (protocol §13). Asking by name costs one API request per file, out of a budget of
//! about 100 per 100 s. The index instead keeps, per table, a snapshot of the table's
//! upload list (all pages: escaped name → URIs of the uploads holding it), shared by every
//! worker, and updated by our own creates and deletes as they happen (also while a new
//! listing is in flight: those changes are replayed onto it).
//!
//! The snapshot is only ever trusted to say a name is *free*, or held only by uploads the
//! caller already knows it replaces. Any other holder is confirmed by asking the server by
//! name, so adopting, replacing and refusing a colliding name decide on fresh data, as
//! before. A name taken in the table after the snapshot (by another client) is caught by
//! upload.post itself: the server renames the new upload or refuses it, and the backend
//! resolves that (`RedivisBackend::upload`, step 6). So freshness bounds cost, never
//! correctness.
//!
//! Cost, with P = the pages of the table's last listing (⌈uploads / 100⌉):
//! - a listing is P requests, taken on the first lookup of a table;
//! - it serves lookups for max(30 s, P × 10 s), so re-listing a large table spends at most
//!   a tenth of the request budget: a table of 10,000 uploads (P = 100) is listed at most
//!   once in 1,000 s;
//! - once stale, lookups ask by name (1 request each) until those requests have cost as
//!   much as one listing (P), and only then is the table listed again. A trickle of files
//!   into a large table therefore costs at most about two requests per file, never P;
//!   a batch costs P requests for the whole batch.
//!
//! # Memory
//! A snapshot holds every upload of its table, so it grows with every file a daemon
//! uploads there. It keeps 64-bit hashes instead of the texts ([`Holders`]): 22 bytes a
//! name, where the escaped names with the lists of URIs took 250
//! (`tests/name_index_memory.rs` counts them, for 100,000 names shaped like a
//! daemon's). Two texts with one hash cost at most a request, never a wrong upload: a
//! name that seems held when it is not is asked for by name, and a name that seems
//! free, or held only by uploads the caller replaces, while another upload holds it is
//! a name taken since the listing, which `upload.post` catches (above). And a snapshot
//! keeps at most [`IndexConfig::max_names`] names: a table with more (its listing stops
//! there) is asked by name, one request per file, and is not listed again until its
//! next version or the next start; a listing past the limit takes a thousand requests
//! and more.

use std::collections::HashMap;
use std::collections::hash_map::{DefaultHasher, Entry};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::api::ApiClient;
use crate::upload::UploadError;
use crate::upload::retry::CallScope;

/// The escaped form of an upload name, as Redivis matches names.
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending_sep = false;
    for ch in name.chars() {
        // Unicode letters and digits count, as in the emulator; the docs do not say.
        if ch.is_alphanumeric() {
            if pending_sep && !out.is_empty() {
                out.push('_');
            }
            pending_sep = false;
            out.extend(ch.to_lowercase());
        } else {
            pending_sep = true;
        }
    }
    out
}

/// Which local name holds each escaped name, per table.
#[derive(Debug, Default)]
pub struct NameRegistry {
    claimed: Mutex<HashMap<(String, String), String>>,
}

impl NameRegistry {
    /// Claims `escape(name)` in `table` for `name`. Returns the escaped name, or the other
    /// local name that already holds it.
    pub fn claim(&self, table: &str, name: &str) -> Result<String, String> {
        let escaped = escape(name);
        let key = (table.to_ascii_lowercase(), escaped.clone());
        let mut claimed = self
            .claimed
            .lock()
            .expect("name registry lock is not poisoned");
        match claimed.get(&key) {
            Some(holder) if holder != name => Err(holder.clone()),
            Some(_) => Ok(escaped),
            None => {
                claimed.insert(key, name.to_string());
                Ok(escaped)
            }
        }
    }

    /// Gives the escaped name to `name`, whoever held it: the table itself shows that
    /// `name` owns it (an upload of that exact name exists).
    pub fn take_over(&self, table: &str, name: &str) -> String {
        let escaped = escape(name);
        let key = (table.to_ascii_lowercase(), escaped.clone());
        self.claimed
            .lock()
            .expect("name registry lock is not poisoned")
            .insert(key, name.to_string());
        escaped
    }

    /// Gives `name`'s claim up (its file vanished, or it failed for good).
    pub fn release(&self, table: &str, name: &str) {
        let key = (table.to_ascii_lowercase(), escape(name));
        let mut claimed = self
            .claimed
            .lock()
            .expect("name registry lock is not poisoned");
        if claimed.get(&key).is_some_and(|holder| holder == name) {
            claimed.remove(&key);
        }
    }
}

/// The error text for two names that escape alike.
pub fn collision_message(ours: &str, theirs: &str, escaped: &str, table: &str) -> String {
    format!(
        "name collision: {ours:?} and {theirs:?} both map to the Redivis upload name \
         {escaped:?} in table {table}; rename one of the files (only the first one is uploaded)"
    )
}

/// The error text for a name that escapes to nothing, after which no upload can be named.
pub fn nameless_message(name: &str) -> String {
    format!("{name:?} has no letters or digits, so Redivis cannot name an upload after it")
}

/// How long a table's name snapshot serves lookups.
#[derive(Debug, Clone, Copy)]
pub struct IndexConfig {
    /// A snapshot is trusted for at least this long after its listing began...
    pub max_age: Duration,
    /// ...and for this long per page that listing took (the request budget is one a
    /// second, so 10 s per page keeps re-listing under a tenth of it).
    pub age_per_page: Duration,
    /// The most names a table's snapshot keeps (module doc, "Memory").
    pub max_names: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            max_age: Duration::from_secs(30),
            age_per_page: Duration::from_secs(10),
            max_names: MAX_NAMES,
        }
    }
}

/// How many names a table's snapshot keeps at most: about 2 MiB (module doc, "Memory").
pub const MAX_NAMES: usize = 100_000;

/// What the index knows about an escaped name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// No upload in the table escapes to it.
    Free,
    /// The uploads that hold it.
    Held(HeldBy),
    /// No fresh snapshot: ask the server by name.
    Unknown,
}

/// Per-table snapshots of which escaped names the table holds (module doc).
#[derive(Debug, Default)]
pub struct NameIndex {
    config: IndexConfig,
    tables: Mutex<HashMap<String, Arc<TableNames>>>,
}

#[derive(Debug, Default)]
struct TableNames {
    /// Held while the table is being listed, so concurrent lookups share one listing.
    listing: tokio::sync::Mutex<()>,
    state: Mutex<Snapshot>,
}

/// The uploads holding one name, as hashes of their URIs (module doc, "Memory").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBy(Vec<u64>);

impl HeldBy {
    /// Whether every holder is one of `uris`.
    pub fn only_among(&self, uris: &[String]) -> bool {
        self.0
            .iter()
            .all(|held| uris.iter().any(|uri| hash_of(uri) == *held))
    }
}

/// The 64-bit hash the snapshots keep of a name or a URI.
fn hash_of(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// Escaped names and the uploads holding them, as hashes (module doc, "Memory").
#[derive(Debug, Default)]
struct Holders {
    /// Each name's first holder: nearly every name has one only.
    first: HashMap<u64, u64>,
    /// The further holders of the few names that have more.
    more: HashMap<u64, Vec<u64>>,
}

impl Holders {
    fn names(&self) -> usize {
        self.first.len()
    }

    fn add(&mut self, name: u64, uri: u64) {
        match self.first.entry(name) {
            Entry::Vacant(first) => {
                first.insert(uri);
            }
            Entry::Occupied(first) if *first.get() == uri => {}
            Entry::Occupied(_) => {
                let more = self.more.entry(name).or_default();
                if !more.contains(&uri) {
                    more.push(uri);
                }
            }
        }
    }

    fn remove(&mut self, name: u64, uri: u64) {
        let more = self.more.get_mut(&name);
        if self.first.get(&name) == Some(&uri) {
            // A further holder, if any, becomes the first.
            match more.and_then(Vec::pop) {
                Some(next) => self.first.insert(name, next),
                None => self.first.remove(&name),
            };
        } else if let Some(more) = more {
            more.retain(|held| *held != uri);
        }
        if self.more.get(&name).is_some_and(Vec::is_empty) {
            self.more.remove(&name);
        }
    }

    fn free(&mut self, name: u64) {
        self.first.remove(&name);
        self.more.remove(&name);
    }

    fn held_by(&self, name: u64) -> Option<HeldBy> {
        let first = *self.first.get(&name)?;
        let more = self.more.get(&name).map(Vec::as_slice).unwrap_or_default();
        Some(HeldBy([&[first], more].concat()))
    }
}

#[derive(Debug, Default)]
struct Snapshot {
    /// When the listing behind `holders` began; `None` before the first one.
    taken: Option<Instant>,
    /// Pages that listing took.
    pages: usize,
    holders: Holders,
    /// The table holds more names than a snapshot keeps: `holders` is empty, and
    /// lookups ask by name (module doc, "Memory").
    overflowed: bool,
    /// Lookups answered `Unknown` since the snapshot went stale.
    asked_while_stale: usize,
    /// Our own changes while a listing is in flight, replayed onto its result.
    journal: Option<Vec<Change>>,
}

#[derive(Debug, Clone)]
enum Change {
    Held { escaped: String, uri: String },
    Gone { escaped: String, uri: String },
    Free { escaped: String },
}

impl Snapshot {
    fn fresh(&self, config: &IndexConfig, now: Instant) -> bool {
        let pages = u32::try_from(self.pages).unwrap_or(u32::MAX);
        let age = config
            .max_age
            .max(config.age_per_page.saturating_mul(pages));
        self.taken
            .is_some_and(|taken| now.saturating_duration_since(taken) < age)
    }

    fn known(&self, escaped: &str) -> Known {
        if self.overflowed {
            return Known::Unknown;
        }
        match self.holders.held_by(hash_of(escaped)) {
            Some(held) => Known::Held(held),
            None => Known::Free,
        }
    }

    /// Applies one of our changes; past `max_names` names, the snapshot keeps none.
    fn apply(&mut self, change: &Change, max_names: usize) {
        if self.overflowed {
            return;
        }
        match change {
            Change::Held { escaped, uri } => {
                self.holders.add(hash_of(escaped), hash_of(uri));
                self.keep_within(max_names);
            }
            Change::Gone { escaped, uri } => self.holders.remove(hash_of(escaped), hash_of(uri)),
            Change::Free { escaped } => self.holders.free(hash_of(escaped)),
        }
    }

    /// Past `max_names` names, the snapshot keeps none and lookups ask by name.
    fn keep_within(&mut self, max_names: usize) {
        if self.holders.names() > max_names {
            self.overflowed = true;
            self.holders = Holders::default();
        }
    }

    fn record(&mut self, change: Change, max_names: usize) {
        if self.taken.is_some() {
            self.apply(&change, max_names);
        }
        if let Some(journal) = &mut self.journal {
            journal.push(change);
        }
    }
}

impl NameIndex {
    pub fn new(config: IndexConfig) -> NameIndex {
        NameIndex {
            config,
            tables: Mutex::new(HashMap::new()),
        }
    }

    fn table(&self, table: &str) -> Arc<TableNames> {
        let mut tables = self.tables.lock().expect("name index lock is not poisoned");
        Arc::clone(tables.entry(table.to_ascii_lowercase()).or_default())
    }

    /// What the table holds under `escaped`: from the snapshot when it is fresh, after
    /// listing the table when that is worth it, else `Unknown` (module doc, cost).
    pub async fn lookup(
        &self,
        api: &ApiClient,
        table: &str,
        escaped: &str,
        scope: &CallScope,
    ) -> Result<Known, UploadError> {
        let names = self.table(table);
        {
            let mut state = names.state.lock().expect("name index lock is not poisoned");
            // A table past the limit is not listed again: its listing would stop there.
            if state.overflowed || state.fresh(&self.config, Instant::now()) {
                return Ok(state.known(escaped));
            }
            // Ski rental: a listing costs `pages` requests, asking by name one.
            if state.taken.is_some() && state.asked_while_stale + 1 < state.pages {
                state.asked_while_stale += 1;
                return Ok(Known::Unknown);
            }
        }
        let _listing = tokio::select! {
            _ = scope.stop.cancelled() => return Err(UploadError::Shutdown),
            guard = names.listing.lock() => guard,
        };
        {
            let mut state = names.state.lock().expect("name index lock is not poisoned");
            if state.overflowed || state.fresh(&self.config, Instant::now()) {
                return Ok(state.known(escaped));
            }
            state.journal = Some(Vec::new());
        }
        let started = Instant::now();
        let max_names = self.config.max_names;
        let mut holders = Holders::default();
        let walked = api
            .for_each_upload_page(table, scope, &mut |page| {
                for upload in page {
                    // Failed uploads hold their name too (asking by name finds them).
                    if let Some(name) = &upload.name
                        && !upload.uri.is_empty()
                    {
                        holders.add(hash_of(&escape(name)), hash_of(&upload.uri));
                    }
                }
                // Past the limit, the rest of the listing would be dropped anyway.
                holders.names() <= max_names
            })
            .await;
        let mut state = names.state.lock().expect("name index lock is not poisoned");
        let journal = state.journal.take().unwrap_or_default();
        let pages = walked?;
        state.holders = holders;
        state.keep_within(max_names);
        for change in &journal {
            state.apply(change, max_names);
        }
        state.taken = Some(started);
        state.pages = pages;
        state.asked_while_stale = 0;
        tracing::debug!(
            table,
            pages,
            names = state.holders.names(),
            overflowed = state.overflowed,
            "listed the table's upload names"
        );
        Ok(state.known(escaped))
    }

    /// Drops what is known of `table`'s names (a new version of it starts without them).
    pub fn forget(&self, table: &str) {
        let mut tables = self.tables.lock().expect("name index lock is not poisoned");
        tables.remove(&table.to_ascii_lowercase());
    }

    /// We created `uri` under `escaped`.
    pub fn created(&self, table: &str, escaped: &str, uri: &str) {
        self.record(
            table,
            Change::Held {
                escaped: escaped.to_string(),
                uri: uri.to_string(),
            },
        );
    }

    /// We deleted `uri` (held under `escaped`), or found it gone.
    pub fn deleted(&self, table: &str, escaped: &str, uri: &str) {
        self.record(
            table,
            Change::Gone {
                escaped: escaped.to_string(),
                uri: uri.to_string(),
            },
        );
    }

    /// The server, asked by name, answered `holder` (or that nothing holds the name).
    pub fn learned(&self, table: &str, escaped: &str, holder: Option<&str>) {
        let escaped = escaped.to_string();
        let change = match holder {
            Some(uri) => Change::Held {
                escaped,
                uri: uri.to_string(),
            },
            None => Change::Free { escaped },
        };
        self.record(table, change);
    }

    fn record(&self, table: &str, change: Change) {
        self.table(table)
            .state
            .lock()
            .expect("name index lock is not poisoned")
            .record(change, self.config.max_names);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_follows_the_documented_examples() {
        let table = [
            ("Census dataset: 1940-1980", "census_dataset_1940_1980"),
            ("a.b.csv", "a_b_csv"),
            ("a_b.csv", "a_b_csv"),
            ("A-B.csv", "a_b_csv"),
            ("__lead/trail__.csv__", "lead_trail_csv"),
            ("sub/dir/data.2020.csv", "sub_dir_data_2020_csv"),
            ("Été.csv", "été_csv"),
            ("...", ""),
        ];
        for (name, escaped) in table {
            assert_eq!(escape(name), escaped, "{name}");
        }
    }

    #[test]
    fn the_second_name_that_escapes_alike_is_refused_with_the_first_ones_name() {
        let names = NameRegistry::default();
        assert_eq!(names.claim("o.d:next.t", "a.b.csv"), Ok("a_b_csv".into()));
        assert_eq!(names.claim("o.d:next.t", "a.b.csv"), Ok("a_b_csv".into()));
        assert_eq!(names.claim("o.d:next.t", "A-B.csv"), Err("a.b.csv".into()));
        // Another table is another namespace.
        assert_eq!(names.claim("o.d:next.u", "A-B.csv"), Ok("a_b_csv".into()));
        // Only the holder can release; then the name is free.
        names.release("o.d:next.t", "A-B.csv");
        assert_eq!(names.claim("o.d:next.t", "A-B.csv"), Err("a.b.csv".into()));
        names.release("o.d:next.t", "a.b.csv");
        assert_eq!(names.claim("o.d:next.t", "A-B.csv"), Ok("a_b_csv".into()));
    }

    /// A snapshot taken just now, of a table holding nothing.
    fn listed() -> Snapshot {
        Snapshot {
            taken: Some(Instant::now()),
            ..Snapshot::default()
        }
    }

    fn held_as(escaped: &str, uri: &str) -> Change {
        Change::Held {
            escaped: escaped.into(),
            uri: uri.into(),
        }
    }

    fn held(uri: &str) -> Change {
        held_as("a_csv", uri)
    }

    fn gone_as(escaped: &str, uri: &str) -> Change {
        Change::Gone {
            escaped: escaped.into(),
            uri: uri.into(),
        }
    }

    fn gone(uri: &str) -> Change {
        gone_as("a_csv", uri)
    }

    fn holds_exactly(state: &Snapshot, escaped: &str, uris: &[&str]) -> bool {
        let uris: Vec<String> = uris.iter().map(|uri| uri.to_string()).collect();
        match state.known(escaped) {
            Known::Held(held) => held.only_among(&uris) && held.0.len() == uris.len(),
            _ => false,
        }
    }

    #[test]
    fn our_changes_during_a_listing_are_replayed_onto_its_result() {
        let mut state = Snapshot {
            journal: Some(Vec::new()),
            ..listed()
        };
        state.record(held("/u/1"), MAX_NAMES);
        state.record(gone_as("old_csv", "/u/0"), MAX_NAMES);
        assert!(holds_exactly(&state, "a_csv", &["/u/1"]));
        // The listing read `old.csv` before we deleted it, and missed `a.csv`.
        let journal = state.journal.take().unwrap();
        state.holders = Holders::default();
        state.holders.add(hash_of("old_csv"), hash_of("/u/0"));
        for change in &journal {
            state.apply(change, MAX_NAMES);
        }
        assert!(holds_exactly(&state, "a_csv", &["/u/1"]));
        assert_eq!(state.known("old_csv"), Known::Free);
    }

    #[test]
    fn a_name_held_twice_keeps_both_holders_until_each_is_gone() {
        let mut state = listed();
        state.record(held("/u/1"), MAX_NAMES);
        state.record(held("/u/2"), MAX_NAMES);
        state.record(held("/u/2"), MAX_NAMES);
        assert!(holds_exactly(&state, "a_csv", &["/u/1", "/u/2"]));
        let Known::Held(both) = state.known("a_csv") else {
            panic!("the name is held");
        };
        assert!(!both.only_among(&["/u/1".into()]), "one holder is not ours");
        state.record(gone("/u/1"), MAX_NAMES);
        assert!(holds_exactly(&state, "a_csv", &["/u/2"]));
        state.record(held("/u/3"), MAX_NAMES);
        state.record(gone("/u/3"), MAX_NAMES);
        assert!(holds_exactly(&state, "a_csv", &["/u/2"]));
        state.record(gone("/u/2"), MAX_NAMES);
        assert_eq!(state.known("a_csv"), Known::Free);
        assert!(state.holders.more.is_empty(), "{state:?}");
        state.record(held("/u/4"), MAX_NAMES);
        state.record(
            Change::Free {
                escaped: "a_csv".into(),
            },
            MAX_NAMES,
        );
        assert_eq!(state.known("a_csv"), Known::Free);
    }

    #[test]
    fn past_its_limit_a_snapshot_keeps_no_name_and_sends_every_lookup_to_the_server() {
        let mut state = listed();
        for i in 0..3 {
            state.record(held_as(&format!("f{i}_csv"), &format!("/u/{i}")), 3);
        }
        assert!(matches!(state.known("f0_csv"), Known::Held(_)));
        assert_eq!(state.known("other_csv"), Known::Free);
        state.record(held_as("f3_csv", "/u/3"), 3);
        assert_eq!(state.known("f0_csv"), Known::Unknown);
        assert_eq!(state.known("other_csv"), Known::Unknown);
        assert_eq!(state.holders.names(), 0, "its memory is given back");
    }

    #[test]
    fn a_listing_of_more_pages_is_trusted_for_longer() {
        let config = IndexConfig::default();
        let now = Instant::now();
        let taken = now.checked_sub(Duration::from_secs(60)).unwrap();
        let one_page = Snapshot {
            taken: Some(taken),
            pages: 1,
            ..Snapshot::default()
        };
        let hundred_pages = Snapshot {
            taken: Some(taken),
            pages: 100,
            ..Snapshot::default()
        };
        assert!(!one_page.fresh(&config, now), "30 s for one page");
        assert!(hundred_pages.fresh(&config, now), "1000 s for 100 pages");
        assert!(!Snapshot::default().fresh(&config, now), "never listed");
    }

    #[test]
    fn the_table_s_own_holder_takes_the_name_over() {
        let names = NameRegistry::default();
        assert_eq!(names.claim("o.d:next.t", "a.b.csv"), Ok("a_b_csv".into()));
        assert_eq!(names.take_over("o.d:next.t", "A-B.csv"), "a_b_csv");
        assert_eq!(names.claim("o.d:next.t", "a.b.csv"), Err("A-B.csv".into()));
        assert_eq!(names.claim("o.d:next.t", "A-B.csv"), Ok("a_b_csv".into()));
    }
}
