//! upsync mirrors local folders into Redivis tables and Kinetica KiFS directories,
//! every new or changed file exactly once and whole, across crashes and outages.
//!
//! Data flow: inotify events, a start-up scan and periodic rescans produce candidates
//! ([`watch`]); a candidate whose size and mtime have settled becomes a durable job in the
//! sled queue ([`queue`]); workers ([`daemon`]) claim jobs, taking the folders in turn and
//! only those whose remote takes files, and stream the files to a backend ([`upload`]),
//! persisting progress as the remote acknowledges it, and record the uploaded fingerprint
//! in the ledger so nothing is uploaded twice.
//!
//! - [`config`]: strict TOML schema, human units, secrets, validation with file:line errors.
//! - [`fingerprint`]: the (size, mtime, inode, ctime) identity of a local file version.
//! - [`watch`]: inotify watches, the settle rule, include/exclude filters, the scanner.
//! - [`queue`]: the sled store: jobs, ledger, progress; its invariants.
//! - [`upload`]: the backend interface, error dispositions, chunked reading, backoff, the
//!   one in-place retry policy, and the health of each remote.
//! - [`emulator`]: local KiFS and Redivis servers with scripted faults (tests, demo, bench).
//! - [`daemon`]: wiring, workers, shutdown, the control socket for status and retry,
//!   systemd notifications, one-shot sync; each folder's remote check, the probes of a
//!   remote that is down, fair claiming across folders, and the waits for remote imports.
//! - [`metrics`]: Prometheus metrics and their HTTP endpoint.
//! - [`rename`]: renames that never replace a file, and that swap two names.
//! - [`signals`]: SIGTERM/SIGINT (stop, a second one exits) and SIGHUP (reload).
//! - [`allocator`]: jemalloc, with one arena, and its controls.
//! - [`beat`]: the whole seconds an idle daemon's periodic checks share.

pub mod allocator;
pub mod beat;
pub mod config;
pub mod daemon;
pub mod emulator;
pub mod fingerprint;
pub mod metrics;
pub mod net;
pub mod queue;
pub mod rename;
pub mod signals;
#[cfg(test)]
mod test_logs;
pub mod upload;
pub mod watch;
