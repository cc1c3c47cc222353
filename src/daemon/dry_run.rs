//! `upsync sync --once --dry-run`: what a one-shot run would do, per folder, without doing
//! any of it. It sends no request to any remote and leaves the state database as it was.
//!
//! 1. Refuse while a daemon (or a one-shot run) answers on the control socket: it holds
//!    the database and would change it under the look.
//! 2. Copy the state database to a temporary directory, holding the state dir's lock
//!    meanwhile, and open the copy (sled may write when it opens a database; the original
//!    is never opened). A lock held elsewhere refuses as step 1 does: its holder writes
//!    the database without answering on the socket yet (a daemon recovering at its start,
//!    `run --rebuild-state` filling a new database), and a copy would catch it half
//!    written. The copy is removed after;
//!    a database it cannot open is reported under the original's name.
//! 3. Walk each folder (symlinks not followed) and sort every file as the walk reaches it,
//!    looking its version up in the ledger (read as empty for a folder given another
//!    target since its uploads: a run drops it, `retarget`): excluded by the folder's
//!    globs, failed earlier
//!    (that version, until `upsync retry`), already uploaded, would fail (a name the
//!    remote refuses, which a run checks before sending), or to upload: new or changed,
//!    now or once settled (written within `settle`: a run waits for it, as
//!    `sync --once` waits for such files).
//! 4. In a folder with `on_delete = "delete"` (and its target unchanged) whose ledger
//!    holds more uploads than step 3
//!    found files for, walk its ledger a chunk at a time: each uploaded file with nothing
//!    at its path any more (`watch::Presence`, as the daemon decides when a scan ends) is a
//!    deletion of its remote copy; more than `max_delete` allows (or every uploaded file
//!    of the folder) would be held by the mass-delete guard, which the plan says. As the
//!    guard does, it leaves out of that count the deletions `upsync retry --deletes`
//!    approved: they run whatever the count.
//! 5. In a Redivis table, where an upload is named by its file's relative path under
//!    Redivis' escaping (`upload::redivis::names`), the run fails a file whose name
//!    another file holds: the one the ledger records (unless step 4's deletion of its
//!    copy runs and frees the name), else the first the walk reached of the files it
//!    uploads. Each such file moves from the uploads to would fail, with the run's reason
//!    (module [`collisions`]). Only Redivis can tell a file index table, where files keep
//!    their own names and do not collide, so the reason says that.
//!
//! Neither the folder's files nor its ledger are held in memory: the plan holds what it
//! lists (uploads, deletions, skipped files) and counts the files already up to date.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

mod collisions;

use super::control;
use super::status::StatusReport;
use crate::config::{Config, FolderConfig, OnDelete, Target};
use crate::fingerprint::Fingerprint;
use crate::queue::{FileKey, Job, JobKind, JobState, LedgerEntry, StateLock, Store, StoreError};
use crate::upload::redivis::names;
use crate::watch::{self, filter::Filter};

/// What a one-shot run would do.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Plan {
    pub folders: Vec<FolderPlan>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FolderPlan {
    pub folder: String,
    pub target: String,
    pub upload: Vec<PlannedUpload>,
    /// Files still being written (younger than `settle`), which a run waits for and uploads
    /// once settled.
    #[serde(default)]
    pub upload_once_settled: Vec<SettlingUpload>,
    pub delete: Vec<PlannedDelete>,
    /// Why the deletions would be held by the mass-delete guard, when they would.
    pub deletions_held: Option<String>,
    pub skipped: Vec<Skipped>,
    /// Files already uploaded in this version.
    pub up_to_date: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedUpload {
    pub path: String,
    pub size: u64,
    /// `new` (never uploaded) or `changed` (another version was).
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlingUpload {
    pub path: String,
    pub size: u64,
    /// `new` or `changed`, as for an upload.
    pub why: String,
    /// How long ago the file was last written, in whole seconds.
    pub written_s_ago: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedDelete {
    pub path: String,
    /// The remote copy that would be deleted.
    pub remote: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: String,
    pub why: String,
}

/// Plans a one-shot run of `config` (module doc).
pub async fn plan(config: &Config) -> Result<Plan, String> {
    let running = control::request::<StatusReport>(&config.state_dir, "GET", "/status", None)
        .await
        .unwrap_or(None);
    if running.is_some() {
        return Err(in_use(&config.state_dir));
    }
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let lock = StateLock::hold_existing(&config.state_dir).map_err(|err| match err {
            StoreError::Locked { .. } => held(&config.state_dir),
            other => other.to_string(),
        })?;
        let copy = StoreCopy::of(&config.state_dir)?;
        drop(lock);
        let store = Store::open(&copy.dir)
            .map_err(|err| about_the_original(err, &config.state_dir).to_string())?;
        let jobs = store.jobs().map_err(|err| err.to_string())?;
        let plan = config
            .folders
            .iter()
            .map(|folder| plan_folder(folder, &store, &jobs))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Plan { folders: plan })
    })
    .await
    .map_err(|err| format!("the dry run failed: {err}"))?
}

fn in_use(state_dir: &Path) -> String {
    format!(
        "upsync is running on state_dir {} (a daemon or a one-shot run): a dry run reads the \
         state database it holds; stop it first",
        state_dir.display()
    )
}

fn held(state_dir: &Path) -> String {
    format!(
        "another upsync holds state_dir {} without answering on its control socket (a daemon \
         starting or stopping, `run --rebuild-state`, or a command reading the database): a \
         dry run would copy the database while it may change; try again once it is done",
        state_dir.display()
    )
}

/// Step 2: a copy of `state_dir/db` in a temporary directory, removed when dropped.
struct StoreCopy {
    dir: PathBuf,
}

impl StoreCopy {
    fn of(state_dir: &Path) -> Result<StoreCopy, String> {
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("upsync-dry-run-{}-{stamp}", std::process::id()));
        let copy = StoreCopy { dir };
        let original = state_dir.join("db");
        if original.is_dir() {
            copy_tree(&original, &copy.dir.join("db")).map_err(|err| {
                format!(
                    "cannot copy the state database {}: {err}",
                    original.display()
                )
            })?;
        }
        Ok(copy)
    }
}

impl Drop for StoreCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An error about what the copied database holds (damaged, of an unknown format) is one
/// about the original: it names the original, which the operator acts on, not the
/// temporary copy, which is gone by the time the message is read.
fn about_the_original(err: StoreError, state_dir: &Path) -> StoreError {
    let original = state_dir.join("db");
    match err {
        StoreError::Open { detail, .. } => StoreError::Open {
            path: original,
            detail,
        },
        StoreError::UnknownFormat {
            found, expected, ..
        } => StoreError::UnknownFormat {
            path: original,
            found,
            expected,
        },
        other => other,
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.map_err(std::io::Error::other)?;
        let rel = entry
            .path()
            .strip_prefix(from)
            .map_err(std::io::Error::other)?;
        let dest = to.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&dest)?;
        } else if entry.file_type().is_file() {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

/// Steps 3 and 4 for one folder:
/// 1. what the folder's jobs and ledger already say: its failed versions, its approved
///    deletions, whether its target changed since its uploads;
/// 2. each file found, by what a run would do with it ([`file_verdict`]);
/// 3. the deletions of uploaded files that are gone ([`plan_deletions`]);
/// 4. the uploads whose remote names would collide, moved to the skipped
///    ([`skip_collisions`]).
fn plan_folder(folder: &FolderConfig, store: &Store, jobs: &[Job]) -> Result<FolderPlan, String> {
    let key = folder.path.to_string_lossy().into_owned();
    let filter = Filter::new(&folder.include, &folder.exclude).map_err(|err| err.to_string())?;
    let failed = failed_versions(jobs, &key);
    let approved = approved_deletions(jobs, &key);
    let mut plan = FolderPlan {
        folder: key.clone(),
        target: folder.target.describe(),
        ..FolderPlan::default()
    };
    // A folder given another target since its uploads: a run drops its ledger first.
    let retargeted =
        super::retarget::moved_since_upload(store, folder).map_err(|err| err.to_string())?;
    // Files found with an upload in the ledger: when that is all of its uploads, none is gone.
    let mut found_uploaded = 0;
    let mut names = collisions::Names::of(folder);
    for (rel, meta) in files_of(folder) {
        let file = FileKey::new(&key, &rel);
        let recorded = if retargeted {
            None
        } else {
            store.ledger_get(&file).map_err(|err| err.to_string())?
        };
        found_uploaded += u64::from(recorded.is_some());
        let path = file.path().display().to_string();
        match file_verdict(folder, &filter, &failed, &rel, &meta, recorded.as_ref()) {
            Verdict::Skip(why) => plan.skipped.push(Skipped { path, why }),
            Verdict::UpToDate => plan.up_to_date += 1,
            Verdict::Upload(why) => {
                if let Some(names) = &mut names {
                    names.want(&rel);
                }
                plan.add_upload(path, &meta, why, folder.settle);
            }
        }
    }
    let mut freed = BTreeSet::new();
    if folder.deletes.on_delete == OnDelete::Delete && folder.path.is_dir() && !retargeted {
        freed = plan_deletions(folder, store, found_uploaded, &approved, &mut plan)?;
    }
    if let Some(names) = names {
        let ledger = if retargeted { None } else { Some(store) };
        skip_collisions(names, ledger, &key, &freed, &mut plan)?;
    }
    Ok(plan)
}

/// The version of each of the folder's files whose job failed, and why, by relative path.
fn failed_versions<'a>(
    jobs: &'a [Job],
    folder: &str,
) -> BTreeMap<&'a str, (&'a Fingerprint, &'a str)> {
    jobs.iter()
        .filter(|job| job.key.folder == folder)
        .filter_map(|job| match &job.state {
            JobState::Failed { reason, .. } => {
                Some((job.key.rel.as_str(), (&job.fingerprint, reason.as_str())))
            }
            _ => None,
        })
        .collect()
}

/// What a run would do with one file found.
enum Verdict {
    /// Leave it, for this reason.
    Skip(String),
    /// Nothing: the ledger holds this version.
    UpToDate,
    /// Upload it: `new` or `changed`.
    Upload(&'static str),
}

/// Step 2: what a run would do with the file at `rel`, whose version the ledger holds as
/// `recorded`: leave it if the folder's patterns exclude it, its version failed, or its
/// name would be refused; nothing if that version is uploaded; else upload it.
fn file_verdict(
    folder: &FolderConfig,
    filter: &Filter,
    failed: &BTreeMap<&str, (&Fingerprint, &str)>,
    rel: &str,
    meta: &std::fs::Metadata,
    recorded: Option<&LedgerEntry>,
) -> Verdict {
    let fingerprint = Fingerprint::of(meta);
    if !accepted(filter, rel) {
        return Verdict::Skip("excluded by the folder's include/exclude".into());
    }
    if let Some((_, reason)) = failed
        .get(rel)
        .filter(|(version, _)| **version == fingerprint)
    {
        return Verdict::Skip(format!("failed earlier (until `upsync retry`): {reason}"));
    }
    if recorded.is_some_and(|entry| fingerprint.is_version_of(&entry.fingerprint)) {
        return Verdict::UpToDate;
    }
    if let Err(why) = name_the_remote_takes(folder, rel) {
        return Verdict::Skip(format!("would fail: {why}"));
    }
    Verdict::Upload(if recorded.is_some() { "changed" } else { "new" })
}

impl FolderPlan {
    /// An upload of the file at `path`: now, or once it has settled.
    fn add_upload(&mut self, path: String, meta: &std::fs::Metadata, why: &str, settle: Duration) {
        match younger_than(meta, settle) {
            Some(age) => self.upload_once_settled.push(SettlingUpload {
                path,
                size: meta.len(),
                why: why.into(),
                written_s_ago: age.as_secs(),
            }),
            None => self.upload.push(PlannedUpload {
                path,
                size: meta.len(),
                why: why.into(),
            }),
        }
    }
}

/// Step 4 (of a folder's plan): the planned uploads whose remote names would collide with
/// one another or with what the remote holds, moved to the skipped with the reason.
fn skip_collisions(
    names: collisions::Names,
    ledger: Option<&Store>,
    folder: &str,
    freed: &BTreeSet<String>,
    plan: &mut FolderPlan,
) -> Result<(), String> {
    for (rel, reason) in names.collisions(ledger, folder, freed)? {
        let path = FileKey::new(folder, &rel).path().display().to_string();
        plan.upload.retain(|upload| upload.path != path);
        plan.upload_once_settled
            .retain(|upload| upload.path != path);
        plan.skipped.push(Skipped {
            path,
            why: format!("would fail: {reason}"),
        });
    }
    Ok(())
}

/// Step 4: the deletions of the folder's uploaded files that are gone, and whether the
/// mass-delete guard would hold them; returns the relative paths whose copies the run
/// deletes (none when the guard holds them).
fn plan_deletions(
    folder: &FolderConfig,
    store: &Store,
    found_uploaded: u64,
    approved: &BTreeSet<&str>,
    plan: &mut FolderPlan,
) -> Result<BTreeSet<String>, String> {
    let key = plan.folder.clone();
    // The folder's tally counts its ledger entries: no walk of the ledger to count them.
    let uploads = store
        .tally(&key)
        .map_err(|err| err.to_string())?
        .counts
        .done;
    if uploads == found_uploaded {
        return Ok(BTreeSet::new());
    }
    let mut presence = watch::Presence::new(&folder.path);
    let mut approved_gone = 0;
    let mut gone = BTreeSet::new();
    store
        .visit_uploads(&key, "", |rel, entry| {
            if presence.is_gone(rel) {
                approved_gone += u64::from(approved.contains(rel));
                gone.insert(rel.to_string());
                plan.delete.push(PlannedDelete {
                    path: FileKey::new(&key, rel).path().display().to_string(),
                    remote: entry.remote,
                });
            }
            ControlFlow::Continue(())
        })
        .map_err(|err| err.to_string())?;
    let unapproved = plan.delete.len() as u64 - approved_gone;
    plan.deletions_held = guard_would_hold(folder, unapproved, uploads).map(|why| {
        if approved_gone == 0 {
            why
        } else {
            format!("{why}; the {approved_gone} approved by `upsync retry --deletes` run")
        }
    });
    if plan.deletions_held.is_some() {
        gone.retain(|rel| approved.contains(rel.as_str()));
    }
    Ok(gone)
}

/// The files of the folder keyed `folder` whose deletion `upsync retry --deletes` approved
/// and that wait to run: the guard neither counts nor holds them (module `watch::deletions`).
fn approved_deletions<'a>(jobs: &'a [Job], folder: &str) -> BTreeSet<&'a str> {
    jobs.iter()
        .filter(|job| job.key.folder == folder && job.kind == JobKind::Delete && job.approved)
        .filter(|job| matches!(job.state, JobState::Queued | JobState::RetryWait { .. }))
        .map(|job| job.key.rel.as_str())
        .collect()
}

/// Every regular file of the folder (not following symlinks), excluded ones included, by
/// `/`-separated relative path, as the walk reaches it; names that are not UTF-8 are left
/// out (they are never uploaded).
fn files_of(folder: &FolderConfig) -> impl Iterator<Item = (String, std::fs::Metadata)> + '_ {
    let depth = if folder.recursive { usize::MAX } else { 1 };
    walkdir::WalkDir::new(&folder.path)
        .max_depth(depth)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_file())
        .filter_map(|entry| {
            let rel = entry
                .path()
                .strip_prefix(&folder.path)
                .ok()?
                .to_str()?
                .to_string();
            Some((rel, entry.metadata().ok()?))
        })
}

/// The check of the file's remote name that a run makes before sending a byte (KiFS allows
/// only some characters and lengths; a Redivis upload needs a letter or digit in its
/// name), which fails the file for good.
fn name_the_remote_takes(folder: &FolderConfig, rel: &str) -> Result<(), String> {
    match &folder.target {
        Target::KifsDirectory { directory, .. } => {
            crate::upload::kifs::validate_name(&format!("{directory}/{rel}"))
        }
        Target::RedivisTable(_) if names::escape(rel).is_empty() => {
            Err(names::nameless_message(rel))
        }
        Target::RedivisTable(_) => Ok(()),
    }
}

/// Whether the file is a candidate: accepted itself, and in no excluded directory.
fn accepted(filter: &Filter, rel: &str) -> bool {
    filter.selects(rel, true)
}

/// How long ago the file was written, when that is within `settle`.
fn younger_than(meta: &std::fs::Metadata, settle: Duration) -> Option<Duration> {
    let age = meta.modified().ok()?.elapsed().unwrap_or_default();
    (age < settle).then_some(age)
}

/// Why the mass-delete guard would hold `deletions` of a folder with `uploaded` files.
fn guard_would_hold(folder: &FolderConfig, deletions: u64, uploaded: u64) -> Option<String> {
    let limit = folder.deletes.max_delete.limit(uploaded);
    if deletions >= 2 && deletions == uploaded {
        Some(format!(
            "every uploaded file of the folder ({uploaded}) is gone"
        ))
    } else if deletions > limit {
        Some(format!(
            "{deletions} of the folder's {uploaded} uploaded files are gone, more than max_delete = {} allows ({limit})",
            folder.deletes.max_delete
        ))
    } else {
        None
    }
}

/// The plan as text: per folder, each action and why, then the counts.
pub fn render(plan: &Plan) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for folder in &plan.folders {
        let _ = writeln!(out, "{} -> {}", folder.folder, folder.target);
        for file in &folder.upload {
            let _ = writeln!(
                out,
                "  upload  {:<8} {} ({})",
                file.why,
                file.path,
                bytesize::ByteSize(file.size)
            );
        }
        for file in &folder.upload_once_settled {
            let _ = writeln!(
                out,
                "  upload  {:<8} {} ({}) once settled (written {}s ago)",
                file.why,
                file.path,
                bytesize::ByteSize(file.size),
                file.written_s_ago
            );
        }
        for file in &folder.delete {
            let _ = writeln!(out, "  delete  {} (remote {})", file.path, file.remote);
        }
        if let Some(why) = &folder.deletions_held {
            let _ = writeln!(
                out,
                "  (these deletions would be held by the mass-delete guard: {why})"
            );
        }
        for file in &folder.skipped {
            let _ = writeln!(out, "  skip    {}: {}", file.path, file.why);
        }
        let _ = writeln!(
            out,
            "  {} to upload, {} to upload once settled, {} to delete, {} skipped, {} up to date",
            folder.upload.len(),
            folder.upload_once_settled.len(),
            folder.delete.len(),
            folder.skipped.len(),
            folder.up_to_date
        );
    }
    out.push_str("dry run: nothing was sent and the state database is unchanged\n");
    out
}
