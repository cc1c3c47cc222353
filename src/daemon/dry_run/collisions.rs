//! Step 5 of the dry run: the files a run would fail in a Redivis table because another
//! file holds their upload name under Redivis' escaping (`a.b.csv` and `a_b.csv` are one
//! upload, `a_b_csv`).
//!
//! The run claims a name for the first file it reaches and checks the table before sending
//! a byte (`upload::redivis::attempt`, steps 1 and 3): a name the table holds for another
//! file, or that another file of the run claimed, fails the file for good with a reason
//! naming both. From the local files and the ledger alone, the holder of a name is:
//! 1. the uploaded file the ledger records under it, whose upload the table keeps, unless
//!    the run deletes that copy (a folder with `on_delete = "delete"` whose deletions the
//!    mass-delete guard lets run): the deletion frees the name, and the run tries the
//!    file that collided with it again;
//! 2. else the first of the files the run uploads that the dry run's walk reached: which
//!    one the run reaches first follows the order of its own scan, which the dry run
//!    cannot know, so of two new files it names one.
//!
//! Every other file the run uploads under that name fails. Only Redivis can tell a file
//! index table, whose files keep their own names and do not collide: the reason says so.
//!
//! Memory: the names of the files the plan uploads (the plan holds those already), and the
//! holders the ledger names among them; the ledger is walked once, not held.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

use crate::config::{FolderConfig, Target};
use crate::queue::Store;
use crate::upload::redivis::names::{collision_message, escape};

/// What the reason adds, as only Redivis knows whether the table is a file index table.
const UNLESS_FILE_INDEX: &str =
    " (unless the table is a file index table, whose files keep their own names)";

/// The names a folder feeding a Redivis table would upload.
pub(super) struct Names {
    table: String,
    /// The files the plan uploads (now or once settled), by relative path, grouped by
    /// escaped name, in the order the walk reached them.
    wanted: BTreeMap<String, Vec<String>>,
}

impl Names {
    /// For a folder feeding a Redivis table; `None` for any other.
    pub(super) fn of(folder: &FolderConfig) -> Option<Names> {
        match &folder.target {
            Target::RedivisTable(table) => Some(Names {
                table: table.clone(),
                wanted: BTreeMap::new(),
            }),
            Target::KifsDirectory { .. } => None,
        }
    }

    /// Notes a file the plan uploads.
    pub(super) fn want(&mut self, rel: &str) {
        self.wanted
            .entry(escape(rel))
            .or_default()
            .push(rel.to_string());
    }

    /// The files the run would fail for taking a name another file holds, each with the
    /// run's reason. `ledger` is the store whose ledger the run keeps (`None` when it
    /// drops it); `freed` holds the files whose copies the run deletes first.
    pub(super) fn collisions(
        self,
        ledger: Option<&Store>,
        folder: &str,
        freed: &BTreeSet<String>,
    ) -> Result<Vec<(String, String)>, String> {
        let uploaded = match ledger {
            Some(store) => self.uploaded_holders(store, folder, freed)?,
            None => BTreeMap::new(),
        };
        let mut failing = Vec::new();
        for (escaped, rels) in &self.wanted {
            let holder = uploaded.get(escaped).unwrap_or(&rels[0]);
            for rel in rels.iter().filter(|rel| *rel != holder) {
                let reason = collision_message(rel, holder, escaped, &self.table);
                failing.push((rel.clone(), format!("{reason}{UNLESS_FILE_INDEX}")));
            }
        }
        Ok(failing)
    }

    /// Step 1: per wanted name, the uploaded file of the ledger holding it, when the run
    /// keeps its copy.
    fn uploaded_holders(
        &self,
        store: &Store,
        folder: &str,
        freed: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut holders = BTreeMap::new();
        if self.wanted.is_empty() {
            return Ok(holders);
        }
        store
            .visit_uploads(folder, "", |rel, _| {
                let escaped = escape(rel);
                if self.wanted.contains_key(&escaped) && !freed.contains(rel) {
                    holders.entry(escaped).or_insert_with(|| rel.to_string());
                }
                ControlFlow::Continue(())
            })
            .map_err(|err| err.to_string())?;
        Ok(holders)
    }
}
