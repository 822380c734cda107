//! HTTP client for berthd's REST API: bearer token, JSON errors turned into `ClientError`s,
//! the API-version handshake, and Server-Sent Event streams (deploy events, logs).
//! Refuses to send a token over plain HTTP to anything but loopback.
//!
//! Retries: a keep-alive connection can meet berthd's close of it (idle timeout, or the old
//! process ending after `berthd upgrade`) in the instant a request is sent on it. berthd
//! closes such a connection only before reading any byte of a next request, so a request
//! that saw the connection close before any byte of a response is sent again on a new one:
//! idempotent methods after a close or a reset, other methods only after a clean close on a
//! connection that may have been reused (this client had an answer before). A request refused
//! with 503 `upgrading` (deploys, stops and deletes while berthd hands over to its new
//! process) or with 409 `reconcile after start` (the app is not yet reconciled after berthd
//! started) changed nothing and is sent again every 300 ms for up to a minute. Streamed
//! bodies (image uploads) cannot be replayed and are not retried.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::settings::Server;
use super::ClientError;
use crate::model::api::{ErrorBody, ErrorDetail, Version};

/// The API version this client speaks (`GET /v1/version` → `{"api": N}`).
pub use crate::model::api::API_VERSION;

pub struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
    /// Set once an answer arrived: later requests may go out on a pooled (reused) connection.
    answered: std::sync::atomic::AtomicBool,
}

/// Sends after a connection closed under a request (see the module doc).
const RETRIES: u32 = 2;

/// How a request failed before any byte of a response, when that is safe to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dropped {
    /// The server closed the connection (FIN) before answering.
    Closed,
    /// The connection was reset before an answer.
    Reset,
}

/// Whether `e` is a connection that ended before any response byte (not a connect error, a
/// timeout, or an error after the response began).
fn dropped(e: &reqwest::Error) -> Option<Dropped> {
    if e.is_connect() || e.is_timeout() || e.is_body() || e.is_decode() || e.is_status() {
        return None;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() {
                return Some(Dropped::Closed);
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::UnexpectedEof => {
                    Some(Dropped::Closed)
                }
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                    Some(Dropped::Reset)
                }
                _ => None,
            };
        }
        cur = err.source();
    }
    None
}

/// How long a request refused with 503 `upgrading` (berthd handing over to its new process)
/// is sent again before the refusal is reported.
const UPGRADE_WAIT: Duration = Duration::from_secs(60);

fn is_upgrading(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { status: 503, detail: Some(d), .. } if d.code == "upgrading")
}

/// Whether `e` is the 409 an app answers while berthd's reconcile after a start has not
/// finished it (deploys, rollbacks, stops and deletes wait for it; nothing was changed).
fn is_reconciling(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { status: 409, detail: Some(d), .. }
        if d.deployment.as_deref() == Some(crate::deploy::RECONCILING))
}

/// Whether a request that failed with `how` may be sent again.
fn may_retry(method: &Method, how: Dropped, maybe_reused: bool) -> bool {
    let idempotent = matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    idempotent || (how == Dropped::Closed && maybe_reused)
}

/// Whether a URL's host is loopback (plain HTTP is only allowed there).
pub fn is_loopback_url(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Checks a server URL: http(s) only, plain HTTP only to loopback.
pub fn check_url(raw: &str) -> Result<reqwest::Url, ClientError> {
    let url = reqwest::Url::parse(raw).map_err(|e| ClientError::BadUrl {
        url: raw.into(),
        message: e.to_string(),
    })?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback_url(&url) => Ok(url),
        "http" => Err(ClientError::BadUrl {
            url: raw.into(),
            message: "refusing to send the API token over plain HTTP to a non-loopback host; \
                      use https:// (set api.domain on the server) or an SSH tunnel to 127.0.0.1"
                .into(),
        }),
        other => Err(ClientError::BadUrl {
            url: raw.into(),
            message: format!("unsupported scheme {other:?} (use https:// or http://127.0.0.1)"),
        }),
    }
}

/// `BERTH_RESOLVE=HOST=IP[,HOST=IP...]`: connect to IP for HOST, like curl's `--resolve`
/// (the port stays the URL's). For trying `api.domain` before its DNS record exists.
pub fn resolve_overrides(raw: &str) -> Result<Vec<(String, std::net::IpAddr)>, ClientError> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (host, ip) = pair.split_once('=').ok_or_else(|| {
                ClientError::Usage(format!("BERTH_RESOLVE: {pair:?} is not HOST=IP"))
            })?;
            let ip = ip
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| {
                    ClientError::Usage(format!(
                        "BERTH_RESOLVE: {ip:?} (for {host}) is not an IP address"
                    ))
                })?;
            Ok((host.trim().to_ascii_lowercase(), ip))
        })
        .collect()
}

impl Api {
    pub fn new(server: &Server) -> Result<Self, ClientError> {
        let url = check_url(&server.url)?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // berthd never redirects; following one could take the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &server.ca_cert {
            let bad = |message: String| {
                ClientError::Usage(format!(
                "CA certificate {}: {message} (set with `berth server add --ca-cert` or BERTH_CA_CERT)",
                path.display()
            ))
            };
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate in the file".into()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Ok(raw) = std::env::var("BERTH_RESOLVE") {
            for (host, ip) in resolve_overrides(&raw)? {
                builder = builder.resolve(&host, std::net::SocketAddr::new(ip, 0));
            }
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Other(e.to_string()))?;
        Ok(Self {
            base: url.as_str().trim_end_matches('/').to_string(),
            token: server.token.clone(),
            http,
            answered: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    /// Sends and maps transport errors and non-2xx answers to `ClientError`.
    pub async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        use std::sync::atomic::Ordering;
        let unreachable = |e: &reqwest::Error| ClientError::Unreachable {
            url: self.base.clone(),
            message: root_cause(e),
        };
        let mut request = req.build().map_err(|e| unreachable(&e))?;
        let mut attempt = 0;
        let upgrade_wait_until = std::time::Instant::now() + UPGRADE_WAIT;
        let mut said_waiting = false;
        let resp = loop {
            let again = request.try_clone();
            let maybe_reused = self.answered.load(Ordering::Relaxed);
            let method = request.method().clone();
            match self.http.execute(request).await {
                Ok(r)
                    if r.status() == StatusCode::SERVICE_UNAVAILABLE
                        || r.status() == StatusCode::CONFLICT =>
                {
                    self.answered.store(true, Ordering::Relaxed);
                    let err = error_from(r).await;
                    // Refused before anything changed while berthd hands over to its new
                    // process, or has not yet reconciled the app after a start: send it
                    // again once it can take it.
                    let waiting = if is_upgrading(&err) {
                        Some("berthd is upgrading; sending the request again when the new process serves")
                    } else if is_reconciling(&err) {
                        Some("berthd has just started and is reconciling this app; sending the request again when it is done")
                    } else {
                        None
                    };
                    match (again, waiting) {
                        (Some(next), Some(why))
                            if std::time::Instant::now() < upgrade_wait_until =>
                        {
                            if !said_waiting {
                                said_waiting = true;
                                eprintln!("{why}");
                            }
                            request = next;
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        _ => return Err(err),
                    }
                }
                Ok(r) => break r,
                Err(e) => match (again, dropped(&e)) {
                    (Some(next), Some(how))
                        if attempt < RETRIES && may_retry(&method, how, maybe_reused) =>
                    {
                        attempt += 1;
                        request = next;
                        tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    }
                    _ => return Err(unreachable(&e)),
                },
            }
        };
        self.answered.store(true, Ordering::Relaxed);
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(error_from(resp).await)
    }

    /// Sends `body` (if any) as JSON and reads the answer as a `T` (a `model::api` type).
    pub async fn json<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut req = self.request(method, path);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = self.send(req).await?;
        read_json(resp).await
    }

    /// `GET path` read as a `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json::<T, ()>(Method::GET, path, None).await
    }

    /// Compares API versions; a daemon that does not say is treated as a mismatch.
    pub async fn check_version(&self) -> Result<Version, ClientError> {
        #[derive(serde::Deserialize)]
        struct AnyVersion {
            api: Option<u64>,
        }
        // Read loosely first: a daemon of another API version may answer another shape.
        let raw: serde_json::Value = self.get("/v1/version").await.map_err(|e| match e {
            ClientError::Api { status: 404, .. } => ClientError::VersionMismatch {
                client: API_VERSION,
                server: "unknown (the daemon has no /v1/version)".into(),
            },
            other => other,
        })?;
        let server_api = serde_json::from_value::<AnyVersion>(raw.clone())
            .ok()
            .and_then(|v| v.api);
        if server_api != Some(API_VERSION) {
            return Err(ClientError::VersionMismatch {
                client: API_VERSION,
                server: server_api
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "unknown".into()),
            });
        }
        serde_json::from_value(raw).map_err(|e| unexpected(&e))
    }

    /// Follows a Server-Sent Events stream, calling `on_event(event_name, data)` for each
    /// event until the stream ends or the callback returns `false`.
    pub async fn sse(
        &self,
        path: &str,
        mut on_event: impl FnMut(&str, &str) -> bool,
    ) -> Result<(), ClientError> {
        let resp = self
            .send(
                self.request(Method::GET, path)
                    .header("accept", "text/event-stream"),
            )
            .await?;
        let mut stream = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ClientError::Unreachable {
                url: self.base.clone(),
                message: root_cause(&e),
            })?;
            buf.extend_from_slice(&chunk);
            while let Some(end) = find_event_end(&buf) {
                let raw: Vec<u8> = buf.drain(..end).collect();
                let text = String::from_utf8_lossy(&raw);
                let (name, data) = parse_event(&text);
                if (!data.is_empty() || name != "message") && !on_event(&name, &data) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

fn find_event_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| i + 2)
        .or_else(|| buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4))
}

/// Parses one SSE event block into (event name, joined data lines).
pub fn parse_event(block: &str) -> (String, String) {
    let mut name = "message".to_string();
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    (name, data.join("\n"))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let msg = cur.to_string();
    if msg == e.to_string() {
        msg
    } else {
        format!("{e}: {msg}")
    }
}

/// Reads a success answer as a `T`; a body that is not one is an error naming what failed
/// to parse (a renamed or missing field), never a guess.
pub async fn read_json<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, ClientError> {
    let empty = resp.status() == StatusCode::NO_CONTENT;
    let url = resp.url().to_string();
    let bytes = resp.bytes().await.map_err(|e| ClientError::Unreachable {
        url,
        message: root_cause(&e),
    })?;
    let text: &[u8] = if empty && bytes.is_empty() {
        b"null"
    } else {
        &bytes
    };
    serde_json::from_slice(text).map_err(|e| unexpected(&e))
}

fn unexpected(e: &serde_json::Error) -> ClientError {
    ClientError::Other(format!(
        "unexpected answer from berthd: {e} (is the client older or newer than the daemon?)"
    ))
}

/// Turns an error answer into a `ClientError`, reading berthd's JSON error body
/// (`model::api::ErrorBody`).
async fn error_from(resp: reqwest::Response) -> ClientError {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let err: Option<ErrorDetail> = serde_json::from_str::<ErrorBody>(&text)
        .ok()
        .map(|b| b.error);
    let message = match &err {
        Some(e) => e.message.clone(),
        None if text.trim().is_empty() => format!("HTTP {status}"),
        None => text.trim().chars().take(300).collect(),
    };
    let field = err.as_ref().and_then(|e| e.field.clone());
    match status {
        401 => ClientError::Unauthorized(message),
        _ => ClientError::Api {
            status,
            message,
            field,
            detail: err.map(Box::new),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_upgrades_and_reconcile_but_not_for_a_deploy() {
        let err = |status, code: &str, deployment: Option<&str>| ClientError::Api {
            status,
            message: String::new(),
            field: None,
            detail: Some(Box::new(ErrorDetail {
                code: code.into(),
                message: String::new(),
                field: None,
                required_scope: None,
                host: None,
                deployment: deployment.map(str::to_string),
            })),
        };
        assert!(is_upgrading(&err(503, "upgrading", None)));
        let reconciling = err(409, "deploy_in_progress", Some(crate::deploy::RECONCILING));
        assert!(is_reconciling(&reconciling));
        let deploying = err(409, "deploy_in_progress", Some("d-123"));
        assert!(!is_reconciling(&deploying) && !is_upgrading(&deploying));
    }

    #[test]
    fn url_policy() {
        for ok in [
            "https://berth.example.com",
            "http://127.0.0.1:9922",
            "http://localhost:9922",
            "http://[::1]:9922",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://berth.example.com",
            "http://10.0.0.1:9922",
            "ftp://x",
            "nope",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolve_override_syntax() {
        let v = resolve_overrides("API.example.com=127.0.0.1, b.test=[::1]").unwrap();
        assert_eq!(
            v,
            vec![
                ("api.example.com".to_string(), "127.0.0.1".parse().unwrap()),
                ("b.test".to_string(), "::1".parse().unwrap()),
            ]
        );
        assert!(resolve_overrides("a.test").is_err());
        assert!(resolve_overrides("a.test=nope").is_err());
        assert!(resolve_overrides("").unwrap().is_empty());
    }

    #[test]
    fn sse_blocks() {
        assert_eq!(
            parse_event("event: stage\ndata: {\"a\":1}\n"),
            ("stage".into(), "{\"a\":1}".into())
        );
        assert_eq!(
            parse_event("data: a\ndata: b\n"),
            ("message".into(), "a\nb".into())
        );
        assert_eq!(find_event_end(b"data: x\n\nrest"), Some(9));
        assert_eq!(find_event_end(b"data: x\n"), None);
    }

    /// A raw HTTP/1.1 server on loopback. Connection 1 answers its first request (keep-alive)
    /// and then closes after reading the second one without answering (what a connection
    /// closed under a request looks like to a client); every later connection answers.
    /// Returns the address and the count of requests read.
    fn flaky_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = seen.clone();
        std::thread::spawn(move || {
            for (n, conn) in l.incoming().enumerate().take(4) {
                let Ok(c) = conn else { return };
                let mut w = c.try_clone().unwrap();
                let mut r = BufReader::new(c);
                let mut answered = 0;
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    if line != "\r\n" {
                        break;
                    }
                    let mut body = vec![0; len];
                    let _ = std::io::Read::read_exact(&mut r, &mut body);
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if n == 0 && answered == 1 {
                        break; // read it, close without an answer
                    }
                    let _ = w.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
                    );
                    answered += 1;
                }
            }
        });
        (format!("http://{addr}"), seen)
    }

    fn api(url: &str) -> Api {
        Api::new(&Server {
            url: url.to_string(),
            token: "t".into(),
            ca_cert: None,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_request_closed_under_on_a_reused_connection_is_sent_again() {
        // GET: retried on a new connection.
        let (url, seen) = flaky_server();
        let a = api(&url);
        let _: serde_json::Value = a.get("/v1/x").await.unwrap();
        let _: serde_json::Value = a.get("/v1/x").await.unwrap();
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
        // POST on a reused connection that closed cleanly: retried too.
        let (url, seen) = flaky_server();
        let a = api(&url);
        let body = serde_json::json!({"a": 1});
        let _: serde_json::Value = a.json(Method::POST, "/v1/x", Some(&body)).await.unwrap();
        let _: serde_json::Value = a.json(Method::POST, "/v1/x", Some(&body)).await.unwrap();
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    /// Answers 503 `upgrading` twice (as the old process does while it hands over), then 200.
    #[tokio::test]
    async fn a_request_refused_while_berthd_upgrades_is_sent_again() {
        use std::io::{BufRead, BufReader, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().take(3) {
                let Ok(c) = conn else { return };
                let mut w = c.try_clone().unwrap();
                let mut r = BufReader::new(c);
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    line.clear();
                }
                let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = if n < 2 {
                    r#"{"error":{"code":"upgrading","message":"berthd is handing over"}}"#
                } else {
                    "{}"
                };
                let status = if n < 2 {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let _ = write!(
                    w,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let a = api(&format!("http://{addr}"));
        let _: serde_json::Value = a
            .json::<_, ()>(Method::DELETE, "/v1/apps/x", None)
            .await
            .unwrap();
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn retry_rules() {
        use Dropped::*;
        assert!(may_retry(&Method::GET, Reset, false));
        assert!(may_retry(&Method::DELETE, Closed, false));
        assert!(may_retry(&Method::POST, Closed, true));
        assert!(!may_retry(&Method::POST, Closed, false));
        assert!(!may_retry(&Method::POST, Reset, true));
        assert!(!may_retry(&Method::PATCH, Reset, true));
    }
}
