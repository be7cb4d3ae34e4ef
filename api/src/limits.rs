//! Bounds on the HTTP side: connections served at once (`LimitedListener`: past the limit the
//! node stops accepting, so the kernel backlog pushes back), deadlines on every connection
//! (`ConnDeadlines`, enforced by `LimitedStream`), and requests in flight (past the limit a
//! request is shed at once with `429 overloaded`).
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

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::error::ApiError;

/// The deadlines of one API connection (see the module doc).
#[derive(Debug, Clone)]
pub struct ConnDeadlines {
    pub idle_timeout_ms: u64,
    pub write_timeout_ms: u64,
    /// Counts the connections closed on a deadline, by reason.
    pub closed: prometheus::IntCounterVec,
}

/// A TCP listener that holds one permit per open connection.
pub struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    deadlines: ConnDeadlines,
}

impl LimitedListener {
    pub fn new(inner: TcpListener, max_connections: usize, deadlines: ConnDeadlines) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(max_connections)),
            deadlines,
        }
    }

    /// The next connection, once one of `max_connections` is free.
    pub async fn accept(&mut self) -> LimitedStream {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        loop {
            match self.inner.accept().await {
                Ok((stream, _addr)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "could not set TCP_NODELAY on an API connection");
                    }
                    return LimitedStream {
                        stream,
                        _permit: permit,
                        deadlines: self.deadlines.clone(),
                        busy: Arc::new(AtomicUsize::new(0)),
                        last_progress: Instant::now(),
                        idle: None,
                        idle_closed: false,
                        write_stall: None,
                    };
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// A connection, the permit it holds until it closes, and its deadlines.
pub struct LimitedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    deadlines: ConnDeadlines,
    /// Requests of this connection whose handler is running (`Busy`): while one is, the
    /// connection is not idle however long the handler waits.
    busy: Arc<AtomicUsize>,
    last_progress: Instant,
    idle: Option<Pin<Box<Sleep>>>,
    /// The idle deadline passed: every later read is the end of the stream.
    idle_closed: bool,
    /// Armed at the first write that returns `Pending` after progress; dropped on progress.
    write_stall: Option<Pin<Box<Sleep>>>,
}

impl LimitedStream {
    /// The counter a request holds (`Busy::enter`) while its handler runs.
    pub fn busy_counter(&self) -> Arc<AtomicUsize> {
        self.busy.clone()
    }

    /// Bytes moved. The idle timer is not touched here (that would be a timer-wheel update per
    /// request): it is checked against `last_progress` when it fires, and moved then.
    fn progressed(&mut self) {
        self.last_progress = Instant::now();
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
                if this.busy.load(Ordering::Relaxed) > 0 {
                    // A handler runs: hyper reads again once it has answered, and the timer is
                    // checked then.
                    return Poll::Pending;
                }
                let idle = Duration::from_millis(this.deadlines.idle_timeout_ms);
                let last_progress = this.last_progress;
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
