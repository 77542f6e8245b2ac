//! An async client for refreshd's API: HTTP/1.1 over the daemon's Unix socket.
//!
//! Retry policy: only what is provably safe is retried. A `GET` changes nothing, so it is
//! retried when the daemon cannot be reached (socket refused or missing: it is restarting) or
//! the connection breaks before a complete answer. A `POST` is retried under the same conditions
//! only because it carries an `Idempotency-Key`, the same on every attempt, with which refreshd
//! answers a repeat with the change the first attempt created instead of creating another.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::time::Instant;
use tokio_util::io::ReaderStream;

use crate::types::{
    Change, ChangeAction, ChangeRef, ErrorBody, ErrorKind, Forgotten, Hold, RefreshPlan,
    RefreshRequest, RefreshResult, Select, Snap, SnapAction, SnapStatus, Snapshot, SnapshotAction,
    SnapshotActionKind, StoreInstall, SystemInfo,
};

/// The header that makes a `POST` safe to repeat (docs/api.md, "Idempotency").
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Everything that can go wrong talking to refreshd. A cause is quoted in the message, not a
/// `source()` (a printed chain would repeat it).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer could be had: the socket is missing or refused, or the connection kept
    /// breaking, for longer than the retry window.
    #[error("cannot reach refreshd at {}: {error}; is refreshd running?", socket.display())]
    Unreachable { socket: PathBuf, error: io::Error },

    /// refreshd answered with an error. The message is the server's, meant for a person.
    #[error("{message}")]
    Api {
        status: u16,
        kind: ErrorKind,
        message: String,
        change: Option<u64>,
    },

    /// refreshd answered something this client cannot understand.
    #[error("unexpected answer from refreshd: {0}")]
    Protocol(String),

    /// A local file could not be read (the snap being uploaded).
    #[error("cannot read {}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// How long and how often to retry. The defaults suit a daemon that restarts in a second or
/// two.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// How long a request keeps retrying before the daemon counts as unreachable; also how
    /// long [`Watch`] waits for the first connection.
    pub window: Duration,
    /// How long [`Watch`] keeps reconnecting after a stream that was working broke.
    pub reconnect_window: Duration,
    /// The first pause between attempts; it doubles up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            window: Duration::from_secs(5),
            reconnect_window: Duration::from_secs(30),
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// A handle on refreshd's socket. Cheap to clone; each request opens its own connection.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    retry: RetryPolicy,
}

impl Client {
    pub fn new(socket: PathBuf) -> Self {
        Client {
            socket,
            retry: RetryPolicy::default(),
        }
    }

    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /v1/system-info`.
    pub async fn system_info(&self) -> Result<SystemInfo, ClientError> {
        self.get("/v1/system-info").await
    }

    /// `GET /v1/snaps`: every installed snap, sorted by name.
    pub async fn snaps(&self) -> Result<Vec<Snap>, ClientError> {
        self.get("/v1/snaps").await
    }

    /// `GET /v1/snaps/NAME`.
    pub async fn snap(&self, name: &str) -> Result<Snap, ClientError> {
        self.get(&format!("/v1/snaps/{}", encode(name))).await
    }

    /// `GET /v1/snaps/NAME/status`: what a refresh of NAME waits for, and its processes.
    pub async fn snap_status(&self, name: &str) -> Result<SnapStatus, ClientError> {
        self.get(&format!("/v1/snaps/{}/status", encode(name)))
            .await
    }

    /// `GET /v1/changes`: changes without their tasks, newest first.
    pub async fn changes(
        &self,
        select: Select,
        snap: Option<&str>,
    ) -> Result<Vec<Change>, ClientError> {
        let mut path = format!("/v1/changes?select={}", select.as_str());
        if let Some(snap) = snap {
            path.push_str("&snap=");
            path.push_str(&encode(snap));
        }
        self.get(&path).await
    }

    /// `GET /v1/changes/ID`: a change with its tasks.
    pub async fn change(&self, id: u64) -> Result<Change, ClientError> {
        self.get(&format!("/v1/changes/{id}")).await
    }

    /// `POST /v1/snaps`: uploads the snap file at `path`, streamed from disk, and returns the
    /// id of the install change.
    pub async fn install_file(
        &self,
        path: &Path,
        instance_name: Option<&str>,
    ) -> Result<u64, ClientError> {
        self.upload(path, instance_name, None).await
    }

    /// [`Client::install_file`], telling `sent` how far the upload got: `(bytes handed to the
    /// connection, size of the file)`, from 0 again if a broken connection makes it start over.
    pub async fn install_file_with_progress(
        &self,
        path: &Path,
        instance_name: Option<&str>,
        sent: tokio::sync::watch::Sender<(u64, u64)>,
    ) -> Result<u64, ClientError> {
        self.upload(path, instance_name, Some(sent)).await
    }

    async fn upload(
        &self,
        path: &Path,
        instance_name: Option<&str>,
        sent: Option<tokio::sync::watch::Sender<(u64, u64)>>,
    ) -> Result<u64, ClientError> {
        let mut uri = "/v1/snaps".to_string();
        if let Some(name) = instance_name {
            uri.push_str("?instance-name=");
            uri.push_str(&encode(name));
        }
        let req = Req::post(uri, Payload::File(path.to_path_buf(), sent));
        let change: ChangeRef = self.send(&req).await?;
        Ok(change.change)
    }

    /// `POST /v1/snaps {"name": NAME}`: installs NAME from refreshd's store; returns the change.
    pub async fn install_from_store(
        &self,
        name: &str,
        channel: Option<&str>,
    ) -> Result<u64, ClientError> {
        let body = StoreInstall {
            name: name.to_owned(),
            channel: channel.map(str::to_owned),
        };
        let req = Req::post("/v1/snaps".to_string(), Payload::json(&body));
        let change: ChangeRef = self.send(&req).await?;
        Ok(change.change)
    }

    /// `GET /v1/refresh`: the snaps with a newer revision in their channel; changes nothing.
    pub async fn refresh_plan(&self) -> Result<RefreshPlan, ClientError> {
        self.get("/v1/refresh").await
    }

    /// `POST /v1/refresh {"action": "refresh"}`: one refresh change per snap in `names`, or per
    /// snap with an update when `names` is empty (held snaps skipped); `channel` with exactly
    /// one name.
    pub async fn refresh_many(
        &self,
        names: &[String],
        channel: Option<&str>,
    ) -> Result<RefreshResult, ClientError> {
        let req = Req::post(
            "/v1/refresh".to_string(),
            Payload::json(&RefreshRequest::refresh(names, channel)),
        );
        self.send(&req).await
    }

    /// `POST /v1/refresh {"action": "hold"}`: holds refreshes of `names` (every installed snap
    /// when empty); returns those snaps.
    pub async fn hold(&self, names: &[String], hold: Hold) -> Result<Vec<Snap>, ClientError> {
        let req = Req::post(
            "/v1/refresh".to_string(),
            Payload::json(&RefreshRequest::hold(names, hold)),
        );
        self.send(&req).await
    }

    /// `POST /v1/refresh {"action": "unhold"}`: lifts the holds of `names` (of every installed
    /// snap when empty); returns those snaps.
    pub async fn unhold(&self, names: &[String]) -> Result<Vec<Snap>, ClientError> {
        let req = Req::post(
            "/v1/refresh".to_string(),
            Payload::json(&RefreshRequest::unhold(names)),
        );
        self.send(&req).await
    }

    /// `POST /v1/snaps/NAME {"action": "revert"}`: returns the id of the revert change.
    pub async fn revert(&self, name: &str, revision: Option<&str>) -> Result<u64, ClientError> {
        let req = Req::post(
            format!("/v1/snaps/{}", encode(name)),
            Payload::json(&SnapAction::revert(revision)),
        );
        let change: ChangeRef = self.send(&req).await?;
        Ok(change.change)
    }

    /// `POST /v1/snaps/NAME {"action": "remove"}`: returns the id of the remove change.
    pub async fn remove(&self, name: &str, purge: bool) -> Result<u64, ClientError> {
        let req = Req::post(
            format!("/v1/snaps/{}", encode(name)),
            Payload::json(&SnapAction::remove(purge)),
        );
        let change: ChangeRef = self.send(&req).await?;
        Ok(change.change)
    }

    /// `GET /v1/snapshots[?snap=NAME]`: the snapshots kept, oldest first.
    pub async fn snapshots(&self, snap: Option<&str>) -> Result<Vec<Snapshot>, ClientError> {
        match snap {
            Some(s) => self.get(&format!("/v1/snapshots?snap={}", encode(s))).await,
            None => self.get("/v1/snapshots").await,
        }
    }

    /// `POST /v1/snapshots/SET {"action": "restore"}`: returns the id of the restore change.
    pub async fn restore(&self, set: u64) -> Result<u64, ClientError> {
        let req = Req::post(
            format!("/v1/snapshots/{set}"),
            Payload::json(&SnapshotAction {
                action: SnapshotActionKind::Restore,
            }),
        );
        let change: ChangeRef = self.send(&req).await?;
        Ok(change.change)
    }

    /// `POST /v1/snapshots/SET {"action": "forget"}`: deletes it now.
    pub async fn forget(&self, set: u64) -> Result<Forgotten, ClientError> {
        let req = Req::post(
            format!("/v1/snapshots/{set}"),
            Payload::json(&SnapshotAction {
                action: SnapshotActionKind::Forget,
            }),
        );
        self.send(&req).await
    }

    /// `POST /v1/changes/ID {"action": "abort"}`: returns the change as it is after the abort
    /// was recorded.
    pub async fn abort(&self, id: u64) -> Result<Change, ClientError> {
        let req = Req::post(
            format!("/v1/changes/{id}"),
            Payload::json(&ChangeAction::abort()),
        );
        self.send(&req).await
    }

    /// Follows change `id` through `GET /v1/changes/ID/watch`: yields the current state, then
    /// every new state, and ends after the first ready one. A broken stream is reopened.
    pub fn watch(&self, id: u64) -> Watch {
        Watch {
            client: self.clone(),
            id,
            body: None,
            buf: Vec::new(),
            done: false,
            seen_any: false,
            broken_since: None,
            backoff: self.retry.first_backoff,
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(&Req::get(path.to_string())).await
    }

    /// Sends `req`, retrying when that is safe (see the module doc), and decodes the answer.
    async fn send<T: DeserializeOwned>(&self, req: &Req) -> Result<T, ClientError> {
        let may_retry = req.method == Method::GET || req.key.is_some();
        let deadline = Instant::now() + self.retry.window;
        let mut backoff = self.retry.first_backoff;
        loop {
            // Whether another attempt fits in the window.
            let more = || may_retry && Instant::now() + backoff <= deadline;
            let failure = match self.attempt(req).await {
                // refreshd is shutting down and did nothing; it asks to be retried.
                Ok((status, _)) if status == StatusCode::SERVICE_UNAVAILABLE && more() => None,
                Ok((status, body)) => return decode(req, status, &body),
                Err(failure) => Some(failure),
            };
            match failure {
                None => {}
                Some(Failure::Fatal(e)) => return Err(e),
                Some(Failure::Retry { sent, err }) => {
                    if !may_retry && sent {
                        return Err(ClientError::Protocol(format!(
                            "the connection broke before refreshd answered {} {} ({err}); \
                             it may or may not have been done: check with refreshctl changes",
                            req.method, req.path
                        )));
                    }
                    if !more() {
                        return Err(self.unreachable(err));
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.retry.max_backoff);
        }
    }

    /// One attempt: a fresh connection, the request, the whole answer.
    async fn attempt(&self, req: &Req) -> Result<(StatusCode, Bytes), Failure> {
        let (response, _conn) = self.exchange(req).await?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| classify(e, req))?
            .to_bytes();
        Ok((status, body))
    }

    /// Connects and sends `req`, returning the response as soon as its head arrives, with the
    /// task that drives the connection (keep it until the body is read).
    async fn exchange(&self, req: &Req) -> Result<(Response<Incoming>, ConnTask), Failure> {
        // The body is built (the file reopened) on every attempt: a retry must send it whole.
        let body = req.payload.body().await?;
        let stream = UnixStream::connect(&self.socket).await.map_err(|err| {
            match err.kind() {
                // Not ours to fix by waiting: a wrong path or a socket we may not use.
                io::ErrorKind::PermissionDenied | io::ErrorKind::NotADirectory => {
                    Failure::Fatal(self.unreachable(err))
                }
                // No socket, nobody behind it, a full backlog: refreshd is (re)starting or
                // busy. Nothing was sent, so any request may be tried again.
                _ => Failure::Retry { sent: false, err },
            }
        })?;
        let stream = DeafWriter {
            inner: stream,
            write_failed: false,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| classify(e, req))?;
        // The connection's own errors reach us through send_request and the body.
        let conn = ConnTask(tokio::spawn(async move {
            let _ = conn.await;
        }));

        let mut builder = Request::builder()
            .method(req.method.clone())
            .uri(&req.path)
            .header(HOST, "localhost");
        if let Some(content_type) = req.payload.content_type() {
            builder = builder
                .header(CONTENT_TYPE, content_type)
                .header(CONTENT_LENGTH, body.len);
        }
        if let Some(key) = &req.key {
            builder = builder.header(IDEMPOTENCY_KEY, key);
        }
        let request = builder
            .body(body.body)
            .map_err(|e| Failure::Fatal(ClientError::Protocol(format!("bad request: {e}"))))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| classify(e, req))?;
        Ok((response, conn))
    }

    fn unreachable(&self, source: io::Error) -> ClientError {
        ClientError::Unreachable {
            socket: self.socket.clone(),
            error: source,
        }
    }
}

/// The task driving a connection; stopped when dropped, so that an upload refused early is not
/// read to the end for nothing.
struct ConnTask(tokio::task::JoinHandle<()>);

impl Drop for ConnTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The socket, except that once the peer stops reading, writes are dropped instead of failing.
///
/// refreshd may answer an upload before reading all of it (`403`, `413`) and close the
/// connection; hyper would then fail on the next body write and lose the answer, which is
/// already in our receive buffer. With writes dropped, hyper goes on to read it. If there is no
/// answer, the read ends in EOF and the request fails as a broken connection, as it should.
struct DeafWriter {
    inner: UnixStream,
    write_failed: bool,
}

impl DeafWriter {
    fn absorb(&mut self, result: io::Result<usize>, len: usize) -> io::Result<usize> {
        match result {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                self.write_failed = true;
                Ok(len)
            }
            other => other,
        }
    }
}

impl AsyncRead for DeafWriter {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for DeafWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.write_failed {
            return Poll::Ready(Ok(buf.len()));
        }
        let result = ready!(Pin::new(&mut self.inner).poll_write(cx, buf));
        Poll::Ready(self.absorb(result, buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        if self.write_failed {
            return Poll::Ready(Ok(len));
        }
        let result = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs));
        Poll::Ready(self.absorb(result, len))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_failed {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_failed {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request, kept whole so that it can be sent again.
struct Req {
    method: Method,
    path: String,
    payload: Payload,
    /// Set on every `POST`; only requests that are `GET` or carry a key are retried.
    key: Option<String>,
}

impl Req {
    fn get(path: String) -> Self {
        Req {
            method: Method::GET,
            path,
            payload: Payload::Empty,
            key: None,
        }
    }

    fn post(path: String, payload: Payload) -> Self {
        Req {
            method: Method::POST,
            path,
            payload,
            key: Some(uuid::Uuid::new_v4().to_string()),
        }
    }
}

enum Payload {
    Empty,
    Json(Bytes),
    /// A file, and who is told how much of it was sent.
    File(PathBuf, Option<tokio::sync::watch::Sender<(u64, u64)>>),
}

type Body = UnsyncBoxBody<Bytes, BodyError>;

struct BuiltBody {
    body: Body,
    len: u64,
}

impl Payload {
    fn json<T: Serialize>(value: &T) -> Self {
        // Serializing our own plain structs cannot fail.
        Payload::Json(Bytes::from(
            serde_json::to_vec(value).expect("API bodies serialize"),
        ))
    }

    fn content_type(&self) -> Option<&'static str> {
        match self {
            Payload::Empty => None,
            Payload::Json(_) => Some("application/json"),
            Payload::File(..) => Some("application/octet-stream"),
        }
    }

    async fn body(&self) -> Result<BuiltBody, Failure> {
        Ok(match self {
            Payload::Empty => BuiltBody {
                body: Empty::new().map_err(|never| match never {}).boxed_unsync(),
                len: 0,
            },
            Payload::Json(bytes) => BuiltBody {
                body: Full::new(bytes.clone())
                    .map_err(|never| match never {})
                    .boxed_unsync(),
                len: bytes.len() as u64,
            },
            Payload::File(path, sent) => {
                let io_err = |source| {
                    Failure::Fatal(ClientError::Io {
                        path: path.clone(),
                        error: source,
                    })
                };
                let file = tokio::fs::File::open(path).await.map_err(io_err)?;
                let len = file.metadata().await.map_err(io_err)?.len();
                let path = path.clone();
                let sent = sent.clone();
                let mut done = 0u64;
                if let Some(sent) = &sent {
                    sent.send_replace((0, len));
                }
                let frames = ReaderStream::new(file).map(move |chunk| {
                    if let (Ok(bytes), Some(sent)) = (&chunk, &sent) {
                        done += bytes.len() as u64;
                        sent.send_replace((done, len.max(done)));
                    }
                    chunk.map(Frame::data).map_err(|source| BodyError {
                        path: path.clone(),
                        error: source,
                    })
                });
                BuiltBody {
                    body: StreamBody::new(frames).boxed_unsync(),
                    len,
                }
            }
        })
    }
}

/// A failure to read the file being uploaded, told apart from transport errors when it comes
/// back wrapped in a hyper error.
#[derive(Debug)]
struct BodyError {
    path: PathBuf,
    error: io::Error,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot read {}: {}", self.path.display(), self.error)
    }
}

// The cause is in the message, so it is not a source too: a chain would say it twice.
impl StdError for BodyError {}

/// Why an attempt failed, and whether another could succeed.
enum Failure {
    /// The daemon was not there or the connection broke; `sent` says whether the request may
    /// have reached it.
    Retry {
        sent: bool,
        err: io::Error,
    },
    Fatal(ClientError),
}

/// Sorts a hyper error into a broken connection (worth retrying when safe) or anything else.
fn classify(err: hyper::Error, req: &Req) -> Failure {
    let mut source: Option<&(dyn StdError + 'static)> = err.source();
    while let Some(e) = source {
        if let Some(body) = e.downcast_ref::<BodyError>() {
            return Failure::Fatal(ClientError::Io {
                path: body.path.clone(),
                error: io::Error::new(body.error.kind(), body.error.to_string()),
            });
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ) {
                return broken(&err);
            }
        }
        source = e.source();
    }
    if err.is_incomplete_message() || err.is_canceled() || err.is_closed() {
        return broken(&err);
    }
    Failure::Fatal(ClientError::Protocol(format!(
        "{} {}: {err}",
        req.method, req.path
    )))
}

fn broken(err: &hyper::Error) -> Failure {
    Failure::Retry {
        sent: true,
        err: io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("connection broke before an answer: {err}"),
        ),
    }
}

fn decode<T: DeserializeOwned>(
    req: &Req,
    status: StatusCode,
    body: &[u8],
) -> Result<T, ClientError> {
    if !status.is_success() {
        return Err(api_error(status, body));
    }
    serde_json::from_slice(body).map_err(|e| {
        ClientError::Protocol(format!(
            "cannot parse the answer to {} {}: {e}",
            req.method, req.path
        ))
    })
}

/// Turns a non-2xx answer into [`ClientError::Api`]; a body that is not our JSON (a proxy, a
/// panic) still gives a one-line message.
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    if let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(body) {
        return ClientError::Api {
            status: status.as_u16(),
            kind: error.kind,
            message: error.message,
            change: error.change,
        };
    }
    let text = String::from_utf8_lossy(body);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty());
    let reason = status.canonical_reason().unwrap_or("error");
    let message = match line {
        Some(line) => {
            let line: String = line.chars().take(200).collect();
            format!("refreshd answered {} {reason}: {line}", status.as_u16())
        }
        None => format!("refreshd answered {} {reason}", status.as_u16()),
    };
    ClientError::Api {
        status: status.as_u16(),
        kind: ErrorKind::from_http_status(status.as_u16()),
        message,
        change: None,
    }
}

/// Percent-encodes a path segment or query value (names are plain ASCII in practice, but a
/// stray `/`, `?` or space must not change the request).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The live states of a change, from [`Client::watch`].
///
/// Call [`Watch::next`] until it returns `None`, or use [`Watch::into_stream`]. When the
/// stream breaks before a ready state (refreshd restarting), it is reopened; since the first
/// line of a new stream is the current state, nothing is lost (states in between may be
/// skipped). It gives up with [`ClientError::Unreachable`] once refreshd has been unreachable
/// for [`RetryPolicy::reconnect_window`] (or [`RetryPolicy::window`] before the first state).
pub struct Watch {
    client: Client,
    id: u64,
    /// The open stream and the task driving its connection.
    body: Option<(Incoming, ConnTask)>,
    buf: Vec<u8>,
    done: bool,
    seen_any: bool,
    broken_since: Option<Instant>,
    backoff: Duration,
}

impl Watch {
    /// The next state of the change; `None` after the ready one (or after an error).
    pub async fn next(&mut self) -> Option<Result<Change, ClientError>> {
        if self.done {
            return None;
        }
        let item = self.next_inner().await;
        if !matches!(item, Ok(ref change) if !change.ready) {
            self.done = true;
            self.body = None;
        }
        Some(item)
    }

    /// This watch as a [`Stream`].
    pub fn into_stream(self) -> impl Stream<Item = Result<Change, ClientError>> {
        futures_util::stream::unfold(self, |mut watch| async move {
            let item = watch.next().await?;
            Some((item, watch))
        })
    }

    async fn next_inner(&mut self) -> Result<Change, ClientError> {
        loop {
            if let Some(change) = self.take_line()? {
                return Ok(change);
            }
            let Some((body, _)) = &mut self.body else {
                self.reconnect().await?;
                continue;
            };
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) | None => {
                    // Broken or ended before the ready state: whatever full line arrived
                    // still counts; a partial one is dropped and the stream reopened.
                    self.body = None;
                    let rest = std::mem::take(&mut self.buf);
                    self.broken_since.get_or_insert_with(Instant::now);
                    if let Ok(change) = serde_json::from_slice::<Change>(&rest) {
                        self.seen(&change);
                        return Ok(change);
                    }
                }
            }
        }
    }

    /// Parses the first complete line in the buffer, if there is one.
    fn take_line(&mut self) -> Result<Option<Change>, ClientError> {
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let change: Change = serde_json::from_slice(&line).map_err(|e| {
                ClientError::Protocol(format!(
                    "cannot parse a line of GET /v1/changes/{}/watch: {e}",
                    self.id
                ))
            })?;
            self.seen(&change);
            return Ok(Some(change));
        }
        Ok(None)
    }

    fn seen(&mut self, _change: &Change) {
        self.seen_any = true;
        self.broken_since = None;
        self.backoff = self.client.retry.first_backoff;
    }

    /// Opens the stream, retrying until refreshd has been unreachable for too long.
    async fn reconnect(&mut self) -> Result<(), ClientError> {
        let req = Req::get(format!("/v1/changes/{}/watch", self.id));
        loop {
            let err = match self.client.exchange(&req).await {
                Ok((response, conn)) if response.status().is_success() => {
                    self.body = Some((response.into_body(), conn));
                    return Ok(());
                }
                Ok((response, _conn)) => {
                    let status = response.status();
                    let body = match response.into_body().collect().await {
                        Ok(collected) => collected.to_bytes(),
                        Err(_) => Bytes::new(),
                    };
                    let err = api_error(status, &body);
                    if status != StatusCode::SERVICE_UNAVAILABLE {
                        return Err(err);
                    }
                    io::Error::other(err)
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry { err, .. }) => err,
            };
            let since = *self.broken_since.get_or_insert_with(Instant::now);
            let window = if self.seen_any {
                self.client.retry.reconnect_window
            } else {
                self.client.retry.window
            };
            if since.elapsed() + self.backoff > window {
                return Err(self.client.unreachable(err));
            }
            tokio::time::sleep(self.backoff).await;
            self.backoff = (self.backoff * 2).min(self.client.retry.max_backoff);
        }
    }
}

#[cfg(test)]
mod tests;
