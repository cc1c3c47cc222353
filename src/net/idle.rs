//! The idle watchdog and the bodies it watches: a request during which no byte moved for
//! `idle_timeout` is abandoned as transient, in either direction.
//!
//! "Moved" means a piece of the request body taken by the connection, the answer's headers
//! arriving, or a piece of the answer's body arriving. Waiting for the bandwidth limit is
//! not a stall (the wait is ours), so it pushes the deadline back by the wait.
//!
//! 1. [`Activity`] holds the time of the last movement.
//! 2. The request body ([`MeteredBody`]) cuts every frame into pieces, reserves each one's
//!    slot with the bandwidth limit, waits for it, and touches the activity whenever the
//!    connection asks for the next piece (so the previous one has gone out).
//! 3. The sender races the request against [`Activity::stalled`]; when that wins, the
//!    request is dropped, which closes its connection: a stalled server never holds a worker
//!    longer than the idle timeout, whether it stopped reading the body or never answers.
//! 4. The answer's body ([`WatchedBody`]) has its own timer, reset by every piece; when it
//!    fires, the read fails with a `TimedOut` I/O error whose message names the timeout,
//!    and the stall counts as a transient failure of the remote (its health, when given).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::bandwidth::Bandwidth;
use crate::upload::health::RemoteHealth;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// When bytes last moved for one request.
pub struct Activity {
    origin: Instant,
    /// Milliseconds after `origin`; may lie ahead of now while a bandwidth wait runs.
    last_ms: AtomicU64,
    idle: Duration,
}

impl Activity {
    pub fn new(idle: Duration) -> Arc<Activity> {
        Arc::new(Activity {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            idle,
        })
    }

    /// Bytes moved now.
    pub fn touch(&self) {
        self.touch_at(Instant::now());
    }

    /// Counts `at` (possibly in the future) as a movement.
    fn touch_at(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.origin).as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for the idle timeout.
    pub async fn stalled(&self) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.origin + last + self.idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// The error a stalled answer body ends with.
pub fn stalled_error(idle: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "stalled: no byte moved for {} (idle_timeout)",
            humantime::format_duration(idle)
        ),
    )
}

/// A request body paced by the bandwidth limit and watched for progress (module doc, 2).
pub struct MeteredBody {
    inner: reqwest::Body,
    /// The part of the current frame not handed out yet.
    rest: Bytes,
    /// A piece waiting for its slot.
    waiting: Option<(Pin<Box<Sleep>>, Bytes)>,
    bandwidth: Arc<Bandwidth>,
    activity: Arc<Activity>,
}

impl MeteredBody {
    pub fn new(inner: reqwest::Body, bandwidth: Arc<Bandwidth>, activity: Arc<Activity>) -> Self {
        MeteredBody {
            inner,
            rest: Bytes::new(),
            waiting: None,
            bandwidth,
            activity,
        }
    }

    /// The next piece of `rest`: ready now, or parked until its slot.
    fn next_piece(&mut self) -> Option<Bytes> {
        let len = self.rest.len().min(self.bandwidth.piece_size());
        let piece = self.rest.split_to(len);
        let now = Instant::now();
        let wait = self.bandwidth.reserve(len, now);
        // Asked for more: what was handed out before has left.
        self.activity.touch();
        if wait.is_zero() {
            return Some(piece);
        }
        self.activity.touch_at(now + wait);
        self.waiting = Some((Box::pin(tokio::time::sleep_until(now + wait)), piece));
        None
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some((sleep, _)) = &mut this.waiting {
                ready!(sleep.as_mut().poll(cx));
                let (_, piece) = this.waiting.take().expect("a piece is waiting");
                this.activity.touch();
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            if !this.rest.is_empty() {
                match this.next_piece() {
                    Some(piece) => return Poll::Ready(Some(Ok(Frame::data(piece)))),
                    None => continue,
                }
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                Some(Err(err)) => return Poll::Ready(Some(Err(err.into()))),
                None => {
                    this.activity.touch();
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.waiting.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.rest.len() + self.waiting.as_ref().map_or(0, |(_, p)| p.len());
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held as u64);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held as u64);
        }
        hint
    }
}

/// An answer body whose reads fail once nothing arrived for the idle timeout (module doc, 4).
pub struct WatchedBody {
    inner: reqwest::Body,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    health: Option<Arc<RemoteHealth>>,
}

impl WatchedBody {
    pub fn new(inner: reqwest::Body, idle: Duration) -> Self {
        WatchedBody {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            health: None,
        }
    }

    /// The same body, reporting a stall to `health` as a transient failure.
    pub fn reporting_to(mut self, health: Arc<RemoteHealth>) -> Self {
        self.health = Some(health);
        self
    }
}

impl Body for WatchedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = Instant::now() + this.idle;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(frame.map(|result| result.map_err(Into::into)))
            }
            Poll::Pending => {
                ready!(this.timer.as_mut().poll(cx));
                let stalled = stalled_error(this.idle);
                if let Some(health) = this.health.take() {
                    health.failed(&format!("the answer {stalled}"));
                }
                Poll::Ready(Some(Err(Box::new(stalled))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BandwidthConfig;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn activity_stalls_only_after_the_idle_timeout_without_movement() {
        let activity = Activity::new(Duration::from_secs(10));
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(6)).await;
        activity.touch();
        activity.stalled().await;
        assert_eq!(started.elapsed(), Duration::from_secs(16));
    }

    #[tokio::test(start_paused = true)]
    async fn a_paced_body_keeps_the_rate_and_its_waits_are_not_stalls() {
        let bandwidth = Bandwidth::new(BandwidthConfig {
            limit: Some(64 << 10),
            schedule: None,
        });
        let activity = Activity::new(Duration::from_secs(1));
        let data = Bytes::from(vec![7u8; 640 << 10]);
        let body = MeteredBody::new(
            reqwest::Body::from(data.clone()),
            bandwidth,
            Arc::clone(&activity),
        );
        assert_eq!(body.size_hint().exact(), Some(640 << 10));
        let started = Instant::now();
        let watch = async {
            activity.stalled().await;
            Instant::now()
        };
        let collect = async { body.collect().await.expect("the body reads").to_bytes() };
        tokio::select! {
            sent = collect => {
                assert_eq!(sent, data);
                // 80 pieces of 8 KiB at 64 KiB/s: the last one starts 79 × 125 ms after
                // the first, less the 250 ms an idle line makes up for.
                let elapsed = started.elapsed().as_secs_f64();
                assert!((elapsed - 9.625).abs() < 0.01, "{elapsed}");
            }
            at = watch => panic!("stalled after {:?} while pacing", at - started),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_stops_arriving_fails_after_the_idle_timeout() {
        let (mut sender, body) = hyper_body_channel();
        let mut watched = WatchedBody::new(body, Duration::from_secs(5));
        sender.push(Bytes::from_static(b"first"));
        let first = watched.frame().await.expect("a frame").expect("no error");
        assert_eq!(first.into_data().expect("data"), "first");
        let started = Instant::now();
        let err = watched
            .frame()
            .await
            .expect("an end")
            .expect_err("the body stalls");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(err.to_string().contains("no byte moved for 5s"), "{err}");
        drop(sender);
    }

    /// A body fed by hand, one piece at a time; it never ends while the sender lives.
    struct Feeder(tokio::sync::mpsc::UnboundedSender<Bytes>);

    impl Feeder {
        fn push(&mut self, bytes: Bytes) {
            self.0.send(bytes).expect("the body is alive");
        }
    }

    fn hyper_body_channel() -> (Feeder, reqwest::Body) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|bytes| (Ok::<_, io::Error>(bytes), rx))
        });
        (Feeder(tx), reqwest::Body::wrap_stream(stream))
    }
}
