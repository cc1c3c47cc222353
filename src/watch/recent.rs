//! File versions offered lately, so that repeated events for an unchanged file (a chmod, a
//! rescan, a close after the file was already offered) do not offer it again: an offer is a
//! queue transaction, a look here is a hash lookup.
//!
//! It is a cache, and a bounded one: forgetting an entry only costs one more offer, which
//! the queue answers as already known. Entries expire after a while, and when the map is
//! full the older half goes, so a folder receiving a million files does not keep a million
//! entries (about 150 bytes each) in memory.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::fingerprint::Fingerprint;

/// Offered versions by relative path, with when they were offered.
#[derive(Debug)]
pub struct RecentOffers {
    entries: HashMap<String, (Fingerprint, Instant)>,
    /// How long an entry is kept.
    memory: Duration,
    /// How many entries are kept at most.
    limit: usize,
}

impl RecentOffers {
    pub fn new(memory: Duration, limit: usize) -> RecentOffers {
        RecentOffers {
            entries: HashMap::new(),
            memory,
            limit: limit.max(1),
        }
    }

    /// Whether exactly this version of the file was offered lately.
    pub fn contains(&self, rel: &str, fingerprint: &Fingerprint) -> bool {
        self.entries
            .get(rel)
            .is_some_and(|(offered, _)| offered == fingerprint)
    }

    /// Records an offer made at `now`; a full map first forgets its older half.
    pub fn remember(&mut self, rel: String, fingerprint: Fingerprint, now: Instant) {
        if self.entries.len() >= self.limit && !self.entries.contains_key(&rel) {
            self.forget_older_half();
        }
        self.entries.insert(rel, (fingerprint, now));
    }

    pub fn forget(&mut self, rel: &str) {
        self.entries.remove(rel);
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Forgets the entries older than the memory time.
    pub fn expire(&mut self, now: Instant) {
        let memory = self.memory;
        self.entries
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < memory);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Keeps the entries offered after the median offer time. Offers of one batch share
    /// their time, so when that keeps too many (most entries tie), everything goes.
    fn forget_older_half(&mut self) {
        let mut times: Vec<Instant> = self.entries.values().map(|(_, at)| *at).collect();
        let middle = times.len() / 2;
        let (_, median, _) = times.select_nth_unstable(middle);
        let median = *median;
        self.entries.retain(|_, (_, at)| *at > median);
        if self.entries.len() >= self.limit {
            self.entries.clear();
        }
        self.entries.shrink_to(self.limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(n: u64) -> Fingerprint {
        Fingerprint {
            size: n,
            mtime_ns: i128::from(n),
            inode: n,
        }
    }

    #[test]
    fn a_remembered_version_is_known_and_another_version_is_not() {
        let mut recent = RecentOffers::new(Duration::from_secs(600), 10);
        let now = Instant::now();
        recent.remember("a.csv".into(), fp(1), now);
        assert!(recent.contains("a.csv", &fp(1)));
        assert!(
            !recent.contains("a.csv", &fp(2)),
            "a new version is offered"
        );
        assert!(!recent.contains("b.csv", &fp(1)));
        recent.forget("a.csv");
        assert!(!recent.contains("a.csv", &fp(1)));
    }

    #[test]
    fn entries_expire_after_the_memory_time() {
        let mut recent = RecentOffers::new(Duration::from_secs(600), 10);
        let start = Instant::now();
        recent.remember("old".into(), fp(1), start);
        recent.remember("new".into(), fp(2), start + Duration::from_secs(1));
        recent.expire(start + Duration::from_secs(600) - Duration::from_millis(1));
        assert_eq!(recent.len(), 2, "nothing is older than 600 s yet");
        recent.expire(start + Duration::from_secs(600));
        assert!(!recent.contains("old", &fp(1)));
        assert!(recent.contains("new", &fp(2)));
    }

    #[test]
    fn a_full_map_forgets_its_older_half_and_never_exceeds_its_limit() {
        let mut recent = RecentOffers::new(Duration::from_secs(600), 8);
        let start = Instant::now();
        for n in 0..8u64 {
            recent.remember(format!("f{n}"), fp(n), start + Duration::from_millis(n));
        }
        assert_eq!(recent.len(), 8);
        recent.remember("f8".into(), fp(8), start + Duration::from_millis(8));
        assert!(recent.len() <= 8, "{} entries", recent.len());
        assert!(!recent.contains("f0", &fp(0)), "the oldest went");
        assert!(recent.contains("f7", &fp(7)), "the newest stayed");
        assert!(recent.contains("f8", &fp(8)));
        // Updating a known path at the limit makes no room.
        let before = recent.len();
        recent.remember("f8".into(), fp(9), start + Duration::from_millis(9));
        assert_eq!(recent.len(), before);
        for n in 10..1000u64 {
            recent.remember(format!("f{n}"), fp(n), start + Duration::from_millis(n));
            assert!(recent.len() <= 8, "{} entries after f{n}", recent.len());
        }
    }

    #[test]
    fn a_full_map_of_one_batch_is_cleared_rather_than_kept_whole() {
        let mut recent = RecentOffers::new(Duration::from_secs(600), 4);
        let batch = Instant::now();
        for n in 0..4u64 {
            recent.remember(format!("f{n}"), fp(n), batch);
        }
        recent.remember("next".into(), fp(9), batch);
        assert_eq!(recent.len(), 1, "only the new entry is left");
        assert!(recent.contains("next", &fp(9)));
    }
}
