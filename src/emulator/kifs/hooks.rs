//! Test hooks on the answers of `/upload/files`: per multipart operation (`none` for
//! whole-file uploads, `init`, `upload_part`, `complete`, `cancel`), hold a successful
//! answer back for a while, or lose it. Both strike *after* the request took effect, so the
//! client cannot know whether it did: the case a client's restart and reconcile logic must
//! settle (`docs/protocols/kifs.md` §6, item 37).
//!
//! - `--kifs-answer-delay OPERATION=MS` (repeatable): every successful answer to that
//!   operation waits MS milliseconds after the request was applied.
//! - `--kifs-lose-answer OPERATION=N` (repeatable): the first N successful requests of that
//!   operation are applied, then their connections are closed without an answer.
//!
//! Counted in `GET /kifs/_emulator/stats` as `answers_delayed` and `answers_lost`.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The operations a hook may name: the values of `multipart_operation`.
const OPERATIONS: [&str; 5] = ["none", "init", "upload_part", "complete", "cancel"];

/// `OPERATION=NUMBER`, as both hook flags take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationValue {
    pub operation: String,
    pub value: u64,
}

impl FromStr for OperationValue {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected = || {
            format!(
                "expected OPERATION=NUMBER with OPERATION one of {}, e.g. complete=4000",
                OPERATIONS.join(", ")
            )
        };
        let (operation, value) = s.split_once('=').ok_or_else(expected)?;
        if !OPERATIONS.contains(&operation) {
            return Err(expected());
        }
        let value = value.parse().map_err(|_| expected())?;
        Ok(OperationValue {
            operation: operation.to_string(),
            value,
        })
    }
}

/// What happens to a successful answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Answer,
    /// Close the connection: the client never hears that the request took effect.
    Lose,
}

/// The configured hooks and what they did so far.
#[derive(Debug, Default)]
pub struct AnswerHooks {
    delays: BTreeMap<String, Duration>,
    /// Answers still to lose, per operation.
    to_lose: Mutex<BTreeMap<String, u64>>,
    delayed: AtomicU64,
    lost: AtomicU64,
}

impl AnswerHooks {
    pub fn new(delays: &[OperationValue], losses: &[OperationValue]) -> AnswerHooks {
        AnswerHooks {
            delays: delays
                .iter()
                .map(|d| (d.operation.clone(), Duration::from_millis(d.value)))
                .collect(),
            to_lose: Mutex::new(
                losses
                    .iter()
                    .map(|l| (l.operation.clone(), l.value))
                    .collect(),
            ),
            ..AnswerHooks::default()
        }
    }

    /// Called once `operation` succeeded: waits out its delay, then says whether the
    /// answer is sent or lost.
    pub async fn after_success(&self, operation: &str) -> Fate {
        if let Some(delay) = self.delays.get(operation) {
            self.delayed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(*delay).await;
        }
        let mut to_lose = self.to_lose.lock().expect("hook lock is never poisoned");
        match to_lose.get_mut(operation) {
            Some(left) if *left > 0 => {
                *left -= 1;
                self.lost.fetch_add(1, Ordering::Relaxed);
                Fate::Lose
            }
            _ => Fate::Answer,
        }
    }

    pub fn delayed(&self) -> u64 {
        self.delayed.load(Ordering::Relaxed)
    }

    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}
