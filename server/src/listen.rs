//! The data server's connections: accepting them (plain or TLS), and what one may cost.
//!
//! Our own accept loop rather than `axum::serve`, which has no knobs: hyper's header read
//! timeout (which also closes idle keep-alive connections, since hyper starts it whenever it
//! waits for a request head), a deadline on reading a body, a cap on open connections, a
//! `Content-Length` check before any body byte is read, a deadline on writing a response,
//! idle connections closed early when the cap is nearly reached, and accept errors (EMFILE)
//! that do not spin.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

/// What one connection may cost.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Longest time to send a request head, and longest idle time between requests.
    pub header_timeout: Duration,
    /// Longest time to send a request body, from the end of its head.
    pub body_timeout: Duration,
    /// Longest time to write a response, from its first byte: a client that asks for a large
    /// version and never reads holds its connection no longer than that.
    pub write_timeout: Duration,
    /// Connections open at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Largest body a request may declare or send.
    pub max_body_bytes: usize,
}

/// Turns an accepted TCP stream into the stream HTTP is spoken on (TLS or not).
pub trait Accept: Clone + Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(
        &self,
        tcp: tokio::net::TcpStream,
    ) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

/// Plain HTTP.
#[derive(Clone)]
pub struct Plain;

impl Accept for Plain {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self, tcp: tokio::net::TcpStream) -> std::io::Result<Self::Stream> {
        Ok(tcp)
    }
}

/// Listens on `addr` with a backlog of 4096 (the kernel may cap it at somaxconn) rather
/// than std's 128 or tokio's 1024: a burst of connections, the herd at an activation time
/// or many idle ones, then waits in the queue instead of in SYN retries a second apart.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(4096)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the address resolves to nothing",
        )
    }))
}

/// Raises the soft open-file limit to the hard one: each connection is a descriptor, and
/// the soft default (often 1024) would make accept fail with EMFILE under a few idle
/// clients. Returns the soft limit in force and the hard one.
pub fn raise_nofile_limit() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    Some((lim.rlim_cur, lim.rlim_max))
}

/// Past this share of `--max-connections` (in tenths), connections idle for
/// [`PRESSURE_IDLE`] are closed, so new check-ins do not wait for the header timeout.
const PRESSURE_TENTHS: usize = 9;
const PRESSURE_IDLE: Duration = Duration::from_secs(1);

/// When a connection last moved a byte, shared between its stream and its task.
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
    /// Requests being handled: a long-poll check-in moves no byte while it is held, and is
    /// not idle.
    handling: AtomicU64,
}

/// Counts one request in [`Activity::handling`] while it lives.
struct Handling(Arc<Activity>);

impl Handling {
    fn new(activity: Arc<Activity>) -> Handling {
        activity.handling.fetch_add(1, Ordering::Relaxed);
        Handling(activity)
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.touch();
        self.0.handling.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        if self.handling.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

/// The stream a connection speaks HTTP on, which records activity and fails a response
/// write that outlasts its deadline (hyper has no write timeout).
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    write_timeout: Duration,
    /// Armed by a response's first write, cleared when the next request's bytes arrive.
    write_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Tracked<S> {
    /// `bytes`: whether this call writes bytes, which starts the deadline; hyper flushes
    /// between requests too, and a handler's time before its first byte does not count.
    fn write_poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        bytes: bool,
        io: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>>
    where
        S: Unpin,
    {
        let timeout = self.write_timeout;
        if bytes && self.write_deadline.is_none() {
            self.write_deadline = Some(Box::pin(tokio::time::sleep(timeout)));
        }
        if self
            .write_deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready())
        {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the response took longer than {timeout:?} to write (--write-timeout)"),
            )));
        }
        let r = io(Pin::new(&mut self.inner), cx);
        if r.is_ready() {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
            self.write_deadline = None;
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_poll(cx, !buf.is_empty(), |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let bytes = bufs.iter().any(|b| !b.is_empty());
        self.write_poll(cx, bytes, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.write_poll(cx, false, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn error_response(status: StatusCode, message: String) -> Response<Body> {
    let body =
        serde_json::to_vec(&lockstep::wire::ErrorBody { error: message }).unwrap_or_default();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // The body is not read: the connection cannot carry another request.
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// A request body that fails once its deadline passes, so a client that declares a body
/// and sends it slowly (or never) holds its connection no longer than that.
struct Deadline {
    inner: Incoming,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body took longer than {0:?} to arrive (--body-timeout)")]
pub struct BodyTimeout(Duration);

impl hyper::body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(axum::Error::new)));
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            let timeout = self.timeout;
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimeout(timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// What every request goes through before the router: the declared length, the body's
/// deadline and the peer's address (for the audit log and the logs).
async fn handle(
    app: axum::Router,
    limits: ConnLimits,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared {
        if len > limits.max_body_bytes as u64 {
            return Ok(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request declares a body of {len} bytes; the limit is {} (--max-body-bytes)",
                    limits.max_body_bytes
                ),
            ));
        }
    }
    let mut req = req.map(|inner| {
        Body::new(Deadline {
            inner,
            sleep: Box::pin(tokio::time::sleep(limits.body_timeout)),
            timeout: limits.body_timeout,
        })
    });
    req.extensions_mut().insert(ConnectInfo(peer));
    app.oneshot(req).await
}

/// Serves `app` on `listener` until `shutdown` completes, then lets open requests finish.
pub async fn serve<A: Accept>(
    listener: TcpListener,
    acceptor: A,
    app: axum::Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Whether open connections are past PRESSURE_TENTHS of the cap; set at each accept, and
    // only a hint: each connection checks the count itself.
    let (pressure_tx, pressure_rx) = watch::channel(false);
    let open = {
        let permits = permits.clone();
        move || limits.max_connections - permits.available_permits()
    };
    let crowded = move |open: usize| open * 10 > limits.max_connections * PRESSURE_TENTHS;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let (done_tx, done_rx) = watch::channel(());
    let mut last_warned: Option<Instant> = None;
    let mut warn = |message: String| {
        // At most one line a second: an accept error or a full house repeats fast.
        if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            tracing::warn!("{message}");
            last_warned = Some(Instant::now());
        }
    };
    let mut stopping = stop_rx.clone();
    loop {
        if permits.available_permits() == 0 {
            warn(format!(
                "{} connections open (--max-connections): new ones wait until one closes",
                limits.max_connections
            ));
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopping.wait_for(|s| *s) => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: back off rather than spin; the connections
                    // waiting get their turn as others close.
                    warn(format!("cannot accept a connection: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopping.wait_for(|s| *s) => break,
        };
        let _ = tcp.set_nodelay(true);
        pressure_tx.send_if_modified(|p| std::mem::replace(p, crowded(open())) != *p);
        let (acceptor, app, mut stop, done, mut pressure, open) = (
            acceptor.clone(),
            app.clone(),
            stop_rx.clone(),
            done_rx.clone(),
            pressure_rx.clone(),
            open.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let _done = done;
            // The TLS handshake is part of sending the head: bounded by the same time.
            let stream =
                match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "connection refused in its handshake: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "handshake timed out");
                        return;
                    }
                };
            let activity = Arc::new(Activity {
                base: Instant::now(),
                last_ms: AtomicU64::new(0),
                handling: AtomicU64::new(0),
            });
            let stream = Tracked {
                inner: stream,
                activity: activity.clone(),
                write_timeout: limits.write_timeout,
                write_deadline: None,
            };
            let service = {
                let activity = activity.clone();
                hyper::service::service_fn(move |req| {
                    let handling = Handling::new(activity.clone());
                    let answer = handle(app.clone(), limits, peer, req);
                    async move {
                        let answer = answer.await;
                        drop(handling);
                        answer
                    }
                })
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let idle_limit = PRESSURE_IDLE.min(limits.header_timeout);
            let mut not_before = Instant::now();
            loop {
                // Under pressure, wake once this connection could have been idle long enough.
                let crowded_and_idle = async {
                    let _ = pressure.wait_for(|p| *p).await;
                    let at = Instant::now() + idle_limit.saturating_sub(activity.idle_for());
                    tokio::time::sleep_until(at.max(not_before).into()).await;
                };
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, "connection ended: {e}");
                        }
                        return;
                    }
                    _ = stop.wait_for(|s| *s) => {
                        conn.as_mut().graceful_shutdown();
                        break;
                    }
                    _ = crowded_and_idle => {
                        // The hint may be stale (connections closed since the last accept),
                        // or this one busy: then look again a while later.
                        if crowded(open()) && activity.idle_for() >= idle_limit {
                            // Closes it now if it waits for a request, after its response
                            // otherwise.
                            tracing::debug!(%peer, "idle connection closed: near --max-connections");
                            conn.as_mut().graceful_shutdown();
                            break;
                        }
                        not_before = Instant::now() + idle_limit;
                    }
                }
            }
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    drop(done_rx);
    // Every connection task holds a receiver; all gone means all finished.
    done_tx.closed().await;
}
