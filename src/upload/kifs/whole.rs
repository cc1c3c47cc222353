//! Whole-file uploads (steps 2 to 4 of the algorithm in the parent module's doc): one
//! file alone, or a batch of small files in one request, with the look at `/show/files`
//! that keeps a file whose earlier attempt was never confirmed from being sent twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::KifsBackend;
use super::body::{Source, StreamedRequest};
use super::wire::{ShowFilesRequest, ShowFilesResponse, UploadFilesResponse};
use crate::config::Target;
use crate::upload::chunk::FileReader;
use crate::upload::retry::{Attempts, CallScope};
use crate::upload::{
    Disposition, ErrorKind, UploadError, UploadJob, Uploaded, batch_scope, kifs::validate_name,
};

/// The jobs of one batch, their KiFS names and, once known, their outcomes.
struct Batch<'a> {
    jobs: &'a mut [UploadJob],
    /// Empty for a job whose name was refused locally.
    targets: Vec<String>,
    outcomes: Vec<Option<Result<Uploaded, UploadError>>>,
}

impl<'a> Batch<'a> {
    /// The batch of `jobs`; a job whose name is refused locally has its outcome already.
    fn new(jobs: &'a mut [UploadJob]) -> Batch<'a> {
        let mut targets = Vec::with_capacity(jobs.len());
        let mut outcomes = Vec::with_capacity(jobs.len());
        for job in jobs.iter() {
            match target_name(job) {
                Ok(target) => {
                    targets.push(target);
                    outcomes.push(None);
                }
                Err(err) => {
                    targets.push(String::new());
                    outcomes.push(Some(Err(err)));
                }
            }
        }
        Batch {
            jobs,
            targets,
            outcomes,
        }
    }

    /// The jobs still to send. Each job's fingerprint was read just before the first pass
    /// (the worker's checks), and opening the file for the body checks it again: a stat
    /// then would be a third look at the same moment; later passes look again.
    fn still_to_send(&mut self, first_pass: bool) -> Vec<usize> {
        let mut live = Vec::new();
        for (index, job) in self.jobs.iter().enumerate() {
            if self.outcomes[index].is_some() {
                continue;
            }
            if first_pass {
                live.push(index);
                continue;
            }
            match job.check_unchanged() {
                Ok(()) => live.push(index),
                Err(err) => self.outcomes[index] = Some(Err(err)),
            }
        }
        live
    }

    /// The outcome of every job of `live`, whose request `sent` was answered: the version
    /// the body carried. Each file's bytes were checked as they were read (one look at its
    /// open descriptor instead of a path lookup per file after the answer; a change since
    /// then is a new version, which the watcher offers); an empty file, which nothing
    /// read, is looked at now.
    fn record_sent(&mut self, live: &[usize], sent: &StreamedRequest) {
        for (position, &index) in live.iter().enumerate() {
            let job = &self.jobs[index];
            self.outcomes[index] = Some(carried_whole(sent, position, job).map(|()| {
                job.live.set(job.fingerprint.size, job.fingerprint.size);
                Uploaded {
                    remote: self.targets[index].clone(),
                    md5: None,
                }
            }));
        }
    }

    fn fail(&mut self, live: &[usize], err: &UploadError) {
        for &index in live {
            self.outcomes[index] = Some(Err(err.clone()));
        }
    }

    fn into_outcomes(self) -> Vec<Result<Uploaded, UploadError>> {
        self.outcomes
            .into_iter()
            .map(|o| o.expect("every job of a batch gets an outcome"))
            .collect()
    }
}

/// Whether a batch is sent again after a pass.
#[derive(PartialEq, Eq)]
enum Pass {
    Again,
    Over,
}

impl KifsBackend {
    /// Uploads whole files (each at most [`super::BATCH_LIMITS`]`.max_file_size`) in one
    /// request, all or nothing on the server. Per file: a bad name fails alone before
    /// anything is sent; a file that changed or vanished leaves the batch and the rest goes
    /// again at once; transient failures are retried with backoff for the whole batch. When
    /// the server refuses the batch for good, each file is sent alone, so that only the file
    /// at fault fails.
    pub async fn upload_batch(&self, jobs: &mut [UploadJob]) -> Vec<Result<Uploaded, UploadError>> {
        let mut kept = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            if let Err(err) = self.abandon_older_multipart(job).await {
                kept.push((i, err));
            }
        }
        let scope = batch_scope(jobs);
        let mut batch = Batch::new(jobs);
        for (i, err) in kept {
            batch.outcomes[i] = Some(Err(err));
        }
        self.settle_unconfirmed(&mut batch, &scope).await;
        let mut attempts =
            Attempts::new(&self.retry, &scope, "KiFS batch upload").watching(&self.health);
        let mut first_pass = true;
        loop {
            let live = batch.still_to_send(first_pass);
            let Some(&first) = live.first() else {
                break;
            };
            if first_pass && let Err(err) = batch.jobs[first].persist_claim() {
                batch.fail(&live, &err);
                break;
            }
            first_pass = false;
            if batch.jobs[first].is_shutting_down() {
                batch.fail(&live, &UploadError::Shutdown);
                break;
            }
            if self.send_batch(&mut batch, &live, &mut attempts).await == Pass::Over {
                break;
            }
        }
        batch.into_outcomes()
    }

    /// Sends the files of `live` in one request.
    async fn send_batch(
        &self,
        batch: &mut Batch<'_>,
        live: &[usize],
        attempts: &mut Attempts<'_>,
    ) -> Pass {
        let names: Vec<String> = live.iter().map(|&i| batch.targets[i].clone()).collect();
        let sources = live
            .iter()
            .map(|&i| Source::lazy(batch.jobs[i].path.clone(), batch.jobs[i].fingerprint))
            .collect();
        let request = StreamedRequest::new(self.encoding, &names, sources, &self.data_options());
        let sent: Result<UploadFilesResponse, UploadError> = self
            .send("/upload/files", request.body(), request.len())
            .await;
        let err = match sent {
            Ok(_) => {
                batch.record_sent(live, &request);
                return Pass::Over;
            }
            Err(err) => err,
        };
        if let Some((position, local)) = request.failure() {
            batch.outcomes[live[position]] = Some(Err(local));
            return Pass::Again;
        }
        self.after_batch_failure(batch, live, attempts, err).await
    }

    /// A transient failure pauses and sends again; a directory gone that its folder does
    /// not create refuses that directory's files at once ([`refuse_uncreated`]), and
    /// rejected credentials every file; another refusal of several files, or of a lone
    /// file for its missing directory, sends each alone; anything else is every file's
    /// outcome.
    async fn after_batch_failure(
        &self,
        batch: &mut Batch<'_>,
        live: &[usize],
        attempts: &mut Attempts<'_>,
        err: UploadError,
    ) -> Pass {
        let err = match err.disposition() {
            Some(Disposition::Retry { after }) => {
                match attempts.pause(after, &err.to_string()).await {
                    Ok(()) => return Pass::Again,
                    Err(gave_up) => gave_up.into_error(err),
                }
            }
            _ => err,
        };
        if let Some(pass) = refuse_uncreated(batch, live, &err) {
            return pass;
        }
        match err {
            // The server rejected the credentials, which are every file's: sending each
            // alone would be refused as many times.
            UploadError::Remote {
                disposition: Disposition::Permanent,
                kind: ErrorKind::Auth,
                status: Some(401),
                ..
            } => batch.fail(live, &err),
            UploadError::Remote {
                disposition: Disposition::Permanent,
                message,
                ..
            } if live.len() > 1 => {
                tracing::info!(files = live.len(), reason = %message, "KiFS refused a batch; sending its files one by one");
                for &index in live {
                    batch.outcomes[index] = Some(self.upload(&mut batch.jobs[index]).await);
                }
            }
            // A lone file: creating its missing directory is the single upload's to do.
            err if missing_directory_of(&err, &batch.jobs[live[0]]).is_some() => {
                let index = live[0];
                batch.outcomes[index] = Some(self.upload(&mut batch.jobs[index]).await);
            }
            err => batch.fail(live, &err),
        }
        Pass::Over
    }

    /// Step 2 for a batch: the outcome of each unconfirmed job whose bytes are already on
    /// KiFS is an upload; when the look fails, theirs is its error (nothing is sent).
    async fn settle_unconfirmed(&self, batch: &mut Batch<'_>, scope: &CallScope) {
        let unconfirmed: Vec<(usize, &str, &UploadJob)> = batch
            .jobs
            .iter()
            .enumerate()
            .filter(|(index, _)| batch.outcomes[*index].is_none())
            .map(|(index, job)| (index, batch.targets[index].as_str(), job))
            .collect();
        let outcomes: Vec<(usize, Result<Uploaded, UploadError>)> =
            match self.landed_before(&unconfirmed, scope).await {
                Ok(landed) => landed
                    .into_iter()
                    .map(|index| {
                        let remote = batch.targets[index].clone();
                        (index, Ok(Uploaded { remote, md5: None }))
                    })
                    .collect(),
                Err(err) => unconfirmed
                    .iter()
                    .filter(|(_, _, job)| job.unconfirmed_since_ms.is_some())
                    .map(|(index, _, _)| (*index, Err(err.clone())))
                    .collect(),
            };
        for (index, outcome) in outcomes {
            batch.outcomes[index] = Some(outcome);
        }
    }

    /// Step 2: which of `candidates` (index, target, job) are unconfirmed jobs whose bytes
    /// KiFS already holds. No request when none is unconfirmed.
    pub(super) async fn landed_before(
        &self,
        candidates: &[(usize, &str, &UploadJob)],
        scope: &CallScope,
    ) -> Result<Vec<usize>, UploadError> {
        let unconfirmed: Vec<&(usize, &str, &UploadJob)> = candidates
            .iter()
            .filter(|(_, _, job)| job.unconfirmed_since_ms.is_some())
            .collect();
        if unconfirmed.is_empty() {
            return Ok(Vec::new());
        }
        let request = ShowFilesRequest {
            paths: unconfirmed.iter().map(|(_, t, _)| t.to_string()).collect(),
            options: BTreeMap::new(),
        };
        let shown: ShowFilesResponse = self
            .call_with_retries("/show/files", &request, scope)
            .await?;
        let sizes: BTreeMap<&str, i64> = shown
            .file_names
            .iter()
            .map(String::as_str)
            .zip(shown.sizes.iter().copied())
            .collect();
        let mut landed = Vec::new();
        for (index, target, job) in unconfirmed {
            let size = job.fingerprint.size;
            let held = sizes
                .get(target)
                .is_some_and(|s| u64::try_from(*s) == Ok(size));
            let ambiguous = job
                .previous
                .as_ref()
                .is_some_and(|previous| previous.fingerprint.size == size);
            if held && !ambiguous {
                tracing::info!(
                    job = job.id.0,
                    target,
                    "already on KiFS from an attempt whose outcome was not recorded; not sent again"
                );
                job.live.set(size, size);
                landed.push(*index);
            }
        }
        Ok(landed)
    }

    /// Step 4: one whole-file request, retried in place (replacing a file is idempotent).
    pub(super) async fn upload_whole(
        &self,
        job: &UploadJob,
        reader: &Arc<FileReader>,
        target: &str,
    ) -> Result<(), UploadError> {
        job.check_unchanged()?;
        let source = Source::opened(
            Arc::clone(reader),
            job.path.clone(),
            job.fingerprint,
            0,
            reader.size,
        );
        let request = StreamedRequest::new(
            self.encoding,
            &[target.to_string()],
            vec![source],
            &self.data_options(),
        );
        let _: UploadFilesResponse = self
            .with_retries("/upload/files", &job.scope, || {
                self.call_streamed("/upload/files", &request)
            })
            .await?;
        carried_whole(&request, 0, job)
    }
}

/// Whether the answered request `sent` carried `job`'s version whole as its element at
/// `position`: checked as its bytes were read (module `body`), or, for an element nothing
/// read (an empty file), by a look at the file now.
fn carried_whole(
    sent: &StreamedRequest,
    position: usize,
    job: &UploadJob,
) -> Result<(), UploadError> {
    match sent.read_and_checked(position) {
        true => Ok(()),
        false => job.check_unchanged(),
    }
}

/// The KiFS name of a job's file: `<directory>/<relative path>`, checked locally.
fn target_name(job: &UploadJob) -> Result<String, UploadError> {
    let Target::KifsDirectory { directory, .. } = &job.target else {
        return Err(UploadError::permanent(
            ErrorKind::Config,
            "not a KiFS target",
        ));
    };
    let target = format!("{directory}/{}", job.rel);
    validate_name(&target).map_err(|why| UploadError::permanent(ErrorKind::Rejected, why))?;
    Ok(target)
}

/// When `err` says that the directory of `job`'s folder does not exist: that directory,
/// and whether the folder creates it.
fn missing_directory_of<'j>(err: &UploadError, job: &'j UploadJob) -> Option<(&'j str, bool)> {
    match &job.target {
        Target::KifsDirectory { directory, create }
            if super::folder::says_missing(err, directory) =>
        {
            Some((directory, *create))
        }
        _ => None,
    }
}

/// When `err` says that the directory of some of `live`'s files is gone and their folder
/// does not create it: those files get the folder check's own answer, which refuses their
/// folder, with no request each; the batch's other files are sent again (`Pass::Again`),
/// if any. `None` for any other failure.
fn refuse_uncreated(batch: &mut Batch<'_>, live: &[usize], err: &UploadError) -> Option<Pass> {
    let uncreated = |job: &UploadJob| match missing_directory_of(err, job) {
        Some((directory, false)) => Some(directory.to_string()),
        _ => None,
    };
    let directory = live
        .iter()
        .find_map(|&index| uncreated(&batch.jobs[index]))?;
    let (refused, others): (Vec<usize>, Vec<usize>) = live
        .iter()
        .partition(|&&index| uncreated(&batch.jobs[index]).as_ref() == Some(&directory));
    batch.fail(
        &refused,
        &super::folder::missing_directory(&directory, false),
    );
    Some(if others.is_empty() {
        Pass::Over
    } else {
        Pass::Again
    })
}
