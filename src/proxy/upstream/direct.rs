//! The direct HTTP/1.1 upstream path: bodiless idempotent requests (GET, HEAD, OPTIONS without
//! an upgrade) are written and their responses read by the request's own task, on a pooled
//! socket, with no connection task, channel or oneshot in between (hyper's client connection
//! is a separate task that every request has to wake and be woken by).
//!
//! Why: in the keep-alive benchmark the hyper client dispatch was ~12 % of the proxy CPU in
//! user space, and the two extra task switches per request cost cache footprint on both
//! sides of the kernel. Requests with a body and upgrades keep hyper's client (`client.rs`).
//!
//! What it does: writes the head (`METHOD origin-form HTTP/1.1`, headers as given), reads the
//! response head with `httparse` (1xx interim answers skipped, 101 refused: no upgrade was
//! asked for), then streams the body by its framing, decided by the rule both upstream paths
//! share (`framing.rs`: none for HEAD/204/304, chunked, Content-Length, or until close;
//! strict chunk-size lines). The connection goes back to the idle queue only
//! when the body ended exactly at its framing and the upstream keeps it alive.
//! Invariants: a response head over `MAX_HEAD` bytes or a malformed one is an error (502),
//! never a panic; header values are slices of the read buffer (no copy).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;

use super::error::UpstreamError;
use super::pool::{Endpoint, IdleQueue, Reusable};
use crate::proxy::body::{BoxError, RequestBody};
use crate::proxy::framing::{self, BodyFraming};
use crate::proxy::net::SendStream;

/// Largest response head accepted (status line + headers), like hyper's client default.
pub const MAX_HEAD: usize = 256 * 1024;
/// Most response headers accepted.
const MAX_HEADERS: usize = 128;
/// Read size while waiting for a response head (the buffer's first size): a typical head and
/// a small body arrive whole in one read. A larger head grows the buffer (doubling), a body
/// that needs more reads grows it to `READ_CHUNK` and up, and a connection keeps what its
/// buffer grew to. So an idle pooled connection that carried only small answers holds 2 KiB,
/// not 8: a burst that left 250 upstream connections in the pool held 2 MiB of buffers
/// (issue 23: 0.2 KiB of the per-idle-client-connection figure), now 0.5 MiB.
const HEAD_READ: usize = 2 * 1024;
/// The first read size of a body that did not arrive with its head.
const READ_CHUNK: usize = 8 * 1024;
/// Body reads double (from `READ_CHUNK`) while they fill the buffer, up to this size.
const MAX_BODY_READ: usize = 256 * 1024;

/// One upstream connection of the direct path.
pub struct DirectConn {
    io: SendStream,
    /// Read buffer; between requests it is empty.
    buf: BytesMut,
    /// The request head being written (kept to reuse its allocation).
    head: Vec<u8>,
    /// `parse_head_with`'s scratch list (kept to reuse its allocation).
    spans: Vec<Span>,
}

impl DirectConn {
    pub fn new(io: SendStream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            head: Vec::new(),
            spans: Vec::new(),
        }
    }

    /// The socket of an idle connection (nothing read ahead: its whole state is the
    /// socket's), to hand it to a successor process.
    pub fn idle_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.buf.is_empty().then(|| self.io.as_fd())
    }
}

impl Reusable for DirectConn {
    /// Whether an idle connection may carry a request: not closed by the peer, nothing
    /// unexpected waiting. Costs no syscall unless the socket reported readable.
    fn usable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// Why the direct exchange failed; `fresh_retry` says whether the request provably got no
/// answer on a reused connection (closed or reset before any response byte), so it may go
/// out again on a new one.
#[derive(Debug)]
pub struct ExchangeError {
    pub source: io::Error,
    pub fresh_retry: bool,
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn encode_head(req: &Request<RequestBody>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        req.uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked(Chunk),
    Close,
}

/// Position inside a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    /// The upstream's reason phrase when it is not the standard one (forwarded as is).
    reason: Option<hyper::ext::ReasonPhrase>,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

/// Where a header's name and value are in a response head: the name parsed, the value as an
/// offset and length into the head (it becomes a shared slice of the frozen head).
type Span = (HeaderName, usize, usize);

/// Parses one complete response head at the start of `buf`, if there is one. Interim 1xx
/// answers are consumed and skipped.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> io::Result<Option<Head>> {
    parse_head_with(buf, head_request, &mut Vec::new())
}

/// [`parse_head`] with the connection's scratch list of spans (emptied first; kept between
/// responses so parsing a head allocates nothing for it).
fn parse_head_with(
    buf: &mut BytesMut,
    head_request: bool,
    spans: &mut Vec<Span>,
) -> io::Result<Option<Head>> {
    loop {
        // httparse fills the slots it uses: no 4 KiB of empty headers written per response.
        let mut slots =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut r, buf, &mut slots);
        let n = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD {
                    return Err(invalid("upstream response head too large"));
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(invalid("upstream response has too many headers"))
            }
            Err(_) => return Err(invalid("malformed upstream response head")),
        };
        let code = r.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| invalid("invalid upstream status code"))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(invalid(
                    "upstream switched protocols without an upgrade request",
                ));
            }
            buf.advance(n);
            continue;
        }
        let reason = r
            .reason
            .filter(|&text| status.canonical_reason() != Some(text))
            .and_then(|text| hyper::ext::ReasonPhrase::try_from(text.as_bytes()).ok());
        let version = if r.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Offsets of names and values inside the head, so the values can be shared slices of
        // the frozen head instead of copies.
        let base = buf.as_ptr() as usize;
        spans.clear();
        for h in r.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| invalid("invalid upstream header name"))?;
            let off = h.value.as_ptr() as usize - base;
            spans.push((name, off, h.value.len()));
        }
        let mut headers = HeaderMap::with_capacity(spans.len());
        let mut close = version == Version::HTTP_10;
        let frozen = buf.split_to(n).freeze();
        for (name, off, len) in spans.drain(..) {
            let value = HeaderValue::from_maybe_shared(frozen.slice(off..off + len))
                .map_err(|_| invalid("invalid upstream header value"))?;
            if name == header::CONNECTION {
                let tokens = value.to_str().unwrap_or("");
                for t in tokens.split(',').map(str::trim) {
                    if t.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case("keep-alive") && version == Version::HTTP_10 {
                        close = false;
                    }
                }
            }
            headers.append(name, value);
        }
        // The framing rule both upstream paths share.
        let decided = framing::response_framing(version, status, head_request, false, &headers)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        framing::sanitize(&decided, &mut headers);
        let framing = match decided.body {
            BodyFraming::Empty => Framing::Empty,
            BodyFraming::Length(n) => Framing::Length(n),
            BodyFraming::Chunked => Framing::Chunked(Chunk::Size),
            BodyFraming::Close => Framing::Close,
        };
        let keep_alive = !close && framing != Framing::Close && !decided.strip_content_length;
        return Ok(Some(Head {
            status,
            reason,
            version,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// Reads the next chunk of a chunked body out of `buf`: `Ok(Some(data))` for data (possibly
/// empty when only framing was consumed), `Ok(None)` when more input is needed. `state`
/// becomes `None` after the trailers.
fn decode_chunked(buf: &mut BytesMut, state: &mut Option<Chunk>) -> io::Result<Option<Bytes>> {
    loop {
        let Some(s) = *state else {
            return Ok(Some(Bytes::new()));
        };
        match s {
            Chunk::Size => {
                let Some(eol) = find_crlf(buf) else {
                    if buf.len() > 4096 {
                        return Err(invalid("upstream chunk-size line too long"));
                    }
                    return Ok(None);
                };
                let size = framing::parse_chunk_size_line(&buf[..eol])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                buf.advance(eol + 2);
                *state = Some(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (left.min(buf.len() as u64)) as usize;
                let data = buf.split_to(n).freeze();
                *state = Some(if left == n as u64 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n as u64)
                });
                return Ok(Some(data));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(invalid("missing CRLF after upstream chunk data"));
                }
                buf.advance(2);
                *state = Some(Chunk::Size);
            }
            Chunk::Trailers => {
                let Some(eol) = find_crlf(buf) else {
                    if buf.len() > MAX_HEAD {
                        return Err(invalid("upstream trailers too large"));
                    }
                    return Ok(None);
                };
                let line = &buf[..eol];
                if eol > 0
                    && (line.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
                        || !line.contains(&b':')
                        || line[0] == b' '
                        || line[0] == b'\t')
                {
                    return Err(invalid("malformed upstream trailer line"));
                }
                buf.advance(eol + 2);
                if eol == 0 {
                    *state = None;
                }
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Sends `req` (eligible for the direct path) to `host` and reads the response head. A reused
/// connection that turns out dead before answering is replaced by a fresh one, once.
pub async fn send(
    endpoint: &Endpoint,
    idle: &Arc<IdleQueue<DirectConn>>,
    req: &Request<RequestBody>,
) -> Result<Response<DirectBody>, UpstreamError> {
    let head_request = req.method() == Method::HEAD;
    // A new connection is boxed: its connect state stays out of every request's future.
    let (mut conn, mut reused) = match idle.pop() {
        Some(c) => (c, true),
        None => (DirectConn::new(Box::pin(endpoint.open()).await?), false),
    };
    loop {
        match exchange(&mut conn, req, head_request, reused).await {
            Ok(head) => {
                let mut resp = Response::new(DirectBody {
                    conn: Some(conn),
                    idle: idle.clone(),
                    framing: head.framing,
                    keep_alive: head.keep_alive,
                    read_size: READ_CHUNK,
                });
                *resp.status_mut() = head.status;
                *resp.version_mut() = head.version;
                *resp.headers_mut() = head.headers;
                if let Some(reason) = head.reason {
                    resp.extensions_mut().insert(reason);
                }
                return Ok(resp);
            }
            Err(e) if e.fresh_retry => {
                tracing::debug!(upstream = %endpoint.authority(), error = %e.source, "pooled connection was dead; sending again on a new connection");
                conn = DirectConn::new(Box::pin(endpoint.open()).await?);
                reused = false;
            }
            Err(e) => {
                return Err(UpstreamError::Io {
                    addr: endpoint.authority().to_string(),
                    source: e.source,
                })
            }
        }
    }
}

async fn exchange(
    conn: &mut DirectConn,
    req: &Request<RequestBody>,
    head_request: bool,
    reused: bool,
) -> Result<Head, ExchangeError> {
    let dead = |e: &io::Error| {
        reused
            && matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            )
    };
    let mut head = std::mem::take(&mut conn.head);
    encode_head(req, &mut head);
    let written = conn.io.write_all(&head).await;
    conn.head = head;
    if let Err(e) = written {
        return Err(ExchangeError {
            fresh_retry: dead(&e),
            source: e,
        });
    }
    conn.buf.clear();
    let mut received = false;
    loop {
        if received {
            match parse_head_with(&mut conn.buf, head_request, &mut conn.spans) {
                Ok(Some(h)) => return Ok(h),
                Ok(None) => {}
                Err(e) => {
                    return Err(ExchangeError {
                        source: e,
                        fresh_retry: false,
                    })
                }
            }
        }
        conn.buf.reserve(HEAD_READ);
        let n = match std::future::poll_fn(|cx| {
            tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
        })
        .await
        {
            Ok(n) => n,
            Err(e) => {
                return Err(ExchangeError {
                    fresh_retry: !received && dead(&e),
                    source: e,
                })
            }
        };
        if n == 0 {
            let e = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "upstream closed the connection before a complete response head",
            );
            return Err(ExchangeError {
                fresh_retry: !received && dead(&e),
                source: e,
            });
        }
        received = true;
    }
}

/// The body of a direct-path response; hands its connection back to its idle queue
/// when it ended cleanly on a keep-alive connection.
pub struct DirectBody {
    conn: Option<DirectConn>,
    idle: Arc<IdleQueue<DirectConn>>,
    framing: Framing,
    keep_alive: bool,
    /// Next read size: large bodies are read in growing chunks (fewer syscalls).
    read_size: usize,
}

impl DirectBody {
    /// The connection is not to be reused (the proxy saw `Connection: close` or HTTP/1.0).
    pub fn no_reuse(&mut self) {
        self.keep_alive = false;
    }

    fn finished(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Bytes past the end of the framing would be a broken upstream: not reused.
            if self.keep_alive && conn.buf.is_empty() {
                self.idle.push(conn);
            }
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.framing = Framing::Empty;
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

impl Drop for DirectBody {
    fn drop(&mut self) {
        // hyper may stop polling once `is_end_stream` says so.
        if self.framing == Framing::Empty {
            self.finished();
        }
    }
}

impl Body for DirectBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing {
                Framing::Empty => {
                    this.finished();
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = (left.min(conn.buf.len() as u64)) as usize;
                        let data = conn.buf.split_to(n).freeze();
                        let left = left - n as u64;
                        this.framing = if left == 0 {
                            Framing::Empty
                        } else {
                            Framing::Length(left)
                        };
                        if left == 0 {
                            this.finished();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Chunked(state) => {
                    let mut st = Some(state);
                    match decode_chunked(&mut conn.buf, &mut st) {
                        Err(e) => return this.fail(e),
                        Ok(Some(data)) => {
                            match st {
                                Some(s) => this.framing = Framing::Chunked(s),
                                None => {
                                    this.framing = Framing::Empty;
                                    this.finished();
                                }
                            }
                            if !data.is_empty() {
                                return Poll::Ready(Some(Ok(Frame::data(data))));
                            }
                            if this.framing == Framing::Empty {
                                return Poll::Ready(None);
                            }
                            continue;
                        }
                        Ok(None) => {
                            if let Some(s) = st {
                                this.framing = Framing::Chunked(s);
                            }
                        }
                    }
                }
                Framing::Close => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            // Need more input.
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            conn.buf.reserve(this.read_size);
            let spare = conn.buf.capacity() - conn.buf.len();
            let n = match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.io),
                cx,
                &mut conn.buf
            )) {
                Ok(n) => n,
                Err(e) => return this.fail(e),
            };
            if n == spare && this.read_size < MAX_BODY_READ {
                this.read_size *= 2;
            }
            if n == 0 {
                if this.framing == Framing::Close {
                    this.conn = None;
                    this.framing = Framing::Empty;
                    return Poll::Ready(None);
                }
                return this.fail(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "upstream closed the connection before the end of the body",
                ));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Empty
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// What [`fuzz_parse_response`] made of a response.
#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub struct FuzzResponse {
    pub status: u16,
    /// Header names (lower case) and values as they would be forwarded.
    pub headers: Vec<(String, Vec<u8>)>,
    /// `empty`, `length`, `chunked` or `close`.
    pub framing: &'static str,
    pub keep_alive: bool,
    pub body: Vec<u8>,
    /// Whether the body ended at its framing (always, for `close`, at the end of input).
    pub complete: bool,
}

/// Fuzzing entry point (`tests/fuzz.rs`): runs the direct path's head parser and body
/// decoder over `input` arriving in reads of `step` bytes, exactly as `send` and
/// `DirectBody` use them, and returns what would be forwarded, or the error.
#[doc(hidden)]
pub fn fuzz_parse_response(
    input: &[u8],
    head_request: bool,
    step: usize,
) -> Result<FuzzResponse, String> {
    let step = step.max(1);
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut feed = |buf: &mut BytesMut| {
        if fed >= input.len() {
            return false;
        }
        let end = fed.saturating_add(step).min(input.len());
        buf.extend_from_slice(&input[fed..end]);
        fed = end;
        true
    };
    let head = loop {
        if let Some(h) = parse_head(&mut buf, head_request).map_err(|e| e.to_string())? {
            break h;
        }
        if !feed(&mut buf) {
            return Err("end of input before a complete head".into());
        }
    };
    let mut body = Vec::new();
    let (name, complete) = match head.framing {
        Framing::Empty => ("empty", true),
        Framing::Length(n) => {
            while (buf.len() as u64) < n && feed(&mut buf) {}
            let take = (n.min(buf.len() as u64)) as usize;
            body.extend_from_slice(&buf.split_to(take));
            ("length", take as u64 == n)
        }
        Framing::Close => {
            while feed(&mut buf) {}
            body.extend_from_slice(&buf.split());
            ("close", true)
        }
        Framing::Chunked(start) => {
            let mut st = Some(start);
            let done = loop {
                match decode_chunked(&mut buf, &mut st).map_err(|e| e.to_string())? {
                    Some(d) => {
                        body.extend_from_slice(&d);
                        if st.is_none() {
                            break true;
                        }
                    }
                    None => {
                        if !feed(&mut buf) {
                            break false;
                        }
                    }
                }
            };
            ("chunked", done)
        }
    };
    Ok(FuzzResponse {
        status: head.status.as_u16(),
        headers: head
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect(),
        framing: name,
        keep_alive: head.keep_alive,
        body,
        complete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], head_req: bool) -> io::Result<Option<Head>> {
        let mut b = BytesMut::from(raw);
        parse_head(&mut b, head_req)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases: &[(&[u8], bool, Framing, bool)] = &[
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false, Framing::Length(5), true),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", false, Framing::Empty, true),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true, Framing::Empty, true),
            (b"HTTP/1.1 204 No Content\r\n\r\n", false, Framing::Empty, true),
            (b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n", false, Framing::Empty, true),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n", false, Framing::Chunked(Chunk::Size), false), // both framings: chunked wins, no reuse
            (b"HTTP/1.1 200 OK\r\n\r\n", false, Framing::Close, false),
            (b"HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 1\r\n\r\n", false, Framing::Length(1), false),
            (b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false, Framing::Length(1), false),
            (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\ncontent-length: 1\r\n\r\n", false, Framing::Length(1), true),
            (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: x\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", false, Framing::Length(2), true),
        ];
        for (raw, head_req, framing, keep) in cases {
            let h = parse(raw, *head_req).unwrap().unwrap();
            assert_eq!(h.framing, *framing, "{}", String::from_utf8_lossy(raw));
            assert_eq!(h.keep_alive, *keep, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn content_length_next_to_chunked_is_removed_and_plus_sign_refused() {
        let h = parse(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!h.headers.contains_key(header::CONTENT_LENGTH));
        assert!(!h.keep_alive);
        assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok", false).is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-length:  2 \r\n\r\nok", false).is_ok());
    }

    #[test]
    fn head_values_are_kept_and_rest_stays_in_buffer() {
        let mut b = BytesMut::from(
            &b"HTTP/1.1 404 Not Found\r\nX-A: one\r\nx-a: two\r\ncontent-length: 3\r\n\r\nabc"[..],
        );
        let h = parse_head(&mut b, false).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::NOT_FOUND);
        assert!(h.reason.is_none(), "the standard phrase is not carried");
        let all: Vec<_> = h.headers.get_all("x-a").iter().collect();
        assert_eq!(all, ["one", "two"]);
        assert_eq!(&b[..], b"abc");
    }

    #[test]
    fn custom_reason_phrase_is_kept() {
        let h = parse(
            b"HTTP/1.1 200 Fine Thanks\r\ncontent-length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.reason.unwrap().as_bytes(), b"Fine Thanks");
    }

    #[test]
    fn partial_and_bad_heads() {
        assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-le", false)
            .unwrap()
            .is_none());
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        ] {
            assert!(
                parse(bad, false).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(parse(&many, false).is_err());
        let mut huge = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        huge.resize(MAX_HEAD + 10, b'a');
        assert!(parse(&huge, false).is_err());
    }

    /// Feeds a chunked body one byte at a time and all at once; both give the same data.
    #[test]
    fn chunked_decoding_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\ntrailer: x\r\n\r\n";
        for step in [1usize, 3, wire.len()] {
            let mut buf = BytesMut::new();
            let mut st = Some(Chunk::Size);
            let mut out = Vec::new();
            let mut fed = 0;
            while st.is_some() {
                match decode_chunked(&mut buf, &mut st).unwrap() {
                    Some(d) => out.extend_from_slice(&d),
                    None => {
                        assert!(fed < wire.len(), "decoder wants more than the body");
                        let end = (fed + step).min(wire.len());
                        buf.extend_from_slice(&wire[fed..end]);
                        fed = end;
                    }
                }
            }
            assert_eq!(out, b"hello 0123456789", "step {step}");
            assert!(buf.is_empty());
        }
        for bad in [&b"zz\r\n"[..], b"5\r\nhelloXX", b"\r\n"] {
            let mut buf = BytesMut::from(bad);
            let mut st = Some(Chunk::Size);
            let mut res = Ok(None);
            for _ in 0..4 {
                res = decode_chunked(&mut buf, &mut st);
                if res.is_err() {
                    break;
                }
            }
            assert!(res.is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn request_head_is_origin_form() {
        let mut req = Request::new(RequestBody::empty());
        *req.uri_mut() = "/a/b?c=d".parse().unwrap();
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("app.test"));
        req.headers_mut()
            .append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let mut out = Vec::new();
        encode_head(&req, &mut out);
        assert_eq!(
            out,
            b"GET /a/b?c=d HTTP/1.1\r\nhost: app.test\r\nx-forwarded-for: 10.0.0.1\r\n\r\n"
        );
    }
}

#[cfg(test)]
mod buffer_tests {
    use super::*;
    use crate::proxy::upstream::pool::PoolSettings;
    use http_body_util::BodyExt;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    /// A loopback upstream answering each request with a body of the length its path asks
    /// for (`/<n>`), keep-alive.
    async fn upstream() -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut b = [0u8; 1024];
                    loop {
                        let Ok(n) = s.read(&mut b).await else { return };
                        if n == 0 {
                            return;
                        }
                        req.extend_from_slice(&b[..n]);
                        while let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&req[..end]).to_string();
                            req.drain(..end + 4);
                            let len: usize = head
                                .split(' ')
                                .nth(1)
                                .and_then(|p| p.trim_start_matches('/').parse().ok())
                                .unwrap_or(0);
                            let mut out =
                                format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n")
                                    .into_bytes();
                            out.resize(out.len() + len, b'x');
                            if s.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    async fn get(endpoint: &Endpoint, idle: &Arc<IdleQueue<DirectConn>>, len: usize) {
        let req = Request::builder()
            .uri(format!("/{len}"))
            .header("host", "buffer.test")
            .body(RequestBody::empty())
            .unwrap();
        let resp = send(endpoint, idle, &req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), len);
    }

    /// A pooled connection that carried small answers holds a 2 KiB buffer; one that read a
    /// body in several reads keeps the larger buffer it grew (no regrowth per request).
    #[tokio::test(flavor = "current_thread")]
    async fn pooled_buffer_is_sized_by_what_the_connection_carried() {
        let addr = upstream().await;
        let settings = PoolSettings {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_idle_per_host: 4,
        };
        let endpoint = Endpoint::new(&addr.to_string(), &settings);
        let idle = Arc::new(IdleQueue::new(&settings));
        for _ in 0..3 {
            get(&endpoint, &idle, 100).await;
        }
        let conn = idle.pop().unwrap();
        assert!(conn.buf.capacity() <= HEAD_READ, "{}", conn.buf.capacity());
        idle.push(conn);
        get(&endpoint, &idle, 100_000).await;
        let conn = idle.pop().unwrap();
        let grown = conn.buf.capacity();
        assert!(grown >= READ_CHUNK, "{grown}");
        idle.push(conn);
        // Small answers after it reuse what it grew to.
        get(&endpoint, &idle, 100).await;
        assert!(idle.pop().unwrap().buf.capacity() >= READ_CHUNK);
    }
}
