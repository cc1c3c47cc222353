//! The budget at the exact boundaries of its steps, then against the emulator's own
//! sliding-window limiter in simulated time: four workers sending as fast as the budget
//! lets them, for several windows.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::emulator::redivis::ratelimit::{Limiter, Verdict};

const SECOND: Duration = Duration::from_secs(1);

fn config(limit: u64, window_s: u64) -> PacerConfig {
    PacerConfig {
        initial_limit: limit,
        window: Duration::from_secs(window_s),
        default_block: Duration::from_secs(10),
    }
}

fn announced(limit: u64, remaining: u64) -> Announced {
    Announced {
        limit: Some(limit),
        remaining: Some(remaining),
    }
}

#[test]
fn the_announced_remainder_sets_the_credits_less_the_requests_in_flight() {
    let start = Instant::now();
    let mut budget = Budget::new(config(100, 100));
    let sent: Vec<u64> = (0..3)
        .map(|_| budget.try_take(start).expect("a fresh budget has credits"))
        .collect();
    // The server has 1,000 and 997 are left when it answers the last request; the two
    // before it are still in flight and may be counted after it.
    budget.answered(start, sent[2], announced(1000, 997));
    assert_eq!(budget.credits, 995);
    // The first one's answer may have been counted before the third: the answer that came
    // since it was sent, and the one in flight, may be missing from its count. Another
    // client spent the budget meanwhile: 0 left.
    budget.answered(start, sent[0], announced(1000, 0));
    assert_eq!(budget.credits, -2);
    assert!(budget.try_take(start).is_err());
}

#[test]
fn a_credit_comes_back_exactly_one_window_after_its_answer() {
    let start = Instant::now();
    let mut budget = Budget::new(config(2, 10));
    let first = budget.try_take(start).expect("credit 1");
    budget.answered(start, first, announced(2, 1));
    let second = budget.try_take(start + SECOND).expect("credit 2");
    budget.answered(start + SECOND, second, announced(2, 0));
    let just_before = start + 10 * SECOND - Duration::from_millis(1);
    assert_eq!(budget.try_take(just_before), Err(Some(start + 10 * SECOND)));
    assert!(budget.try_take(start + 10 * SECOND).is_ok());
    assert_eq!(
        budget.try_take(start + 10 * SECOND),
        Err(Some(start + 11 * SECOND)),
        "the second answer's credit comes back a second later"
    );
}

#[test]
fn answers_the_server_no_longer_counts_leave_the_log() {
    let start = Instant::now();
    let mut budget = Budget::new(config(100, 100));
    for i in 0..5 {
        let seq = budget.try_take(start).expect("credits");
        budget.answered(start + i * SECOND, seq, announced(100, 95 + 4 - i as u64));
    }
    assert_eq!(budget.log.len(), 5);
    // The server counts one request only: the other four left its (shorter) window.
    let seq = budget.try_take(start + 6 * SECOND).expect("credits");
    budget.answered(start + 6 * SECOND, seq, announced(100, 99));
    assert_eq!(budget.log.len(), 1);
    assert_eq!(budget.credits, 99);
}

#[test]
fn a_disabled_limit_never_paces() {
    let start = Instant::now();
    let mut budget = Budget::new(config(3, 100));
    for i in 0..50 {
        let seq = budget
            .try_take(start)
            .unwrap_or_else(|_| panic!("request {i} is paced"));
        budget.answered(start, seq, announced(3, 3));
    }
    assert!(budget.log.is_empty());
}

#[test]
fn a_429_from_the_limiter_blocks_until_retry_after_and_lengthens_the_window() {
    let start = Instant::now();
    let mut budget = Budget::new(config(2, 10));
    let first = budget.try_take(start).expect("credit");
    budget.answered(start, first, announced(2, 1));
    let second = budget.try_take(start).expect("credit");
    budget.refused(start + SECOND, second, Some(30 * SECOND), announced(2, 0));
    assert_eq!(
        budget.window(),
        32 * SECOND,
        "the oldest answer counts 31 s, and a margin"
    );
    assert_eq!(
        budget.try_take(start + 30 * SECOND),
        Err(Some(start + 31 * SECOND))
    );
    assert!(budget.try_take(start + 31 * SECOND).is_ok(), "one may go");
}

#[test]
fn a_429_without_rate_limit_headers_only_blocks() {
    let start = Instant::now();
    let mut budget = Budget::new(config(100, 10));
    let first = budget.try_take(start).expect("credit");
    budget.answered(start, first, announced(100, 99));
    let second = budget.try_take(start).expect("credit");
    budget.refused(start, second, Some(60 * SECOND), Announced::default());
    assert_eq!(
        budget.window(),
        10 * SECOND,
        "a proxy's 429 teaches nothing"
    );
    assert_eq!(
        budget.try_take(start + SECOND),
        Err(Some(start + 60 * SECOND))
    );
    let mut unpaced = Budget::new(config(100, 10));
    let seq = unpaced.try_take(start).expect("credit");
    unpaced.refused(start, seq, None, Announced::default());
    assert_eq!(unpaced.try_take(start), Err(Some(start + 10 * SECOND)));
}

#[test]
fn a_budget_spent_elsewhere_sends_one_request_a_window_after_the_last_answer() {
    let start = Instant::now();
    let mut budget = Budget::new(config(100, 10));
    let seq = budget.try_take(start).expect("credit");
    // Nothing of ours is counted, yet nothing remains: another client spent it all.
    budget.answered(start, seq, announced(100, 0));
    budget.log.clear();
    assert_eq!(
        budget.try_take(start + SECOND),
        Err(Some(start + 10 * SECOND))
    );
    assert!(budget.try_take(start + 10 * SECOND).is_ok());
}

// ---- simulated time against the emulator's limiter -----------------------------------------

/// What happened over a simulated run.
#[derive(Debug, Default)]
struct Run {
    accepted: u64,
    /// Times (s since the start) of the 429s.
    refused_at: Vec<f64>,
    window: Duration,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A worker wants to send.
    Ready(usize),
    /// Request `seq` of a worker reaches the server.
    Arrive(usize, u64),
    /// Its answer reaches the worker: what remains, or the 429's `Retry-After` (s).
    Answer(usize, u64, Result<u32, u64>),
}

/// `workers` send API requests back to back through one budget, against the emulator's
/// limiter of `max` per `window`, with latencies of 5–80 ms each way, for `duration`.
fn simulate(max: u32, server_window: Duration, pacer: PacerConfig, duration: Duration) -> Run {
    let workers = 4;
    let start = Instant::now();
    let limiter = Limiter::new(max, server_window, true);
    let mut budget = Budget::new(pacer);
    let mut events: BinaryHeap<Reverse<(Duration, Event)>> = BinaryHeap::new();
    for worker in 0..workers {
        events.push(Reverse((Duration::ZERO, Event::Ready(worker))));
    }
    let mut waiting_for_answer: Vec<usize> = Vec::new();
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let mut latency = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        Duration::from_millis(5 + seed % 76)
    };
    let mut run = Run::default();
    while let Some(Reverse((at, event))) = events.pop() {
        if at > duration {
            break;
        }
        let now = start + at;
        match event {
            Event::Ready(worker) => match budget.try_take(now) {
                Ok(seq) => events.push(Reverse((at + latency(), Event::Arrive(worker, seq)))),
                Err(Some(wake)) => {
                    events.push(Reverse((wake.duration_since(start), Event::Ready(worker))))
                }
                Err(None) => waiting_for_answer.push(worker),
            },
            Event::Arrive(worker, seq) => {
                let verdict = match limiter.check_at(now.into_std()) {
                    Verdict::Allowed { remaining } => Ok(remaining),
                    Verdict::Limited { retry_after_secs } => Err(retry_after_secs),
                };
                events.push(Reverse((
                    at + latency(),
                    Event::Answer(worker, seq, verdict),
                )));
            }
            Event::Answer(worker, seq, verdict) => {
                match verdict {
                    Ok(remaining) => {
                        run.accepted += 1;
                        let headers = announced(u64::from(max), u64::from(remaining));
                        budget.answered(now, seq, headers);
                    }
                    Err(retry_after_secs) => {
                        run.refused_at.push(at.as_secs_f64());
                        let retry = Some(Duration::from_secs(retry_after_secs));
                        budget.refused(now, seq, retry, announced(u64::from(max), 0));
                    }
                }
                events.push(Reverse((at, Event::Ready(worker))));
                for waiting in waiting_for_answer.drain(..) {
                    events.push(Reverse((at, Event::Ready(waiting))));
                }
            }
        }
    }
    run.window = budget.window();
    run
}

#[test]
fn at_1000_per_60_s_the_budget_never_meets_a_429() {
    let run = simulate(
        1000,
        60 * SECOND,
        PacerConfig::default(),
        Duration::from_secs(600),
    );
    assert_eq!(run.refused_at, Vec::<f64>::new());
    // About the assumed 1,000 per 100 s, at most what the server allows.
    assert!(
        (5_500..=11_000).contains(&run.accepted),
        "{} accepted",
        run.accepted
    );
}

#[test]
fn at_100_per_100_s_the_budget_never_meets_a_429_and_uses_all_of_it() {
    let run = simulate(
        100,
        100 * SECOND,
        PacerConfig::default(),
        Duration::from_secs(1000),
    );
    assert_eq!(run.refused_at, Vec::<f64>::new());
    assert!(
        (950..=1_100).contains(&run.accepted),
        "{} accepted",
        run.accepted
    );
}

#[test]
fn a_window_longer_than_assumed_costs_429s_only_until_it_is_learned() {
    let run = simulate(
        100,
        300 * SECOND,
        PacerConfig::default(),
        Duration::from_secs(1800),
    );
    assert!(!run.refused_at.is_empty(), "the first window teaches");
    let last = run.refused_at.last().copied().unwrap_or_default();
    assert!(last < 400.0, "429s at {:?}", run.refused_at);
    assert!(run.window >= 300 * SECOND, "learned {:?}", run.window);
    assert!(run.accepted >= 550, "{} accepted", run.accepted);
}

#[tokio::test(start_paused = true)]
async fn waiting_callers_wake_when_a_credit_comes_back_or_an_answer_arrives() {
    let pacer = Pacer::new(config(2, 10));
    let start = Instant::now();
    pacer.acquire().await.answered(announced(2, 1));
    pacer.acquire().await.answered(announced(2, 0));
    pacer.acquire().await.answered(announced(2, 2));
    assert_eq!(
        Instant::now() - start,
        10 * SECOND,
        "the first credit came back"
    );
    // Both credits in flight, nothing logged: the next caller waits for their answers.
    let start = Instant::now();
    let (first, second) = (pacer.acquire().await, pacer.acquire().await);
    let waiter = async {
        pacer.acquire().await.answered(announced(2, 1));
        Instant::now()
    };
    let answers = async {
        tokio::time::sleep(SECOND).await;
        first.answered(announced(2, 1));
        tokio::time::sleep(SECOND).await;
        second.answered(announced(2, 2));
    };
    let (woke, ()) = tokio::join!(waiter, answers);
    assert_eq!(
        woke - start,
        2 * SECOND,
        "woken by the answer that freed a credit"
    );
}
