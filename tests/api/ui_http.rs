//! The status page's server side, without a browser: embedded assets and their security
//! headers, login with the API token → HttpOnly/SameSite=Strict session cookie, the session
//! accepted by the API for reads, CSRF token + Origin required for writes, logout, and a
//! revoked token ending its sessions. A real daemon on 127.0.0.1:0 (the browser test is
//! tests/ui/run.sh, run by tests/ui_browser.rs).

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use berth::model::config::Config;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// The API of one daemon, through one keep-alive client.
struct Api {
    client: HttpClient,
    addr: String,
}

impl Api {
    /// `method path` with `headers` and an optional JSON body; the whole response within 10 s.
    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if body.is_some() {
            b = b.header(header::CONTENT_TYPE, "application/json");
        }
        let req = b
            .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
            .expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .expect("response within 10 s")
            .expect("response");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Resp {
            status,
            headers,
            body,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_session_csrf_and_logout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.api.listen = "127.0.0.1:0".parse().unwrap();
    config.log.access_log = false;
    let running = berth::daemon::start(config, None)
        .await
        .expect("daemon starts");
    let (info, token) = running.registry.store().create_token("ui").expect("token");
    let api = running.api_addr.to_string();
    let origin = format!("http://{api}");
    let ui = Api {
        client: Client::builder(TokioExecutor::new()).build_http(),
        addr: api.clone(),
    };

    // Assets, embedded, with the security headers.
    let page = ui.call(Method::GET, "/ui/", &[], None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.header("content-type").starts_with("text/html"));
    let csp = page.header("content-security-policy").to_string();
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    assert_eq!(page.header("x-frame-options"), "DENY");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    assert_eq!(page.header("referrer-policy"), "no-referrer");
    let html = String::from_utf8_lossy(&page.body).to_string();
    assert!(html.contains("/ui/app.js") && !html.contains("<script>") && !html.contains("style="));
    let js = ui.call(Method::GET, "/ui/app.js", &[], None).await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(js.header("content-type").starts_with("text/javascript"));
    assert!(!js.header("content-security-policy").is_empty());
    let css = ui.call(Method::GET, "/ui/style.css", &[], None).await;
    assert!(css.header("content-type").starts_with("text/css"));
    let redirect = ui.call(Method::GET, "/ui", &[], None).await;
    assert_eq!(redirect.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(redirect.header("location"), "/ui/");

    // Without a session: the page's session probe and the API say 401.
    let none = ui.call(Method::GET, "/ui/session", &[], None).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    let none = ui
        .call(
            Method::GET,
            "/v1/routes",
            &[("cookie", "berth_session=0123")],
            None,
        )
        .await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);

    // Bad logins: wrong token, empty body, foreign origin.
    let wrong = format!("{{\"token\":\"berth_{}\"}}", "0".repeat(64));
    let bad = ui.call(Method::POST, "/ui/login", &[], Some(&wrong)).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(bad.headers.get(header::SET_COOKIE).is_none());
    let bad = ui.call(Method::POST, "/ui/login", &[], Some("{}")).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.json()["error"]["field"], "token");
    let login_body = json!({ "token": token }).to_string();
    let bad = ui
        .call(
            Method::POST,
            "/ui/login",
            &[("origin", "http://evil.test")],
            Some(&login_body),
        )
        .await;
    assert_eq!(bad.status, StatusCode::FORBIDDEN);
    assert!(bad.headers.get(header::SET_COOKIE).is_none());

    // Good login.
    let ok = ui
        .call(
            Method::POST,
            "/ui/login",
            &[("origin", &origin)],
            Some(&login_body),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    let set_cookie = ok.header("set-cookie").to_string();
    assert!(set_cookie.starts_with("berth_session="), "{set_cookie}");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set_cookie.contains(attr), "{attr} missing: {set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain-HTTP API: no Secure");
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let csrf = ok.json()["csrf_token"].as_str().expect("csrf").to_string();
    assert_eq!(csrf.len(), 64);
    let again = ui
        .call(Method::GET, "/ui/session", &[("cookie", &cookie)], None)
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["csrf_token"], csrf.as_str());

    // Reads with the cookie alone.
    let routes = ui
        .call(Method::GET, "/v1/routes", &[("cookie", &cookie)], None)
        .await;
    assert_eq!(routes.status, StatusCode::OK);
    let stats = ui
        .call(Method::GET, "/v1/stats", &[("cookie", &cookie)], None)
        .await;
    assert_eq!(stats.status, StatusCode::OK);

    // Writes need the CSRF header (and the right origin when one is sent).
    let route = r#"{"domains":["ui.test"],"backends":[{"id":"a","address":"127.0.0.1:9"}]}"#;
    for (headers, want) in [
        (vec![("cookie", cookie.as_str())], StatusCode::FORBIDDEN),
        (
            vec![("cookie", cookie.as_str()), ("x-csrf-token", "nope")],
            StatusCode::FORBIDDEN,
        ),
        (
            vec![
                ("cookie", cookie.as_str()),
                ("x-csrf-token", csrf.as_str()),
                ("origin", "http://evil.test"),
            ],
            StatusCode::FORBIDDEN,
        ),
        (
            vec![
                ("cookie", cookie.as_str()),
                ("x-csrf-token", csrf.as_str()),
                ("origin", origin.as_str()),
            ],
            StatusCode::CREATED,
        ),
    ] {
        let r = ui
            .call(Method::PUT, "/v1/routes/ui", &headers, Some(route))
            .await;
        assert_eq!(r.status, want, "{headers:?}: {:?}", r.body);
        if want == StatusCode::FORBIDDEN {
            assert!(
                running.registry.route("ui").is_none(),
                "rejected = not applied"
            );
        }
    }
    let r = ui
        .call(
            Method::PUT,
            "/v1/routes/ui/backends/a/state",
            &[("cookie", &cookie), ("x-csrf-token", &csrf)],
            Some(r#"{"state":"drain"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["state"], "drain");

    // The bearer token keeps working, and wins over a stale cookie.
    let bearer = format!("Bearer {token}");
    let r = ui
        .call(
            Method::GET,
            "/v1/routes/ui",
            &[
                ("authorization", &bearer),
                ("cookie", "berth_session=stale"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // Logout needs the CSRF header too; afterwards the cookie is dead.
    let r = ui
        .call(Method::POST, "/ui/logout", &[("cookie", &cookie)], None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = ui
        .call(
            Method::POST,
            "/ui/logout",
            &[("cookie", &cookie), ("x-csrf-token", &csrf)],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.header("set-cookie").contains("Max-Age=0"));
    let r = ui
        .call(Method::GET, "/v1/routes", &[("cookie", &cookie)], None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Revoking the token ends the sessions it opened.
    let ok = ui
        .call(Method::POST, "/ui/login", &[], Some(&login_body))
        .await;
    let cookie2 = ok
        .header("set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let r = ui
        .call(Method::GET, "/v1/stats", &[("cookie", &cookie2)], None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    running
        .registry
        .store()
        .revoke_token(info.id)
        .expect("revoke");
    let r = ui
        .call(Method::GET, "/v1/stats", &[("cookie", &cookie2)], None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"]["code"], "session_expired");

    drop(ui);
    tokio::time::timeout(Duration::from_secs(10), running.shutdown())
        .await
        .expect("daemon stops");
}
