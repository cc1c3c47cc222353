//! Redivis upload names: the escaping rule (protocol §2) and collision detection.
//!
//! Redivis addresses an upload by its *escaped* name: characters other than letters,
//! digits and `_` become `_`, runs of `_` collapse, leading and trailing `_` drop, and case
//! is ignored. So `a.b.csv`, `a_b.csv` and `A-B.csv` are the same upload (`a_b_csv`). Two
//! local files that escape alike must not overwrite each other: the first one to claim the
//! escaped name in a table keeps it for the life of the process (unless its file vanishes);
//! the remote check (an upload already in the table under another name) covers earlier
//! runs.

use std::collections::HashMap;
use std::sync::Mutex;

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

    /// Gives `name`'s claim up (its file vanished).
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

    #[test]
    fn the_table_s_own_holder_takes_the_name_over() {
        let names = NameRegistry::default();
        assert_eq!(names.claim("o.d:next.t", "a.b.csv"), Ok("a_b_csv".into()));
        assert_eq!(names.take_over("o.d:next.t", "A-B.csv"), "a_b_csv");
        assert_eq!(names.claim("o.d:next.t", "a.b.csv"), Err("A-B.csv".into()));
        assert_eq!(names.claim("o.d:next.t", "A-B.csv"), Ok("a_b_csv".into()));
    }
}
