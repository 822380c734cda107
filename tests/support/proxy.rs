//! Proxy-side helpers: a small real HTTP backend on 127.0.0.1 (HTTP/1.1 and
//! h2c, counts accepted connections and requests, echoes headers, streams, sleeps on demand,
//! WebSocket echo, switchable health), a daemon starter, and an HTTP client. Every server a
//! test starts here stops when its handle is dropped.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub type TestBody = BoxBody<Bytes, std::io::Error>;

/// Body from bytes.
pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// An empty body.
pub fn empty() -> TestBody {
    full(Bytes::new())
}

/// A body of `n` chunks of `size` bytes with no declared length (sent chunked over HTTP/1.1).
pub fn chunked(chunks: usize, size: usize) -> TestBody {
    let it = (0..chunks)
        .map(move |i| Ok::<_, std::io::Error>(Frame::data(Bytes::from(pattern(i * size, size)))));
    BodyExt::boxed(StreamBody::new(futures_util::stream::iter(it)))
}

/// Deterministic bytes: position `p` holds `(p % 251) as u8`.
pub fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|p| (p % 251) as u8).collect()
}

/// Simple checksum both sides can compute over a stream.
pub fn checksum(acc: u64, data: &[u8]) -> u64 {
    data.iter()
        .fold(acc, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(*b)))
}

/// Shared state of a test backend (visible to the test).
#[derive(Debug, Default)]
pub struct BackendState {
    /// TCP connections accepted.
    pub accepted: AtomicUsize,
    /// Requests served (any path).
    pub requests: AtomicUsize,
    /// Requests to the health path.
    pub health_requests: AtomicUsize,
    /// When false, `/health` answers 503.
    pub unhealthy: AtomicBool,
    /// Requests currently being answered.
    pub inflight: AtomicUsize,
    /// When true, paths without a meaning of their own answer the bare name (`a`) instead of
    /// `NAME PATH\n`: for tests that count which backend answered by the body.
    pub name_only: AtomicBool,
}

/// A running test backend. Stops (listener and every open connection) on drop or `stop()`.
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
    stop: watch::Sender<bool>,
}

impl TestBackend {
    /// Starts a backend on a fresh port.
    pub async fn start(name: &str) -> TestBackend {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap(), Arc::default())
            .await
            .expect("bind test backend")
    }

    /// Starts a backend on `addr` (e.g. the port of a stopped one), reusing `state` counters.
    pub async fn start_on(
        name: &str,
        addr: SocketAddr,
        state: Arc<BackendState>,
    ) -> std::io::Result<TestBackend> {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.set_reuseaddr(true)?;
        sock.bind(addr)?;
        let listener = sock.listen(1024)?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(accept_loop(
            name.to_string(),
            listener,
            state.clone(),
            stop_rx,
        ));
        Ok(TestBackend {
            name: name.to_string(),
            addr,
            state,
            stop,
        })
    }

    /// Closes the listener and resets every open connection.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A [`TestBackend`] for tests without an async runtime (the lifecycle tests drive `berthd`
/// with threads and blocking sockets): it runs on a small runtime of its own, which stops with
/// it.
pub struct BlockingBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
    backend: Option<TestBackend>,
    rt: Option<tokio::runtime::Runtime>,
}

impl BlockingBackend {
    /// Starts a backend on a fresh port (see [`TestBackend::start`]).
    pub fn start(name: &str) -> BlockingBackend {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("backend runtime");
        let backend = rt.block_on(TestBackend::start(name));
        BlockingBackend {
            name: backend.name.clone(),
            addr: backend.addr,
            state: backend.state.clone(),
            backend: Some(backend),
            rt: Some(rt),
        }
    }

    /// Connections accepted so far (see [`TestBackend::accepted`]).
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Starts a backend answering the bare `name` on paths without a meaning of their own
    /// (see [`BackendState::name_only`]).
    pub fn start_name_only(name: &str) -> BlockingBackend {
        let b = Self::start(name);
        b.state.name_only.store(true, Ordering::SeqCst);
        b
    }
}

impl Drop for BlockingBackend {
    fn drop(&mut self) {
        drop(self.backend.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(
    name: String,
    listener: TcpListener,
    state: Arc<BackendState>,
    mut stop: watch::Receiver<bool>,
) {
    let name: Arc<str> = name.into();
    let conn_stop = stop.clone();
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            r = listener.accept() => {
                let Ok((stream, _)) = r else { continue };
                state.accepted.fetch_add(1, Ordering::SeqCst);
                let state = state.clone();
                let name = name.clone();
                let mut stop = conn_stop.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handle(name.clone(), state.clone(), req)
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    // Stop first: a request sent after `stop()` returned must never be served
                    // by this connection (tests kill a backend, then expect the next request to
                    // go elsewhere; an unbiased select let a pooled connection answer it).
                    tokio::select! {
                        biased;
                        _ = stop.wait_for(|s| *s) => {}
                        _ = conn => {}
                    }
                });
            }
        }
    }
}

fn query_param<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    })
}

struct InflightDec(Arc<BackendState>);
impl Drop for InflightDec {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Paths: `/health`, `/headers` (request head as text), `/stream?n=BYTES`, `/upload` (reads the
/// body, answers `len checksum`), `/sleep?ms=N`, `/status?code=N`, `/hop` (response with
/// hop-by-hop headers), `/ws` (WebSocket echo); anything else answers `NAME PATH` (or `NAME`,
/// see `BackendState::name_only`).
/// Every response carries `x-backend: NAME`.
async fn handle(
    name: Arc<str>,
    state: Arc<BackendState>,
    mut req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        state.health_requests.fetch_add(1, Ordering::SeqCst);
        let code = if state.unhealthy.load(Ordering::SeqCst) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let mut r = Response::new(full("health\n"));
        *r.status_mut() = code;
        return Ok(r);
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    state.inflight.fetch_add(1, Ordering::SeqCst);
    let _dec = InflightDec(state.clone());
    let mut resp = match path.as_str() {
        "/headers" => {
            let mut s = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
            for (k, v) in req.headers() {
                s.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            Response::new(full(s))
        }
        "/stream" => {
            let n: usize = query_param(&req, "n")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1 << 20);
            let chunk = 16 * 1024;
            let it = (0..n.div_ceil(chunk)).map(move |i| {
                let len = chunk.min(n - i * chunk);
                Ok::<_, std::io::Error>(Frame::data(Bytes::from(pattern(i * chunk, len))))
            });
            Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                it,
            ))))
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut len = 0usize;
            let mut sum = 0u64;
            while let Some(f) = body.frame().await {
                match f {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            len += d.len();
                            sum = checksum(sum, d);
                        }
                    }
                    Err(_) => break,
                }
            }
            Response::new(full(format!("{len} {sum}")))
        }
        "/sleep" => {
            let ms: u64 = query_param(&req, "ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full(format!("{name} slept {ms}\n")))
        }
        "/status" => {
            let code: u16 = query_param(&req, "code")
                .and_then(|v| v.parse().ok())
                .unwrap_or(200);
            let mut r = Response::new(full(format!("{name} {code}\n")));
            *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            r
        }
        "/hop" => {
            let mut r = Response::new(full("hop\n"));
            let h = r.headers_mut();
            h.insert("connection", "x-resp-secret".parse().unwrap());
            h.insert("x-resp-secret", "1".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert("proxy-authenticate", "Basic".parse().unwrap());
            h.insert("x-resp-keep", "yes".parse().unwrap());
            r
        }
        "/ws" => {
            let key = req
                .headers()
                .get("sec-websocket-key")
                .map(|k| k.as_bytes().to_vec())
                .unwrap_or_default();
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
            let on_upgrade = hyper::upgrade::on(&mut req);
            let echo_name = name.clone();
            tokio::spawn(async move {
                let Ok(up) = on_upgrade.await else { return };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(up),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    use tokio_tungstenite::tungstenite::Message;
                    let reply = match msg {
                        Message::Text(t) => Message::text(format!("{echo_name}: {}", t.as_str())),
                        Message::Binary(b) => Message::Binary(b),
                        Message::Close(_) => return,
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        return;
                    }
                }
            });
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = r.headers_mut();
            h.insert("connection", "upgrade".parse().unwrap());
            h.insert("upgrade", "websocket".parse().unwrap());
            h.insert("sec-websocket-accept", accept.parse().unwrap());
            r
        }
        _ if state.name_only.load(Ordering::SeqCst) => Response::new(full(name.to_string())),
        _ => Response::new(full(format!("{name} {path}\n"))),
    };
    if let Ok(v) = name.parse() {
        resp.headers_mut().insert("x-backend", v);
    }
    Ok(resp)
}

/// A TCP listener that accepts connections and never answers (for response-header timeouts).
pub struct SilentBackend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentBackend {
    pub async fn start() -> SilentBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let acc = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                held.push(s);
            }
        });
        SilentBackend {
            addr,
            accepted,
            task,
        }
    }
}

impl Drop for SilentBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Parses a JSON list of route specs.
pub fn routes(json: &str) -> Vec<berth::model::route::RouteSpec> {
    serde_json::from_str(json).expect("test routes parse")
}

/// A config listening on 127.0.0.1:0 with short timeouts and the given routes.
pub fn config(routes_json: &str) -> berth::model::config::Config {
    let mut c = berth::model::config::Config::default();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.api.listen = "127.0.0.1:0".parse().unwrap();
    // Each daemon gets its own (small, left behind) data dir for berth.db.
    c.data_dir = tempfile::Builder::new()
        .prefix("berth-test-")
        .tempdir()
        .expect("temp data dir")
        .keep();
    c.log.access_log = false;
    c.proxy.timeouts.drain = Duration::from_secs(2);
    c.routes = routes(routes_json);
    c
}

/// Starts the daemon in-process.
pub async fn start(config: berth::model::config::Config) -> berth::daemon::Running {
    init_tracing();
    berth::daemon::start(config, None)
        .await
        .expect("daemon starts")
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

pub type HttpClient = Client<HttpConnector, TestBody>;

/// An HTTP/1.1 client with keep-alive.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A GET for `host` + `path` through the proxy at `proxy`.
pub fn get(proxy: SocketAddr, host: &str, path: &str) -> Request<TestBody> {
    Request::builder()
        .uri(format!("http://{proxy}{path}"))
        .header("host", host)
        .body(empty())
        .unwrap()
}

/// Sends `req` and collects the whole response.
pub async fn send(
    client: &HttpClient,
    req: Request<TestBody>,
) -> Result<(http::response::Parts, Bytes), String> {
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let bytes = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .map_err(|_| "body timed out".to_string())?
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok((parts, bytes))
}

/// GET and return (status, x-backend, body).
pub async fn fetch(
    client: &HttpClient,
    proxy: SocketAddr,
    host: &str,
    path: &str,
) -> Result<(u16, String, String), String> {
    let (parts, body) = send(client, get(proxy, host, path)).await?;
    let backend = parts
        .headers
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Ok((
        parts.status.as_u16(),
        backend,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

/// Sends raw bytes on a fresh connection and reads until EOF or `within`; returns what came back.
pub async fn raw_exchange(proxy: SocketAddr, bytes: &[u8], within: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}
