//! The multipart upload of one file larger than a part, as a driver over named steps
//! (step 5 of the algorithm in the parent module's doc). The state of the upload lives in
//! one [`Multipart`]; each step takes it a little further and returns the [`Step`] that
//! comes next. The steps, in order:
//!
//! 1. [`Multipart::look_for_saved`]: no saved state → `start`. Saved state for another
//!    target (the folder moved to another directory) → `discard_saved`, which cancels it
//!    in its own directory. Saved state for the same version (fingerprint, part size,
//!    target): one `/show/files` for the target; when
//!    `info.multipart_uploads` lists the saved UUID with its last part L → `send_part`
//!    from L + 1 (the server's count wins over ours). A job already `finalizing` whose
//!    UUID is no longer in progress while the target holds a file of the expected size →
//!    `reconcile_finalized`. Anything else → `discard_saved`.
//! 2. [`Multipart::discard_saved`]: cancel the saved UUID when the server still has it in
//!    progress (best effort: errors are ignored), forget the saved state → `start`.
//! 3. [`Multipart::start`]: a fresh UUID v4, persisted *before* `init` so that a crash
//!    after `init` can find (and cancel) it → `send_part`.
//! 4. [`Multipart::send_part`]: the next part, the file's fingerprint checked before and
//!    after it, its number persisted once acknowledged → `send_part` until the last part,
//!    then `finalize`.
//! 5. [`Multipart::finalize`]: persist `finalizing`, send `complete`, forget the saved
//!    state → done.
//! 6. [`Multipart::reconcile_finalized`]: the `complete` of an earlier attempt went
//!    through; forget the saved state, send nothing → done.
//! 7. [`KifsBackend::abandon_saved`], for an upload that will not be continued (the file
//!    vanished, changed or is unreadable, a step refused for good, a new version that goes
//!    whole): cancel the saved UUID (best effort) and forget the saved state, except
//!    during a shutdown, which keeps both (a stop that cuts the cancel short too).
//!
//! `init`, `upload_part` and `complete` are sent exactly once each: an ambiguous failure
//! (timeout, reset, 5xx) ends the attempt, and the next attempt's `look_for_saved` decides.
//!
//! What is durable after each step, and what a restart does, is in
//! `docs/upload-algorithms.md` ("KiFS upload").

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::KifsBackend;
use super::body::{Source, StreamedRequest};
use super::wire::{ShowFilesResponse, UploadFilesResponse};
use crate::fingerprint::Fingerprint;
use crate::queue::{JobId, Store};
use crate::upload::chunk::FileReader;
use crate::upload::retry::CallScope;
use crate::upload::{UploadError, UploadJob};

/// What survives a crash in the middle of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MultipartState {
    pub uuid: String,
    pub target: String,
    pub fingerprint: Fingerprint,
    pub part_size: u64,
    /// Parts 1..=last_part were acknowledged by the server.
    pub last_part: u64,
}

/// What the driver does next.
enum Step {
    Discard {
        saved: MultipartState,
        in_progress: bool,
    },
    Start,
    SendPart(MultipartState),
    Finalize(MultipartState),
    ReconcileFinalized,
    Done,
}

/// One multipart upload of `job`'s file to `target`.
struct Multipart<'a> {
    backend: &'a KifsBackend,
    job: &'a mut UploadJob,
    reader: &'a Arc<FileReader>,
    target: &'a str,
    /// Number of parts of the file.
    parts: u64,
}

impl KifsBackend {
    /// Uploads `job`'s file in parts: the driver over the steps of this module's doc.
    pub(super) async fn upload_multipart(
        &self,
        job: &mut UploadJob,
        reader: &Arc<FileReader>,
        target: &str,
    ) -> Result<(), UploadError> {
        let mut upload = Multipart {
            backend: self,
            parts: reader.size.div_ceil(self.part_size),
            job,
            reader,
            target,
        };
        let mut step = upload.look_for_saved().await?;
        loop {
            step = match step {
                Step::Discard { saved, in_progress } => {
                    upload.discard_saved(saved, in_progress).await?
                }
                Step::Start => upload.start().await?,
                Step::SendPart(state) => upload.send_part(state).await?,
                Step::Finalize(state) => upload.finalize(state).await?,
                Step::ReconcileFinalized => upload.reconcile_finalized()?,
                Step::Done => return Ok(()),
            };
        }
    }

    /// One multipart operation, sent exactly once: an ambiguous failure is returned as is.
    pub(super) async fn multipart_step(
        &self,
        target: &str,
        uuid: &str,
        operation: &str,
        part: Option<u64>,
        data: Option<Source>,
    ) -> Result<(), UploadError> {
        let mut options = self.data_options();
        options.insert("multipart_operation".into(), operation.into());
        options.insert("multipart_upload_uuid".into(), uuid.into());
        if let Some(part) = part {
            options.insert("multipart_upload_part_number".into(), part.to_string());
        }
        let request = StreamedRequest::new(
            self.encoding,
            &[target.to_string()],
            data.into_iter().collect(),
            &options,
        );
        let _: UploadFilesResponse = self.call_streamed("/upload/files", &request).await?;
        Ok(())
    }

    /// Step 7: the saved upload will never be continued (the file is gone, changed or
    /// unreadable, a step was refused for good): cancel it, so the server drops its parts,
    /// and forget it. Not during a shutdown: the stop must not wait on it, and an
    /// interrupted upload keeps its progress to resume. False when a stop kept it.
    pub(super) async fn abandon_saved(&self, job: &UploadJob) -> bool {
        self.abandon_saved_upload(&job.store, job.id, &job.scope)
            .await
    }

    /// [`KifsBackend::abandon_saved`] for a job that goes as a whole file: any multipart
    /// upload it saved is of an older, larger version, and no `init` of its target follows
    /// to cancel it on the server. Nothing to read for a job claimed without progress. A
    /// stop that keeps the upload ends the attempt: recording this one would forget it.
    pub(super) async fn abandon_older_multipart(&self, job: &UploadJob) -> Result<(), UploadError> {
        if job.saved_progress && !self.abandon_saved(job).await {
            return Err(UploadError::Shutdown);
        }
        Ok(())
    }

    /// [`KifsBackend::abandon_saved`] for job `id` of `store`, which need not be an upload
    /// any more (a deletion that replaced it). True once nothing is saved any more; false
    /// when a stop came first or cut the cancel short: the saved upload stays for the next
    /// start, which gives it up then (forgetting it now could leave it on the server).
    pub async fn abandon_saved_upload(&self, store: &Store, id: JobId, scope: &CallScope) -> bool {
        if scope.stop.is_cancelled() {
            return false;
        }
        let Ok(Some(raw)) = store.load_progress(id) else {
            return true;
        };
        // Anything else saved there is no multipart upload: nothing to cancel.
        if let Ok(saved) = serde_json::from_slice::<MultipartState>(&raw)
            && !self.cancel_upload(&saved, scope).await
        {
            return false;
        }
        if let Err(err) = store.clear_progress(id) {
            tracing::warn!(job = id.0, error = %err, "cannot forget an abandoned multipart upload");
        }
        true
    }

    /// Sends `cancel` for `saved`, best effort: one try, bounded like every request by the
    /// client's connect and idle timeouts and cut short by a stop (then false); a failure
    /// is only logged (the server cancels it anyway at the next `init` of its target, §3.1
    /// of `docs/protocols/kifs.md`).
    pub(super) async fn cancel_upload(&self, saved: &MultipartState, scope: &CallScope) -> bool {
        let cancel = self.multipart_step(&saved.target, &saved.uuid, "cancel", None, None);
        let cancelled = tokio::select! {
            biased;
            _ = scope.stop.cancelled() => return false,
            cancelled = cancel => cancelled,
        };
        match cancelled {
            Ok(()) => {
                tracing::debug!(target = %saved.target, uuid = %saved.uuid, "cancelled a multipart upload that will not be continued")
            }
            Err(err) => {
                tracing::debug!(target = %saved.target, uuid = %saved.uuid, error = %err, "cancel of a multipart upload failed")
            }
        }
        true
    }
}

impl Multipart<'_> {
    /// Step 1: where an earlier attempt left this upload, as the server sees it.
    async fn look_for_saved(&mut self) -> Result<Step, UploadError> {
        let Some(saved) = self.job.load_progress::<MultipartState>()? else {
            return Ok(Step::Start);
        };
        if saved.target != self.target {
            // Started before the folder moved to another directory of this server: the
            // target's `/show/files` cannot list it, and no `init` of the new target
            // cancels it, so it is cancelled where it was started, unseen (best effort).
            return Ok(Step::Discard {
                saved,
                in_progress: true,
            });
        }
        let same_version =
            saved.fingerprint == self.job.fingerprint && saved.part_size == self.backend.part_size;
        let shown = self.backend.show_file(self.target, &self.job.scope).await?;
        let in_progress = multipart_progress(&shown, &saved.uuid);
        if same_version {
            if let Some(last_part) = in_progress {
                tracing::info!(job = self.job.id.0, target = self.target, uuid = %saved.uuid, next_part = last_part + 1, parts = self.parts, "resuming multipart upload");
                return Ok(self.after_part(MultipartState { last_part, ..saved }));
            }
            if self.job.finalize_started && self.target_holds_this_size(&shown) {
                return Ok(Step::ReconcileFinalized);
            }
        }
        Ok(Step::Discard {
            saved,
            in_progress: in_progress.is_some(),
        })
    }

    /// Whether `/show/files` lists the target with the size of the job's file.
    fn target_holds_this_size(&self, shown: &ShowFilesResponse) -> bool {
        shown
            .file_names
            .iter()
            .zip(&shown.sizes)
            .any(|(name, size)| name == self.target && *size as u64 == self.job.fingerprint.size)
    }

    /// Step 2: the saved upload cannot continue; cancel it where the server still has it.
    async fn discard_saved(
        &mut self,
        saved: MultipartState,
        in_progress: bool,
    ) -> Result<Step, UploadError> {
        if in_progress {
            // Best effort: a new init for the same target cancels it on the server anyway.
            if !self.backend.cancel_upload(&saved, &self.job.scope).await {
                return Err(UploadError::Shutdown);
            }
        }
        self.job.clear_progress()?;
        Ok(Step::Start)
    }

    /// Step 3: a new upload, its UUID persisted before `init`.
    async fn start(&mut self) -> Result<Step, UploadError> {
        let state = MultipartState {
            uuid: uuid::Uuid::new_v4().to_string(),
            target: self.target.to_string(),
            fingerprint: self.job.fingerprint,
            part_size: self.backend.part_size,
            last_part: 0,
        };
        // Persisted before init, so a crash after init can find (and cancel) it.
        self.job.save_progress(&state)?;
        self.backend
            .multipart_step(self.target, &state.uuid, "init", None, None)
            .await?;
        Ok(self.after_part(state))
    }

    /// Step 4: the part after `state.last_part`, its number persisted once acknowledged.
    async fn send_part(&mut self, mut state: MultipartState) -> Result<Step, UploadError> {
        if self.job.is_shutting_down() {
            return Err(UploadError::Shutdown);
        }
        let part_size = self.backend.part_size;
        let part = state.last_part + 1;
        let offset = (part - 1) * part_size;
        let len = part_size.min(self.reader.size - offset);
        self.job.live.sending_from(offset);
        self.job.check_unchanged()?;
        let data = Source::opened(
            Arc::clone(self.reader),
            self.job.path.clone(),
            self.job.fingerprint,
            offset,
            len,
        );
        self.backend
            .multipart_step(
                self.target,
                &state.uuid,
                "upload_part",
                Some(part),
                Some(data),
            )
            .await?;
        self.job.check_unchanged()?;
        state.last_part = part;
        self.job.save_progress(&state)?;
        self.job.live.set(offset + len, self.reader.size);
        Ok(self.after_part(state))
    }

    /// The step after part `state.last_part` was acknowledged.
    fn after_part(&self, state: MultipartState) -> Step {
        if state.last_part < self.parts {
            Step::SendPart(state)
        } else {
            Step::Finalize(state)
        }
    }

    /// Step 5: `finalizing` persisted, then `complete`.
    async fn finalize(&mut self, state: MultipartState) -> Result<Step, UploadError> {
        self.job.mark_finalizing()?;
        self.backend
            .multipart_step(self.target, &state.uuid, "complete", None, None)
            .await?;
        self.job.clear_progress()?;
        Ok(Step::Done)
    }

    /// Step 6: an earlier attempt's `complete` went through; nothing is sent.
    fn reconcile_finalized(&mut self) -> Result<Step, UploadError> {
        tracing::info!(
            job = self.job.id.0,
            target = self.target,
            "multipart upload was completed before the restart"
        );
        self.job.clear_progress()?;
        // Every byte went in an earlier attempt: this one's rate is not the file's.
        self.job.live.sending_from(self.reader.size);
        Ok(Step::Done)
    }
}

/// The last part number the server reports for `uuid` in `info.multipart_uploads`, in the
/// emulator-defined layout (`docs/protocols/kifs.md` §6 item 30); `None` when absent or
/// unparsable.
pub(super) fn multipart_progress(shown: &ShowFilesResponse, uuid: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct InProgress {
        uuid: String,
        last_part_number: serde_json::Value,
    }
    let raw = shown.info.get("multipart_uploads")?;
    let uploads: Vec<InProgress> = serde_json::from_str(raw).ok()?;
    let entry = uploads.into_iter().find(|upload| upload.uuid == uuid)?;
    match entry.last_part_number {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}
