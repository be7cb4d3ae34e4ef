//! Bounds on the HTTP side: connections served at once (`LimitedListener`), deadlines on every
//! connection (`ConnDeadlines`, enforced by `LimitedStream`), the size of a request's head
//! (`head_refusal`), and requests in flight (past the limit a request is shed at once with
//! `429 overloaded`).
//!
//! When all `max_connections` slots are taken, a new connection takes the slot of the one that
//! has moved no byte for longest: it is closed as soon as no request of it is in progress (at
//! once if it is idle; after its answer if not). So connections that hold a slot without using
//! it (idle keep-alives, a flood of sockets that never send a byte) cannot lock anyone out, not
//! even for the header-read deadline; a request in progress is never cut. Past the slots, the
//! listener holds at most one accepted connection while its slot frees; the rest wait in the
//! kernel backlog.
//!
//! The deadlines of a connection, so that no client can hold one of the `max_connections`
//! slots without using it:
//! - *idle*: no request in progress and no byte read or written for `idle_timeout_ms` (before
//!   the first request too): the connection is closed as if the client had closed it;
//! - *header*: a request's head must arrive whole within `header_read_timeout_ms` (hyper's own
//!   timer, from the connection's start or the request's first byte), so one byte a second
//!   does not keep a connection;
//! - *body*: a request's body must arrive within `body_read_timeout_ms` (`front_door` in
//!   `lib.rs`), or the answer is `408`;
//! - *write*: a response that makes no progress for `write_timeout_ms` (a client that does not
//!   read) closes the connection, which ends a streaming body such as a backup and frees what
//!   produces it.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::error::ApiError;

/// Most bytes of request headers, names and values together; past it `431 too_large`.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// hyper's read buffer per connection, in bytes: a request head that does not fit gets hyper's
/// own `431` (no body) and the connection is closed. Above what `MAX_HEADER_BYTES` and
/// `max_uri_bytes` allow together, so every head within reach of those checks gets the API's
/// error.
pub const MAX_HEAD_BUFFER_BYTES: usize = 64 * 1024;

/// Longest request target (path and query), in bytes: a key of `max_key_bytes` with every byte
/// percent-encoded, plus 4 KiB of query. Past it `414 too_large`.
pub fn max_uri_bytes(max_key_bytes: usize) -> usize {
    max_key_bytes * 3 + 4096
}

/// The refusal of a request whose head is over the limits, if it is.
pub fn head_refusal(request: &axum::extract::Request, max_key_bytes: usize) -> Option<ApiError> {
    let uri_bytes = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    let max_uri = max_uri_bytes(max_key_bytes);
    if uri_bytes > max_uri {
        return Some(ApiError::UriTooLong(format!(
            "a request target of {uri_bytes} bytes exceeds {max_uri} (max_key_bytes percent-encoded, plus 4 KiB of query)"
        )));
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    (header_bytes > MAX_HEADER_BYTES).then(|| {
        ApiError::HeadersTooLarge(format!(
            "request headers of {header_bytes} bytes exceed {MAX_HEADER_BYTES}"
        ))
    })
}

/// The deadlines of one API connection (see the module doc).
#[derive(Debug, Clone)]
pub struct ConnDeadlines {
    pub idle_timeout_ms: u64,
    pub write_timeout_ms: u64,
    /// Counts the connections closed on a deadline, by reason.
    pub closed: prometheus::IntCounterVec,
}

/// A TCP listener that holds one permit per open connection, and takes the slot of the
/// longest-unused connection for a new one when none is free (module doc).
pub struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    deadlines: ConnDeadlines,
    open: Arc<OpenConnections>,
}

/// The open connections, as the listener sees them.
struct OpenConnections {
    /// Time base of `ConnShared::last_progress_ms`.
    started: Instant,
    next_id: AtomicU64,
    by_id: Mutex<HashMap<u64, Arc<ConnShared>>>,
}

/// What a connection shares with its listener.
struct ConnShared {
    /// Requests whose handler is running (`Busy`).
    busy: Arc<AtomicUsize>,
    /// When a byte last moved, in ms since `OpenConnections::started`.
    last_progress_ms: AtomicU64,
    /// Set by the listener: close the connection once no request of it is in progress.
    evict: AtomicBool,
    /// Wakes the connection's pending read when `evict` is set.
    waker: AtomicWaker,
}

impl OpenConnections {
    /// Mark for closing the connection that has moved no byte for longest, preferring one with
    /// no request in progress (none if every connection is already marked).
    fn evict_longest_unused(&self) {
        let by_id = self.by_id.lock().expect("never poisoned");
        let victim = by_id
            .values()
            .filter(|conn| !conn.evict.load(Ordering::Relaxed))
            .min_by_key(|conn| {
                (
                    conn.busy.load(Ordering::Relaxed) > 0,
                    conn.last_progress_ms.load(Ordering::Relaxed),
                )
            });
        if let Some(conn) = victim {
            conn.evict.store(true, Ordering::Release);
            conn.waker.wake();
        }
    }

    fn millis_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
    }
}

impl LimitedListener {
    pub fn new(inner: TcpListener, max_connections: usize, deadlines: ConnDeadlines) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(max_connections)),
            deadlines,
            open: Arc::new(OpenConnections {
                started: Instant::now(),
                next_id: AtomicU64::new(0),
                by_id: Mutex::default(),
            }),
        }
    }

    /// The next connection, with one of the `max_connections` slots: a free one, or else the
    /// slot of the longest-unused connection, once that one has closed.
    pub async fn accept(&mut self) -> LimitedStream {
        if self.permits.available_permits() == 0 {
            // Wait for a slot to free or a newcomer to arrive, whichever comes first.
            tokio::select! {
                permit = acquire(&self.permits) => {
                    let stream = self.accept_tcp().await;
                    return self.open_stream(stream, permit);
                }
                stream = self.accept_tcp() => {
                    self.open.evict_longest_unused();
                    let permit = acquire(&self.permits).await;
                    return self.open_stream(stream, permit);
                }
            }
        }
        let permit = acquire(&self.permits).await;
        let stream = self.accept_tcp().await;
        self.open_stream(stream, permit)
    }

    async fn accept_tcp(&self) -> TcpStream {
        loop {
            match self.inner.accept().await {
                Ok((stream, _addr)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "could not set TCP_NODELAY on an API connection");
                    }
                    return stream;
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn open_stream(&self, stream: TcpStream, permit: OwnedSemaphorePermit) -> LimitedStream {
        let shared = Arc::new(ConnShared {
            busy: Arc::new(AtomicUsize::new(0)),
            last_progress_ms: AtomicU64::new(self.open.millis_at(Instant::now())),
            evict: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let id = self.open.next_id.fetch_add(1, Ordering::Relaxed);
        self.open
            .by_id
            .lock()
            .expect("never poisoned")
            .insert(id, shared.clone());
        LimitedStream {
            stream,
            _permit: permit,
            deadlines: self.deadlines.clone(),
            idle: None,
            idle_closed: false,
            write_stall: None,
            shared,
            open: self.open.clone(),
            id,
        }
    }
}

/// One connection slot, once free.
async fn acquire(permits: &Arc<Semaphore>) -> OwnedSemaphorePermit {
    permits
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed")
}

/// A connection, the permit it holds until it closes, and its deadlines.
pub struct LimitedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    deadlines: ConnDeadlines,
    idle: Option<Pin<Box<Sleep>>>,
    /// The idle deadline passed: every later read is the end of the stream.
    idle_closed: bool,
    /// Armed at the first write that returns `Pending` after progress; dropped on progress.
    write_stall: Option<Pin<Box<Sleep>>>,
    /// What the listener sees of this connection, under `id` in `open`: its requests in
    /// progress (while one is, the connection is not idle however long the handler waits) and
    /// when a byte last moved.
    shared: Arc<ConnShared>,
    open: Arc<OpenConnections>,
    id: u64,
}

impl Drop for LimitedStream {
    fn drop(&mut self) {
        self.open
            .by_id
            .lock()
            .expect("never poisoned")
            .remove(&self.id);
    }
}

impl LimitedStream {
    /// The counter a request holds (`Busy::enter`) while its handler runs.
    pub fn busy_counter(&self) -> Arc<AtomicUsize> {
        self.shared.busy.clone()
    }

    /// Bytes moved. The idle timer is not touched here (that would be a timer-wheel update per
    /// request): it is checked against `last_progress` when it fires, and moved then.
    fn progressed(&self) {
        self.shared
            .last_progress_ms
            .store(self.open.millis_at(Instant::now()), Ordering::Relaxed);
    }

    /// When a byte last moved (to the millisecond).
    fn last_progress(&self) -> Instant {
        let ms = self.shared.last_progress_ms.load(Ordering::Relaxed);
        self.open.started + Duration::from_millis(ms)
    }
}

/// Marks a connection busy while a request's handler runs.
pub struct Busy(Arc<AtomicUsize>);

impl Busy {
    pub fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Busy(counter.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.progressed();
                Poll::Ready(result)
            }
            Poll::Pending => {
                if this.idle_closed {
                    return Poll::Ready(Ok(()));
                }
                this.shared.waker.register(cx.waker());
                if this.shared.evict.load(Ordering::Acquire)
                    && this.shared.busy.load(Ordering::Relaxed) == 0
                {
                    // A newcomer needs this slot: read as the end of the stream.
                    this.idle_closed = true;
                    this.deadlines.closed.with_label_values(&["evicted"]).inc();
                    tracing::debug!("closing the longest-unused API connection for a new one");
                    return Poll::Ready(Ok(()));
                }
                if this.shared.busy.load(Ordering::Relaxed) > 0 {
                    // A handler runs: hyper reads again once it has answered, and the timer is
                    // checked then.
                    return Poll::Pending;
                }
                let idle = Duration::from_millis(this.deadlines.idle_timeout_ms);
                let last_progress = this.last_progress();
                let sleep = this.idle.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(last_progress + idle))
                });
                loop {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // Fired, but bytes may have moved since it was set: then move it.
                    let due = last_progress + idle;
                    if Instant::now() < due {
                        sleep.as_mut().reset(due);
                        continue;
                    }
                    // Read as the end of the stream: hyper closes the connection quietly.
                    this.idle_closed = true;
                    this.deadlines.closed.with_label_values(&["idle"]).inc();
                    tracing::debug!(
                        idle_timeout_ms = this.deadlines.idle_timeout_ms,
                        "closing an idle API connection"
                    );
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl LimitedStream {
    /// A write (or flush) that returned `Pending`: an error once writes have made no progress
    /// for `write_timeout_ms` (the timer starts at the first `Pending` after progress).
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = Duration::from_millis(self.deadlines.write_timeout_ms);
        let stall = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stall.as_mut().poll(cx).is_ready() {
            self.deadlines
                .closed
                .with_label_values(&["write_stall"])
                .inc();
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client read nothing for write_timeout_ms={}",
                    self.deadlines.write_timeout_ms
                ),
            )));
        }
        Poll::Pending
    }

    fn wrote<T>(
        &mut self,
        result: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Ready(result) => {
                self.write_stall = None;
                self.progressed();
                Poll::Ready(result)
            }
            Poll::Pending => self.stalled(cx),
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(result, cx)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.stream).poll_flush(cx);
        self.wrote(result, cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.wrote(result, cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(result, cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Requests in flight on the whole API.
#[derive(Clone)]
pub struct InFlight {
    permits: Arc<Semaphore>,
    max_in_flight_requests: usize,
}

impl InFlight {
    pub fn new(max_in_flight_requests: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_in_flight_requests)),
            max_in_flight_requests,
        }
    }

    /// A permit for one request while it runs, or the `429 overloaded` answer when every
    /// permit is taken (checked by the API's one middleware, `front_door` in `lib.rs`).
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            ApiError::Overloaded(format!(
                "{} requests already in flight on this node (max_in_flight_requests)",
                self.max_in_flight_requests
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    fn deadlines() -> ConnDeadlines {
        ConnDeadlines {
            idle_timeout_ms: 60_000,
            write_timeout_ms: 60_000,
            closed: prometheus::IntCounterVec::new(
                prometheus::Opts::new("closed", "closed connections"),
                &["reason"],
            )
            .unwrap(),
        }
    }

    /// With every slot taken, a newcomer gets the slot of the longest-unused connection with
    /// no request in progress: that one reads as closed, a busy older one is left alone.
    #[tokio::test]
    async fn a_newcomer_takes_the_slot_of_the_longest_unused_idle_connection() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = LimitedListener::new(tcp, 2, deadlines());
        let _client_a = TcpStream::connect(addr).await.unwrap();
        let busy_a = listener.accept().await;
        let _client_b = TcpStream::connect(addr).await.unwrap();
        let mut idle_b = listener.accept().await;
        // A is the oldest, but a request of it is in progress.
        let _request = Busy::enter(&busy_a.busy_counter());

        let _client_c = TcpStream::connect(addr).await.unwrap();
        let newcomer = tokio::spawn(async move { listener.accept().await });
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(30), idle_b.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0))), "B reads as closed: {read:?}");
        assert!(!busy_a.shared.evict.load(Ordering::Relaxed), "A is not cut");
        assert_eq!(
            idle_b
                .deadlines
                .closed
                .with_label_values(&["evicted"])
                .get(),
            1
        );
        drop(idle_b);
        let served = tokio::time::timeout(Duration::from_secs(30), newcomer)
            .await
            .expect("the newcomer gets B's slot")
            .unwrap();
        assert!(!served.shared.evict.load(Ordering::Relaxed));
    }
}
