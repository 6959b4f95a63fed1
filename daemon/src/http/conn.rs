//! Per-connection limits: how long a client may take to send a request's headers, how long
//! a kept-alive connection may sit idle, and how many connections are served at once.
//!
//! hyper's own `header_read_timeout` arms a timer for every request, which costs a fifth of
//! the throughput on small requests. Here a connection has one timer, which only re-arms
//! when it fires: the reader records when a request's first byte arrives and the service
//! records when requests begin and end, in relaxed atomics that only this connection
//! touches, and the timer's wake-up reads them to find the real deadline.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::Duration,
};

use super::closing::Closed;

// tokio's clock, so that a test with paused time moves both the timer and the timestamps.
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

/// The limits a connection is held to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From accept (or the end of the previous response and the first byte of the next
    /// request) to the end of a request's headers; also bounds the TLS handshake.
    pub read: Duration,
    /// From the end of a response to the first byte of the next request.
    pub idle: Duration,
}

/// The reference point for the millisecond timestamps kept in atomics.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    millis(Instant::now())
}

fn millis(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(*EPOCH).as_millis()).unwrap_or(u64::MAX)
}

/// What a connection is doing, as far as its deadline is concerned.
#[derive(Debug)]
pub struct Activity {
    /// Requests whose service call has begun and not yet returned.
    in_flight: AtomicU32,
    /// Bytes of a request not yet handed to the service have arrived (or the connection is
    /// new): the read deadline runs from `pending_since`.
    pending: AtomicBool,
    pending_since: AtomicU64,
    /// When the last response was handed back.
    idle_since: AtomicU64,
    /// The connection speaks HTTP/2, whose frames between requests (PING, SETTINGS,
    /// WINDOW_UPDATE) are no request on its way: they leave the idle deadline running.
    multiplexed: AtomicBool,
    /// Dropped at its deadline: the transport resets rather than lingers (see [`Transport`]).
    expired: AtomicBool,
}

/// Why a connection was closed by its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// The request's headers (or the TLS handshake) took longer than the read timeout.
    Read,
    /// No new request within the idle timeout.
    Idle,
}

impl Activity {
    /// A new connection: it must send its first request's headers within the read timeout.
    pub fn new() -> Arc<Self> {
        let now = now_ms();
        Arc::new(Self {
            in_flight: AtomicU32::new(0),
            pending: AtomicBool::new(true),
            pending_since: AtomicU64::new(now),
            idle_since: AtomicU64::new(now),
            multiplexed: AtomicBool::new(false),
            expired: AtomicBool::new(false),
        })
    }

    fn bytes_arrived(&self) {
        // HTTP/2 frames a request's headers itself, and hyper bounds how many it holds; a
        // connection that sends only control frames is idle, not reading a request.
        if self.multiplexed.load(Relaxed) {
            return;
        }
        if self.in_flight.load(Relaxed) == 0 && !self.pending.load(Relaxed) {
            self.pending_since.store(now_ms(), Relaxed);
            self.pending.store(true, Relaxed);
        }
    }

    /// A request's headers are complete and its service call begins; the guard ends it.
    /// `http2`: the request came over HTTP/2.
    pub fn begin(self: &Arc<Self>, http2: bool) -> InFlight {
        if http2 && !self.multiplexed.load(Relaxed) {
            self.multiplexed.store(true, Relaxed);
        }
        self.in_flight.fetch_add(1, Relaxed);
        self.pending.store(false, Relaxed);
        InFlight(self.clone())
    }

    /// When the connection must be closed if nothing changes, and why; `None` while a
    /// request is being served (its body read has a timeout of its own).
    pub fn deadline(&self, limits: Limits) -> Option<(Instant, Expired)> {
        if self.in_flight.load(Relaxed) > 0 {
            return None;
        }
        let (since, limit, why) = if self.pending.load(Relaxed) {
            (self.pending_since.load(Relaxed), limits.read, Expired::Read)
        } else {
            (self.idle_since.load(Relaxed), limits.idle, Expired::Idle)
        };
        Some((*EPOCH + Duration::from_millis(since) + limit, why))
    }
}

/// A request in service; dropping it marks the connection idle when it was the last.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.0.idle_since.store(now_ms(), Relaxed);
        }
    }
}

/// A connection's transport, which can be made to reset when it is closed.
///
/// A connection dropped at its deadline is one whose peer stopped reading (or never sent
/// its request); closed the usual way, its unsent answers would stay queued in the kernel,
/// the socket orphaned in FIN-WAIT-1 for as long as the peer keeps its end open, holding
/// memory that `max_connections` no longer counts. With a zero linger, closing sends RST
/// and frees them at once.
pub trait Transport {
    fn reset_on_close(&self);
}

impl Transport for tokio::net::TcpStream {
    fn reset_on_close(&self) {
        if let Err(e) = self.set_zero_linger() {
            tracing::debug!(error = %e, "cannot set a zero linger on a connection");
        }
    }
}

impl Transport for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn reset_on_close(&self) {
        self.get_ref().0.reset_on_close();
    }
}

/// A connection's byte stream, noting when a request's first bytes arrive.
#[derive(Debug)]
pub struct Tracked<T: Transport> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: Transport> Tracked<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: Transport> Drop for Tracked<T> {
    fn drop(&mut self) {
        if self.activity.expired.load(Relaxed) {
            self.inner.reset_on_close();
        }
    }
}

impl<T: AsyncRead + Unpin + Transport> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin + Transport> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How long a connection past its deadline has to end after being asked to.
const GRACE: Duration = Duration::from_secs(1);

/// Drives `conn` until it ends or its deadline passes; returns why it was cut short. Once
/// `closed` is ready, `graceful` asks the connection to finish what it is serving and end.
///
/// At its deadline a connection is asked to end the same way, and dropped a second later if
/// it has not: HTTP/2 then sends GOAWAY and TLS its close_notify (RFC 9113 §6.8, RFC 8446
/// §6.1), so a client learns the connection is over, and which of its requests were taken,
/// rather than meeting a reset. (An idle HTTP/1 connection ends at once.) A request taken in
/// the meantime (one that crossed the GOAWAY, or a late head completed) is served to its end:
/// the drop waits for it.
pub async fn serve_until_deadline<F: Future>(
    conn: F,
    mut closed: Closed,
    graceful: impl FnOnce(Pin<&mut F>),
    activity: &Activity,
    limits: Limits,
) -> Result<F::Output, Expired> {
    tokio::pin!(conn);
    let mut graceful = Some(graceful);
    let mut expired = None;
    let first = activity
        .deadline(limits)
        .map_or(limits.idle, |_| limits.read);
    let timer = tokio::time::sleep(first);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            // Ended by itself, during the grace or not: an orderly close (FIN), whatever the
            // kernel still has to send.
            done = &mut conn => return expired.map_or(Ok(done), Err),
            () = &mut closed, if graceful.is_some() => {
                if let Some(graceful) = graceful.take() {
                    graceful(conn.as_mut());
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                if let Some(why) = expired {
                    if activity.deadline(limits).is_some() {
                        activity.expired.store(true, Relaxed);
                        return Err(why);
                    }
                    // Serving a request taken during the grace (its body read is bounded by
                    // the read timeout, its answer by nothing slow): looked at again a grace
                    // later.
                    timer.as_mut().reset(now + GRACE);
                    continue;
                }
                let next = match activity.deadline(limits) {
                    Some((at, why)) if at <= now => match graceful.take() {
                        Some(graceful) => {
                            graceful(conn.as_mut());
                            expired = Some(why);
                            now + GRACE
                        }
                        // Already ending (the daemon is stopping): no more to wait for.
                        None => {
                            activity.expired.store(true, Relaxed);
                            return Err(why);
                        }
                    },
                    Some((at, _)) => at,
                    // Serving a request: look again after the shorter of the two limits.
                    None => now + limits.read.min(limits.idle),
                };
                timer.as_mut().reset(next);
            }
        }
    }
}

/// Connection counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnStats {
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    pub read_timeouts: AtomicU64,
    pub idle_timeouts: AtomicU64,
    /// Times the accept loop found every `max_connections` slot taken.
    pub at_limit: AtomicU64,
}

impl ConnStats {
    pub fn expired(&self, why: Expired) {
        match why {
            Expired::Read => &self.read_timeouts,
            Expired::Idle => &self.idle_timeouts,
        }
        .fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        read: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    #[test]
    fn a_new_connection_has_the_read_deadline() {
        let a = Activity::new();
        let (at, why) = a.deadline(LIMITS).unwrap();
        assert_eq!(why, Expired::Read);
        assert!(at <= Instant::now() + LIMITS.read);
    }

    #[test]
    fn serving_has_no_deadline_and_then_idles() {
        let a = Activity::new();
        let guard = a.begin(false);
        assert!(a.deadline(LIMITS).is_none());
        drop(guard);
        assert_eq!(a.deadline(LIMITS).unwrap().1, Expired::Idle);
        a.bytes_arrived();
        assert_eq!(a.deadline(LIMITS).unwrap().1, Expired::Read);
    }

    /// HTTP/2 PINGs and WINDOW_UPDATEs between requests are no request on its way: they
    /// neither put the connection on the (shorter) read deadline nor extend its idle one.
    #[test]
    fn http2_frames_between_requests_leave_the_idle_deadline() {
        let a = Activity::new();
        drop(a.begin(true));
        let idle = a.deadline(LIMITS).unwrap();
        assert_eq!(idle.1, Expired::Idle);
        a.bytes_arrived();
        assert_eq!(a.deadline(LIMITS).unwrap(), idle);
    }

    #[test]
    fn overlapping_requests_stay_in_flight_until_the_last_ends() {
        let a = Activity::new();
        let (one, two) = (a.begin(false), a.begin(false));
        drop(one);
        assert!(a.deadline(LIMITS).is_none());
        drop(two);
        assert!(a.deadline(LIMITS).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_expires_after_the_read_timeout() {
        let a = Activity::new();
        let started = Instant::now();
        let closing = super::super::closing::Closing::new();
        let cut = serve_until_deadline(
            std::future::pending::<()>(),
            closing.watch(),
            |_| {},
            &a,
            LIMITS,
        )
        .await;
        assert_eq!(cut, Err(Expired::Read));
        assert!(started.elapsed() >= LIMITS.read);
    }

    /// At its deadline a connection is asked to end (GOAWAY, close_notify); one that ends
    /// is counted as expired, one that does not is dropped a grace period later.
    #[tokio::test(start_paused = true)]
    async fn at_its_deadline_a_connection_is_asked_to_end_then_dropped() {
        let closing = super::super::closing::Closing::new();
        let started = Instant::now();
        let (ask, asked) = tokio::sync::oneshot::channel::<()>();
        let mut ask = Some(ask);
        let asked_activity = Activity::new();
        let ended = serve_until_deadline(
            async move { drop(asked.await) },
            closing.watch(),
            |_| {
                if let Some(ask) = ask.take() {
                    let _ = ask.send(());
                }
            },
            &asked_activity,
            LIMITS,
        )
        .await;
        assert_eq!(ended, Err(Expired::Read));
        assert_eq!(started.elapsed(), LIMITS.read, "ended when asked");
        assert!(
            !asked_activity.expired.load(Relaxed),
            "ended by itself: closed in order, not reset"
        );

        let started = Instant::now();
        let deaf_activity = Activity::new();
        let deaf = serve_until_deadline(
            std::future::pending::<()>(),
            closing.watch(),
            |_| {},
            &deaf_activity,
            LIMITS,
        )
        .await;
        assert_eq!(deaf, Err(Expired::Read));
        assert_eq!(started.elapsed(), LIMITS.read + GRACE);
        assert!(
            deaf_activity.expired.load(Relaxed),
            "dropped: its transport resets on close"
        );

        // A request taken during the grace is not cut: the drop waits until it is served.
        let activity = Activity::new();
        let started = Instant::now();
        let serving = std::sync::Mutex::new(None);
        let served = serve_until_deadline(
            async {
                tokio::time::sleep(LIMITS.read + GRACE / 2).await;
                let guard = activity.begin(true);
                tokio::time::sleep(GRACE * 3).await;
                drop(guard);
                std::future::pending::<()>().await;
            },
            closing.watch(),
            |_| *serving.lock().unwrap() = Some(()),
            &activity,
            LIMITS,
        )
        .await;
        assert_eq!(served, Err(Expired::Read));
        assert!(serving.lock().unwrap().is_some(), "asked to end");
        assert!(
            started.elapsed() >= LIMITS.read + GRACE / 2 + GRACE * 3,
            "dropped after the request ended, at {:?}",
            started.elapsed()
        );
    }
}
