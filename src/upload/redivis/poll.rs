//! Waiting for posted uploads to finish processing, batched per table.
//!
//! After upload.post, Redivis imports the file (`queued` → `running` → `completed` |
//! `failed`). Every waiting worker registers its upload with the table's poller; one driver
//! task per table polls for all of them, so N workers waiting on one table cost one list
//! call per round instead of N GETs (protocol §3: ~100 requests per 100 s).
//!
//! Each waiter has its own interval (2 s doubling to 30 s). A round starts when the
//! earliest waiter is due, and takes in every waiter due within half its own interval (so
//! uploads posted one after another are polled together, not each alone). With one due
//! waiter, or fewer due waiters than the list took pages last time, the round GETs each
//! due upload; otherwise it walks the table's list
//! (stopping as soon as every waiter was seen) and resolves every waiter whose upload is
//! terminal, due or not. A `failed` upload seen in the list is fetched once more for its
//! `errorMessage` (list entries do not carry it), and so is one the list does not show
//! (a 404 then says it is gone, for instance with a released version).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::api::{ApiClient, ApiError, UploadResource};
use crate::upload::retry::CallScope;
use crate::upload::{ErrorKind, UploadError};

#[derive(Debug, Clone, Copy)]
pub struct PollConfig {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(30),
        }
    }
}

type Outcome = Result<UploadResource, ApiError>;

struct Waiter {
    upload: UploadResource,
    interval: Duration,
    due: Instant,
    tx: oneshot::Sender<Outcome>,
}

struct TableState {
    waiters: Vec<Waiter>,
    /// Pages the last list walk needed before it had seen every waiter.
    pages_last: usize,
    wake: Arc<Notify>,
}

pub struct Poller {
    api: Arc<ApiClient>,
    config: PollConfig,
    tables: Mutex<HashMap<String, TableState>>,
    /// The driver tasks' API calls are not tied to any one job's shutdown (a waiter that
    /// shuts down just leaves; the driver stops when no waiter is left).
    background: CallScope,
}

impl Poller {
    pub fn new(api: Arc<ApiClient>, config: PollConfig) -> Poller {
        Poller {
            api,
            config,
            tables: Mutex::new(HashMap::new()),
            background: CallScope::default(),
        }
    }

    /// Waits until `upload` is `completed` or `failed`, and returns its final resource;
    /// `None` when the table does not have it (any more): the server answers 404 for it.
    pub async fn wait(
        self: &Arc<Self>,
        table: &str,
        upload: UploadResource,
        scope: &CallScope,
    ) -> Result<Option<UploadResource>, UploadError> {
        if upload.is_terminal() {
            return Ok(Some(upload));
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut tables = self.tables.lock().expect("poller lock is not poisoned");
            let spawn = !tables.contains_key(table);
            let state = tables
                .entry(table.to_string())
                .or_insert_with(|| TableState {
                    waiters: Vec::new(),
                    pages_last: 0,
                    wake: Arc::new(Notify::new()),
                });
            state.waiters.push(Waiter {
                upload,
                interval: self.config.initial,
                due: Instant::now() + self.config.initial,
                tx,
            });
            state.wake.notify_one();
            if spawn {
                let poller = Arc::clone(self);
                let table = table.to_string();
                tokio::spawn(async move { poller.drive(table).await });
            }
        }
        tokio::select! {
            _ = scope.stop.cancelled() => Err(UploadError::Shutdown),
            outcome = rx => match outcome {
                Ok(Ok(upload)) => Ok(Some(upload)),
                Ok(Err(err)) if err.status == Some(404) => Ok(None),
                Ok(Err(err)) => Err(err.into()),
                Err(_) => Err(UploadError::retry(ErrorKind::Unexpected, "the upload status poller stopped")),
            },
        }
    }

    async fn drive(self: Arc<Self>, table: String) {
        loop {
            let (wake, due) = {
                let mut tables = self.tables.lock().expect("poller lock is not poisoned");
                let Some(state) = tables.get_mut(&table) else {
                    return;
                };
                state.waiters.retain(|w| !w.tx.is_closed());
                let Some(due) = state.waiters.iter().map(|w| w.due).min() else {
                    tables.remove(&table);
                    return;
                };
                (Arc::clone(&state.wake), due)
            };
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = wake.notified() => continue,
            }
            self.round(&table).await;
        }
    }

    async fn round(&self, table: &str) {
        let now = Instant::now();
        let (due, all, pages_last) = {
            let tables = self.tables.lock().expect("poller lock is not poisoned");
            let Some(state) = tables.get(table) else {
                return;
            };
            if !state.waiters.iter().any(|w| w.due <= now) {
                return;
            }
            // Waiters due within half their interval are polled with the one due now: a
            // steady stream of uploads, each posted a moment after the last, then shares
            // list rounds instead of each falling due alone for a GET of its own.
            let due: Vec<UploadResource> = state
                .waiters
                .iter()
                .filter(|w| w.due <= now + w.interval / 2)
                .map(|w| w.upload.clone())
                .collect();
            let all: Vec<UploadResource> = state.waiters.iter().map(|w| w.upload.clone()).collect();
            (due, all, state.pages_last)
        };
        if due.is_empty() {
            return;
        }
        let (outcomes, pages_used) = if due.len() >= 2 && due.len() > pages_last {
            self.poll_by_listing(table, &due, &all).await
        } else {
            (self.poll_one_by_one(&due).await, None)
        };
        self.settle(table, now, &due, outcomes, pages_used);
    }

    /// Polls the due uploads of `table` with one walk of its upload list (stopping once
    /// every waiter was seen); returns the finished ones and the pages the walk took.
    async fn poll_by_listing(
        &self,
        table: &str,
        due: &[UploadResource],
        all: &[UploadResource],
    ) -> (Vec<(UploadResource, Outcome)>, Option<usize>) {
        let mut outcomes: Vec<(UploadResource, Outcome)> = Vec::new();
        let mut pages_used = None;
        let mut seen: Vec<Option<UploadResource>> = vec![None; all.len()];
        let walked = self
            .api
            .for_each_upload_page(table, &self.background, &mut |page| {
                for remote in page {
                    for (slot, mine) in seen.iter_mut().zip(all) {
                        if mine.same_as(remote) {
                            *slot = Some(remote.clone());
                        }
                    }
                }
                seen.iter().any(Option::is_none)
            })
            .await;
        match walked {
            Ok(pages) => {
                pages_used = Some(pages);
                for (mine, remote) in all.iter().zip(seen) {
                    match remote {
                        Some(remote) if remote.is_failed() && remote.error_message.is_none() => {
                            let full = self.api.get_upload(&mine.uri, &self.background).await;
                            outcomes.push((mine.clone(), full));
                        }
                        Some(remote) if remote.is_terminal() => {
                            outcomes.push((mine.clone(), Ok(remote)));
                        }
                        Some(_) => {}
                        None => {
                            // Not in the list (the walk saw every page): asked alone,
                            // a 404 says it is gone; a list that lags says nothing.
                            match self.api.get_upload(&mine.uri, &self.background).await {
                                Ok(remote) if !remote.is_terminal() => {}
                                full => outcomes.push((mine.clone(), full)),
                            }
                        }
                    }
                }
            }
            Err(err) => {
                for mine in due {
                    outcomes.push((mine.clone(), Err(err.clone())));
                }
            }
        }
        (outcomes, pages_used)
    }

    /// Polls each due upload with a GET of its own; returns the finished ones.
    async fn poll_one_by_one(&self, due: &[UploadResource]) -> Vec<(UploadResource, Outcome)> {
        let mut outcomes: Vec<(UploadResource, Outcome)> = Vec::new();
        for mine in due {
            match self.api.get_upload(&mine.uri, &self.background).await {
                Ok(remote) if remote.is_terminal() => outcomes.push((mine.clone(), Ok(remote))),
                Ok(_) => {}
                Err(err) => outcomes.push((mine.clone(), Err(err))),
            }
        }
        outcomes
    }

    fn settle(
        &self,
        table: &str,
        started: Instant,
        due: &[UploadResource],
        outcomes: Vec<(UploadResource, Outcome)>,
        pages_used: Option<usize>,
    ) {
        let mut tables = self.tables.lock().expect("poller lock is not poisoned");
        let Some(state) = tables.get_mut(table) else {
            return;
        };
        if let Some(pages) = pages_used {
            state.pages_last = pages;
        }
        let mut outcomes: Vec<Option<(UploadResource, Outcome)>> =
            outcomes.into_iter().map(Some).collect();
        let mut kept = Vec::with_capacity(state.waiters.len());
        for mut waiter in std::mem::take(&mut state.waiters) {
            let outcome = outcomes
                .iter_mut()
                .find(|o| matches!(o, Some((mine, _)) if mine.same_as(&waiter.upload)))
                .and_then(Option::take);
            match outcome {
                Some((_, outcome)) => {
                    let _ = waiter.tx.send(outcome);
                }
                None => {
                    if due.iter().any(|d| d.same_as(&waiter.upload)) {
                        waiter.interval = (waiter.interval * 2).min(self.config.max);
                        waiter.due = started + waiter.interval;
                    }
                    kept.push(waiter);
                }
            }
        }
        state.waiters = kept;
    }
}

/// Text for a `failed` upload: Redivis' `errorMessage`, and its count of bad records
/// when it gives one.
pub fn failure_message(upload: &UploadResource) -> String {
    let bad_records = match upload.bad_records_count {
        Some(count) if count > 0 => format!(" ({count} bad records)"),
        _ => String::new(),
    };
    format!(
        "Redivis could not import upload {:?}: {}{bad_records}",
        upload.name.as_deref().unwrap_or(&upload.uri),
        upload
            .error_message
            .as_deref()
            .unwrap_or("(no errorMessage given)")
    )
}
