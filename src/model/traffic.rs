//! Per-app traffic controls that sit in front of the balancer: `pause` (new requests are held,
//! not refused, until `resume` or a per-request timeout, then 503) and `maintenance` (a 503 page
//! with `Retry-After`, HTML or JSON by `Accept`, optionally letting listed client networks
//! through). An `AppGate` travels inside the app's route spec, so the proxy reads it from the
//! snapshot it already loaded: no lock and no extra load on the request path, and a route
//! without a gate pays one `is_none` branch.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::deploy::SpecError;

/// Longest a paused app may hold one request.
pub const MAX_PAUSE_TIMEOUT: Duration = Duration::from_secs(600);
/// Default hold of `berth pause`.
pub const DEFAULT_PAUSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `Retry-After` of a maintenance page, in seconds.
pub const DEFAULT_RETRY_AFTER: u32 = 120;
/// Longest maintenance message.
pub const MAX_MESSAGE: usize = 1000;

fn default_pause_timeout() -> Duration {
    DEFAULT_PAUSE_TIMEOUT
}
fn default_retry_after() -> u32 {
    DEFAULT_RETRY_AFTER
}

/// `berth pause APP --timeout 30s`: each new request waits up to `timeout` for `resume`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pause {
    #[serde(default = "default_pause_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for Pause {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_PAUSE_TIMEOUT,
        }
    }
}

impl Pause {
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.timeout.is_zero() || self.timeout > MAX_PAUSE_TIMEOUT {
            return Err(SpecError {
                field: "timeout".into(),
                message: "must be between 1ms and 10m".into(),
            });
        }
        Ok(())
    }
}

/// `berth maintenance APP on`: every request answered 503 with `Retry-After`, except from
/// the `allow`ed client networks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    /// Shown on the page (plain text; escaped in HTML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Seconds, sent as `Retry-After` (1-86400).
    #[serde(default = "default_retry_after")]
    pub retry_after: u32,
    /// Client networks that still reach the app (e.g. the operator's office).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<ipnet::IpNet>,
}

impl Default for Maintenance {
    fn default() -> Self {
        Self {
            message: None,
            retry_after: DEFAULT_RETRY_AFTER,
            allow: Vec::new(),
        }
    }
}

impl Maintenance {
    pub fn validate(&self) -> Result<(), SpecError> {
        let err = |f: &str, m: &str| SpecError {
            field: f.into(),
            message: m.into(),
        };
        if !(1..=86_400).contains(&self.retry_after) {
            return Err(err("retry_after", "must be between 1 and 86400 seconds"));
        }
        if let Some(m) = &self.message {
            if m.chars().count() > MAX_MESSAGE {
                return Err(err("message", "must be at most 1000 characters"));
            }
            if m.chars().any(|c| c.is_control() && c != '\n') {
                return Err(err("message", "must not contain control characters"));
            }
        }
        Ok(())
    }

    /// Whether `client` is let through to the app.
    pub fn allows(&self, client: IpAddr) -> bool {
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(client),
            v4 => v4,
        };
        self.allow.iter().any(|n| n.contains(&client))
    }

    /// The 503 page: (content type, body). JSON when the client asks for it.
    pub fn page(&self, json: bool) -> (&'static str, String) {
        let message = self
            .message
            .clone()
            .unwrap_or_else(|| "This service is down for maintenance.".into());
        if json {
            (
                "application/json",
                format!(
                    "{{\"error\":\"maintenance\",\"message\":{},\"retry_after\":{}}}\n",
                    json_string(&message),
                    self.retry_after
                ),
            )
        } else {
            (
                "text/html; charset=utf-8",
                format!(
                    "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Maintenance</title></head>\
                     <body><h1>Down for maintenance</h1><p>{}</p><p>Please retry in {} seconds.</p></body></html>\n",
                    html_escape(&message),
                    self.retry_after
                ),
            )
        }
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' => out.push_str("<br>"),
            c => out.push(c),
        }
    }
    out
}

/// Whether an `Accept` header prefers JSON to HTML (API clients, `curl -H 'Accept:
/// application/json'`); browsers list `text/html` first.
pub fn wants_json(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let mut json = None;
    let mut html = None;
    for (i, part) in accept.split(',').enumerate() {
        let media = part.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("application/json") || media.ends_with("+json") {
            json.get_or_insert(i);
        } else if media.eq_ignore_ascii_case("text/html") {
            html.get_or_insert(i);
        }
    }
    match (json, html) {
        (Some(j), Some(h)) => j < h,
        (Some(_), None) => true,
        _ => false,
    }
}

/// The gate of one app: what the proxy does before it balances. Persisted per app; empty =
/// no gate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppGate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<Pause>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
}

impl AppGate {
    pub fn is_empty(&self) -> bool {
        self.paused.is_none() && self.maintenance.is_none()
    }

    /// What the proxy does with a request from `client`.
    pub fn admit(&self, client: IpAddr) -> Admit<'_> {
        if let Some(m) = &self.maintenance {
            if !m.allows(client) {
                return Admit::Maintenance(m);
            }
            // Allowed clients pass maintenance, and are not held by a pause either: they
            // are the operators checking the app.
            return Admit::Pass;
        }
        match &self.paused {
            Some(p) => Admit::Hold(p.timeout),
            None => Admit::Pass,
        }
    }
}

/// The gate's decision for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<'a> {
    Pass,
    /// Wait up to this long for the gate to open (a newer table), then 503.
    Hold(Duration),
    /// Answer with the maintenance page.
    Maintenance(&'a Maintenance),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let cases: &[(Option<&str>, bool)] = &[
            (None, false),
            (Some("application/json"), true),
            (Some("application/problem+json"), true),
            (
                Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
                false,
            ),
            (Some("application/json, text/html"), true),
            (Some("text/html, application/json"), false),
            (Some("*/*"), false),
            (Some("text/plain"), false),
        ];
        for (h, want) in cases {
            assert_eq!(wants_json(*h), *want, "{h:?}");
        }
    }

    #[test]
    fn gate_decisions() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(AppGate::default().admit(ip("1.2.3.4")), Admit::Pass);
        assert!(AppGate::default().is_empty());
        let paused = AppGate {
            paused: Some(Pause {
                timeout: Duration::from_secs(5),
            }),
            maintenance: None,
        };
        assert_eq!(
            paused.admit(ip("1.2.3.4")),
            Admit::Hold(Duration::from_secs(5))
        );
        let m = Maintenance {
            allow: vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            ..Maintenance::default()
        };
        let gate = AppGate {
            paused: paused.paused.clone(),
            maintenance: Some(m.clone()),
        };
        assert_eq!(gate.admit(ip("1.2.3.4")), Admit::Maintenance(&m));
        assert_eq!(gate.admit(ip("10.1.2.3")), Admit::Pass);
        assert_eq!(gate.admit(ip("::ffff:10.1.2.3")), Admit::Pass);
        assert_eq!(gate.admit(ip("2001:db8::1")), Admit::Pass);
        assert_eq!(
            gate.admit(ip("2001:db9::1")),
            Admit::Maintenance(&m),
            "outside the allowed networks"
        );
    }

    #[test]
    fn pages_and_validation() {
        let m = Maintenance {
            message: Some("Back <soon> & \"fast\"".into()),
            retry_after: 60,
            allow: vec![],
        };
        let (ct, html) = m.page(false);
        assert!(ct.starts_with("text/html"));
        assert!(
            html.contains("Back &lt;soon&gt; &amp; &quot;fast&quot;"),
            "{html}"
        );
        let (ct, json) = m.page(true);
        assert_eq!(ct, "application/json");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["retry_after"], 60);
        assert_eq!(v["message"], "Back <soon> & \"fast\"");
        m.validate().unwrap();
        let bad: &[(Maintenance, &str)] = &[
            (
                Maintenance {
                    retry_after: 0,
                    ..Maintenance::default()
                },
                "retry_after",
            ),
            (
                Maintenance {
                    message: Some("x".repeat(1001)),
                    ..Maintenance::default()
                },
                "message",
            ),
            (
                Maintenance {
                    message: Some("a\u{7}b".into()),
                    ..Maintenance::default()
                },
                "message",
            ),
        ];
        for (m, field) in bad {
            assert_eq!(m.validate().unwrap_err().field, *field);
        }
        assert_eq!(
            Pause {
                timeout: Duration::from_secs(601)
            }
            .validate()
            .unwrap_err()
            .field,
            "timeout"
        );
        // Persisted form round-trips; unknown fields are refused.
        let g = AppGate {
            paused: Some(Pause::default()),
            maintenance: Some(m),
        };
        let again: AppGate = serde_json::from_str(&serde_json::to_string(&g).unwrap()).unwrap();
        assert_eq!(again, g);
        assert!(serde_json::from_str::<Maintenance>(r#"{"retry":1}"#).is_err());
        assert!(serde_json::from_str::<Maintenance>(r#"{"allow":["10.0.0.0/33"]}"#).is_err());
    }
}
