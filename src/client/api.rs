//! HTTP client for berthd's REST API: bearer token, JSON errors turned into `ClientError`s,
//! the API-version handshake, and Server-Sent Event streams (deploy events, logs).
//! Refuses to send a token over plain HTTP to anything but loopback.

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
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            message: root_cause(&e),
        })?;
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
}
