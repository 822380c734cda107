//! Frontend rules: ordered match conditions (host exact/wildcard, path and full URL exact /
//! prefix / regex, any header equals / contains / regex / present, method, client CIDR) and
//! what a match does (send to a pool, redirect with a location template, set/add/remove
//! request and response headers, strip a path prefix). Pure: [`RuleTable::build`] compiles
//! every regex and template once (a bad one is an error naming the rule's field) and
//! [`RuleTable::evaluate`] runs on the request path without locks or allocation beyond the
//! redirect location: regexes are DFAs that search without a cache.
//!
//! Invariant: a built table has every regex compiled and every template parsed; the first rule
//! whose conditions all match wins; no match → the default pool.

use std::collections::BTreeMap;
use std::net::IpAddr;

use regex_automata::dfa::{dense, regex::Regex};
use serde::{Deserialize, Serialize};

use super::route::RouteError;

/// Size limit of one compiled regex (bytes of DFA); bigger patterns are refused at build.
const REGEX_SIZE_LIMIT: usize = 2 << 20;

/// How a string condition matches: `{exact: ...}`, `{prefix: ...}` or `{regex: ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StrMatchRaw", into = "StrMatchRaw")]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    /// Unanchored unless the pattern anchors itself (`^...$`).
    Regex(String),
}

/// The wire form of [`StrMatch`] (a map with exactly one key, in JSON and YAML alike).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrMatchRaw {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
}

impl TryFrom<StrMatchRaw> for StrMatch {
    type Error = &'static str;
    fn try_from(r: StrMatchRaw) -> Result<Self, &'static str> {
        match (r.exact, r.prefix, r.regex) {
            (Some(e), None, None) => Ok(StrMatch::Exact(e)),
            (None, Some(p), None) => Ok(StrMatch::Prefix(p)),
            (None, None, Some(x)) => Ok(StrMatch::Regex(x)),
            _ => Err("give exactly one of exact, prefix, regex"),
        }
    }
}

impl From<StrMatch> for StrMatchRaw {
    fn from(m: StrMatch) -> Self {
        let mut r = StrMatchRaw::default();
        match m {
            StrMatch::Exact(e) => r.exact = Some(e),
            StrMatch::Prefix(p) => r.prefix = Some(p),
            StrMatch::Regex(x) => r.regex = Some(x),
        }
        r
    }
}

/// A header condition: the header named `name` (any of its values).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `true`: the header must be there; `false`: it must not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// One method or a list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Methods {
    One(String),
    Many(Vec<String>),
}

/// Header changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Replace (or create) these headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Append a value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderOps {
    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

fn default_redirect_status() -> u16 {
    302
}

/// Answer with a redirect instead of proxying.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// 301, 302, 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status: u16,
    /// Template: `{scheme}`, `{host}`, `{path}`, `{query}` (without `?`), `{uri}` (path and
    /// query), `{{` and `}}` for braces. `https://{host}{uri}`.
    pub location: String,
}

/// A rule as configured.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Client address ranges (CIDR); any one matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client: Vec<ipnet::IpNet>,
    /// `example.com` (exact, case-insensitive, port ignored) or `*.example.com` (one or more
    /// labels below).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StrMatch>,
    /// The full URL `scheme://host/path?query`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<StrMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Methods>,
    /// The pool that takes what matches (required unless `redirect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderOps>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderOps>,
    /// Removed from the front of the path before proxying (segment-aware: `/api` strips
    /// `/api/x` → `/x` and `/api` → `/`, not `/apix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<String>,
}

impl RuleSpec {
    /// The first HTTP-only condition or action this rule uses (a tcp frontend cannot
    /// evaluate them), as its field name.
    pub fn http_only_field(&self) -> Option<&'static str> {
        [
            (self.host.is_some(), "host"),
            (self.path.is_some(), "path"),
            (self.url.is_some(), "url"),
            (self.header.is_some(), "header"),
            (self.method.is_some(), "method"),
            (self.redirect.is_some(), "redirect"),
            (self.request_headers.is_some(), "request_headers"),
            (self.response_headers.is_some(), "response_headers"),
            (self.strip_prefix.is_some(), "strip_prefix"),
        ]
        .into_iter()
        .find(|(used, _)| *used)
        .map(|(_, f)| f)
    }

    /// True when the client address matches (no `client` condition matches everyone).
    pub fn matches_client(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.client.is_empty() || self.client.iter().any(|n| n.contains(&ip))
    }
}

/// What a request looks like to the rules.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    pub scheme: &'a str,
    /// `Host` (or the authority), possibly with a port.
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a str,
    pub client: IpAddr,
    /// (name, value) pairs; names compared case-insensitively.
    pub headers: &'a [(&'a str, &'a str)],
}

/// What the first matching rule (or the default) decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Action<'t> {
    Forward {
        pool: &'t str,
        /// Index of the rule that matched; `None`: the default pool.
        rule: Option<usize>,
        request_headers: Option<&'t HeaderOps>,
        response_headers: Option<&'t HeaderOps>,
        /// The path to send upstream when a prefix was stripped.
        path: Option<String>,
    },
    Redirect {
        rule: usize,
        status: u16,
        location: String,
    },
}

#[derive(Debug)]
enum Str {
    Exact(String),
    Prefix(String),
    Regex(Box<Regex>),
}

impl Str {
    fn matches(&self, s: &str) -> bool {
        match self {
            Str::Exact(e) => s == e,
            Str::Prefix(p) => s.starts_with(p.as_str()),
            Str::Regex(r) => r.is_match(s),
        }
    }
}

#[derive(Debug)]
enum Hdr {
    Equals(String),
    Contains(String),
    Regex(Box<Regex>),
    Present(bool),
}

#[derive(Debug)]
enum Host {
    Exact(String),
    /// `.example.com`
    Wildcard(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Scheme,
    Host,
    Path,
    Query,
    Uri,
}

#[derive(Debug)]
struct Compiled {
    client: Vec<ipnet::IpNet>,
    host: Option<Host>,
    path: Option<Str>,
    url: Option<Str>,
    header: Option<(String, Hdr)>,
    methods: Vec<String>,
    pool: Option<String>,
    redirect: Option<(u16, Vec<Piece>)>,
    request_headers: Option<HeaderOps>,
    response_headers: Option<HeaderOps>,
    strip_prefix: Option<String>,
}

/// A compiled, immutable rule table (share it behind an `ArcSwap`).
#[derive(Debug)]
pub struct RuleTable {
    rules: Vec<Compiled>,
    default_pool: String,
}

fn compile_regex(field: &str, pattern: &str) -> Result<Box<Regex>, RouteError> {
    let config = dense::Config::new()
        .dfa_size_limit(Some(REGEX_SIZE_LIMIT))
        .determinize_size_limit(Some(REGEX_SIZE_LIMIT));
    Regex::builder()
        .dense(config)
        .build(pattern)
        .map(Box::new)
        .map_err(|e| RouteError {
            field: field.to_string(),
            message: format!("regex {pattern:?} does not compile: {e}"),
        })
}

fn compile_str(field: &str, m: &StrMatch) -> Result<Str, RouteError> {
    Ok(match m {
        StrMatch::Exact(s) => Str::Exact(s.clone()),
        StrMatch::Prefix(s) => Str::Prefix(s.clone()),
        StrMatch::Regex(r) => Str::Regex(compile_regex(&format!("{field}.regex"), r)?),
    })
}

fn parse_template(field: &str, t: &str) -> Result<Vec<Piece>, RouteError> {
    let bad = |m: String| RouteError {
        field: field.to_string(),
        message: m,
    };
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut it = t.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '{' if it.peek() == Some(&'{') => {
                it.next();
                lit.push('{');
            }
            '}' if it.peek() == Some(&'}') => {
                it.next();
                lit.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match it.next() {
                        Some('}') => break,
                        Some(ch) => name.push(ch),
                        None => return Err(bad(format!("unclosed {{ in {t:?}"))),
                    }
                }
                let piece = match name.as_str() {
                    "scheme" => Piece::Scheme,
                    "host" => Piece::Host,
                    "path" => Piece::Path,
                    "query" => Piece::Query,
                    "uri" => Piece::Uri,
                    other => {
                        return Err(bad(format!(
                            "unknown variable {{{other}}} (scheme, host, path, query, uri)"
                        )))
                    }
                };
                if !lit.is_empty() {
                    out.push(Piece::Lit(std::mem::take(&mut lit)));
                }
                out.push(piece);
            }
            '}' => {
                return Err(bad(format!(
                    "unmatched }} in {t:?} (write }}}} for a brace)"
                )))
            }
            c if c.is_control() => return Err(bad("control characters are not allowed".into())),
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        out.push(Piece::Lit(lit));
    }
    if out.is_empty() {
        return Err(bad("must not be empty".into()));
    }
    Ok(out)
}

fn valid_header_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_ops(field: &str, ops: &HeaderOps) -> Result<(), RouteError> {
    let bad = |f: String, m: &str| RouteError {
        field: f,
        message: m.to_string(),
    };
    for (k, v) in ops.set.iter().chain(ops.add.iter()) {
        if !valid_header_name(k) {
            return Err(bad(format!("{field}.{k}"), "not a valid header name"));
        }
        // What `http::HeaderValue` accepts: visible ASCII, spaces, tabs and obs-text.
        if v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(bad(
                format!("{field}.{k}"),
                "header values cannot hold control characters (CR, LF, NUL, ...)",
            ));
        }
    }
    for (i, k) in ops.remove.iter().enumerate() {
        if !valid_header_name(k) {
            return Err(bad(
                format!("{field}.remove[{i}]"),
                "not a valid header name",
            ));
        }
    }
    if ops.is_empty() {
        return Err(bad(field.to_string(), "set, add or remove something"));
    }
    Ok(())
}

/// Strips `prefix` from `path` at a segment boundary; `None` when it does not apply.
pub fn strip_path_prefix(path: &str, prefix: &str) -> Option<String> {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return None;
    }
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some("/".to_string())
    } else if rest.starts_with('/') {
        Some(rest.to_string())
    } else {
        None
    }
}

impl RuleTable {
    /// Compiles `rules` (field paths start at `at`, e.g. `frontends[0]`); `pool_exists` says
    /// whether a pool name is known.
    pub fn build(
        at: &str,
        rules: &[RuleSpec],
        default_pool: &str,
        pool_exists: impl Fn(&str) -> bool,
    ) -> Result<RuleTable, RouteError> {
        let join = |rest: &str| {
            if at.is_empty() {
                rest.to_string()
            } else {
                format!("{at}.{rest}")
            }
        };
        let bad = |f: String, m: String| RouteError {
            field: f,
            message: m,
        };
        if !pool_exists(default_pool) {
            return Err(bad(join("pool"), format!("no pool named {default_pool:?}")));
        }
        let mut out = Vec::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            let f = |rest: &str| join(&format!("rules[{i}].{rest}"));
            let host = match &r.host {
                None => None,
                Some(h) => {
                    let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
                    if let Some(base) = h.strip_prefix("*.") {
                        if base.is_empty() || base.contains('*') {
                            return Err(bad(f("host"), format!("{h:?} is not a valid wildcard")));
                        }
                        Some(Host::Wildcard(format!(".{base}")))
                    } else if h.is_empty() || h.contains('*') || h.contains('/') {
                        return Err(bad(f("host"), format!("{h:?} is not a host name")));
                    } else {
                        Some(Host::Exact(h))
                    }
                }
            };
            let path = match &r.path {
                Some(m) => {
                    if let StrMatch::Exact(p) | StrMatch::Prefix(p) = m {
                        if !p.starts_with('/') {
                            return Err(bad(f("path"), format!("{p:?} must start with /")));
                        }
                    }
                    Some(compile_str(&f("path"), m)?)
                }
                None => None,
            };
            let url = r
                .url
                .as_ref()
                .map(|m| compile_str(&f("url"), m))
                .transpose()?;
            let header = match &r.header {
                None => None,
                Some(h) => {
                    if !valid_header_name(&h.name) {
                        return Err(bad(f("header.name"), "not a valid header name".into()));
                    }
                    let given = [
                        h.equals.is_some(),
                        h.contains.is_some(),
                        h.regex.is_some(),
                        h.present.is_some(),
                    ]
                    .iter()
                    .filter(|x| **x)
                    .count();
                    if given != 1 {
                        return Err(bad(
                            f("header"),
                            "give exactly one of equals, contains, regex, present".into(),
                        ));
                    }
                    let m = if let Some(v) = &h.equals {
                        Hdr::Equals(v.clone())
                    } else if let Some(v) = &h.contains {
                        Hdr::Contains(v.clone())
                    } else if let Some(v) = &h.regex {
                        Hdr::Regex(compile_regex(&f("header.regex"), v)?)
                    } else {
                        Hdr::Present(h.present.unwrap_or(true))
                    };
                    Some((h.name.to_ascii_lowercase(), m))
                }
            };
            let methods: Vec<String> = match &r.method {
                None => Vec::new(),
                Some(Methods::One(m)) => vec![m.clone()],
                Some(Methods::Many(v)) => v.clone(),
            };
            for (k, m) in methods.iter().enumerate() {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(bad(
                        f(&format!("method[{k}]")),
                        format!("{m:?} is not a method (GET, POST, ...)"),
                    ));
                }
            }
            let redirect = match &r.redirect {
                None => None,
                Some(rd) => {
                    if ![301, 302, 303, 307, 308].contains(&rd.status) {
                        return Err(bad(
                            f("redirect.status"),
                            format!(
                                "{} is not a redirect status (301, 302, 303, 307, 308)",
                                rd.status
                            ),
                        ));
                    }
                    Some((
                        rd.status,
                        parse_template(&f("redirect.location"), &rd.location)?,
                    ))
                }
            };
            match (&r.pool, &redirect) {
                (Some(_), Some(_)) => {
                    return Err(bad(
                        f("redirect"),
                        "a rule either redirects or names a pool".into(),
                    ))
                }
                (None, None) => return Err(bad(f("pool"), "name a pool (or redirect)".into())),
                (Some(p), None) if !pool_exists(p) => {
                    return Err(bad(f("pool"), format!("no pool named {p:?}")))
                }
                _ => {}
            }
            if let Some(ops) = &r.request_headers {
                check_ops(&f("request_headers"), ops)?;
            }
            if let Some(ops) = &r.response_headers {
                check_ops(&f("response_headers"), ops)?;
            }
            if let Some(p) = &r.strip_prefix {
                if !p.starts_with('/') || p.trim_end_matches('/').is_empty() {
                    return Err(bad(
                        f("strip_prefix"),
                        format!("{p:?} must start with / and not be / alone"),
                    ));
                }
            }
            out.push(Compiled {
                client: r.client.clone(),
                host,
                path,
                url,
                header,
                methods,
                pool: r.pool.clone(),
                redirect,
                request_headers: r.request_headers.clone(),
                response_headers: r.response_headers.clone(),
                strip_prefix: r.strip_prefix.clone(),
            });
        }
        Ok(RuleTable {
            rules: out,
            default_pool: default_pool.to_string(),
        })
    }

    /// The decision for one request: the first rule whose conditions all match.
    pub fn evaluate(&self, req: &RequestView<'_>) -> Action<'_> {
        for (i, r) in self.rules.iter().enumerate() {
            if !rule_matches(r, req) {
                continue;
            }
            if let Some((status, pieces)) = &r.redirect {
                return Action::Redirect {
                    rule: i,
                    status: *status,
                    location: render(pieces, req),
                };
            }
            let path = r
                .strip_prefix
                .as_deref()
                .and_then(|p| strip_path_prefix(req.path, p));
            return Action::Forward {
                pool: r.pool.as_deref().unwrap_or(&self.default_pool),
                rule: Some(i),
                request_headers: r.request_headers.as_ref(),
                response_headers: r.response_headers.as_ref(),
                path,
            };
        }
        Action::Forward {
            pool: &self.default_pool,
            rule: None,
            request_headers: None,
            response_headers: None,
            path: None,
        }
    }
}

fn host_without_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h.split_once(']').map(|(a, _)| &a[1..]).unwrap_or(h);
    }
    match h.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => h,
    }
}

fn rule_matches(r: &Compiled, req: &RequestView<'_>) -> bool {
    if !r.client.is_empty() {
        let ip = match req.client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(req.client),
            v4 => v4,
        };
        if !r.client.iter().any(|n| n.contains(&ip)) {
            return false;
        }
    }
    if let Some(h) = &r.host {
        let name = host_without_port(req.host).trim_end_matches('.');
        let ok = match h {
            Host::Exact(e) => name.eq_ignore_ascii_case(e),
            Host::Wildcard(suffix) => {
                name.len() > suffix.len()
                    && name.as_bytes()[name.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
        };
        if !ok {
            return false;
        }
    }
    if !r.methods.is_empty() && !r.methods.iter().any(|m| m == req.method) {
        return false;
    }
    if let Some(p) = &r.path {
        if !p.matches(req.path) {
            return false;
        }
    }
    if let Some(u) = &r.url {
        let url = match req.query {
            Some(q) => format!("{}://{}{}?{}", req.scheme, req.host, req.path, q),
            None => format!("{}://{}{}", req.scheme, req.host, req.path),
        };
        if !u.matches(&url) {
            return false;
        }
    }
    if let Some((name, m)) = &r.header {
        let mut values = req
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v);
        let ok = match m {
            Hdr::Present(want) => values.next().is_some() == *want,
            Hdr::Equals(e) => values.any(|v| v == e),
            Hdr::Contains(c) => values.any(|v| v.contains(c.as_str())),
            Hdr::Regex(re) => values.any(|v| re.is_match(v)),
        };
        if !ok {
            return false;
        }
    }
    true
}

fn render(pieces: &[Piece], req: &RequestView<'_>) -> String {
    let mut out = String::new();
    for p in pieces {
        match p {
            Piece::Lit(s) => out.push_str(s),
            Piece::Scheme => out.push_str(req.scheme),
            Piece::Host => out.push_str(req.host),
            Piece::Path => out.push_str(req.path),
            Piece::Query => out.push_str(req.query.unwrap_or("")),
            Piece::Uri => {
                out.push_str(req.path);
                if let Some(q) = req.query {
                    out.push('?');
                    out.push_str(q);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> Vec<RuleSpec> {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn table(yaml: &str) -> RuleTable {
        RuleTable::build("", &rules(yaml), "default", |p| {
            ["default", "a", "b", "c"].contains(&p)
        })
        .unwrap()
    }

    fn build_err(yaml: &str) -> RouteError {
        RuleTable::build("frontends[0]", &rules(yaml), "default", |p| {
            ["default", "a", "b"].contains(&p)
        })
        .unwrap_err()
    }

    struct Req {
        scheme: &'static str,
        host: &'static str,
        path: &'static str,
        query: Option<&'static str>,
        method: &'static str,
        client: &'static str,
        headers: Vec<(&'static str, &'static str)>,
    }

    fn req() -> Req {
        Req {
            scheme: "http",
            host: "example.com",
            path: "/",
            query: None,
            method: "GET",
            client: "192.0.2.1",
            headers: Vec::new(),
        }
    }

    impl Req {
        fn host(mut self, h: &'static str) -> Self {
            self.host = h;
            self
        }
        fn path(mut self, p: &'static str) -> Self {
            self.path = p;
            self
        }
        fn query(mut self, q: &'static str) -> Self {
            self.query = Some(q);
            self
        }
        fn method(mut self, m: &'static str) -> Self {
            self.method = m;
            self
        }
        fn client(mut self, c: &'static str) -> Self {
            self.client = c;
            self
        }
        fn header(mut self, n: &'static str, v: &'static str) -> Self {
            self.headers.push((n, v));
            self
        }
        fn https(mut self) -> Self {
            self.scheme = "https";
            self
        }
    }

    fn pool_of(t: &RuleTable, r: &Req) -> String {
        let view = RequestView {
            scheme: r.scheme,
            host: r.host,
            path: r.path,
            query: r.query,
            method: r.method,
            client: r.client.parse().unwrap(),
            headers: &r.headers,
        };
        match t.evaluate(&view) {
            Action::Forward { pool, .. } => pool.to_string(),
            Action::Redirect {
                status, location, ..
            } => format!("{status} {location}"),
        }
    }

    #[test]
    fn no_rules_means_the_default_pool() {
        assert_eq!(pool_of(&table("[]"), &req()), "default");
    }

    #[test]
    fn host_exact_ignores_case_port_and_trailing_dot() {
        let t = table("- {host: Example.COM, pool: a}");
        assert_eq!(pool_of(&t, &req()), "a");
        assert_eq!(pool_of(&t, &req().host("EXAMPLE.com:8080")), "a");
        assert_eq!(pool_of(&t, &req().host("example.com.")), "a");
        assert_eq!(pool_of(&t, &req().host("www.example.com")), "default");
    }

    #[test]
    fn host_wildcard_matches_names_below_only() {
        let t = table("- {host: '*.example.com', pool: a}");
        assert_eq!(pool_of(&t, &req().host("www.example.com")), "a");
        assert_eq!(pool_of(&t, &req().host("a.b.example.com")), "a");
        assert_eq!(pool_of(&t, &req().host("example.com")), "default");
        assert_eq!(pool_of(&t, &req().host("badexample.com")), "default");
    }

    #[test]
    fn path_exact() {
        let t = table("- {path: {exact: /login}, pool: a}");
        assert_eq!(pool_of(&t, &req().path("/login")), "a");
        assert_eq!(pool_of(&t, &req().path("/login/")), "default");
    }

    #[test]
    fn path_prefix() {
        let t = table("- {path: {prefix: /api/}, pool: a}");
        assert_eq!(pool_of(&t, &req().path("/api/v1")), "a");
        assert_eq!(pool_of(&t, &req().path("/apix")), "default");
    }

    #[test]
    fn path_regex_unanchored_and_anchored() {
        let t = table(
            "- {path: {regex: '\\.(png|jpg)$'}, pool: a}\n- {path: {regex: '^/v[0-9]+/'}, pool: b}",
        );
        assert_eq!(pool_of(&t, &req().path("/img/x.png")), "a");
        assert_eq!(pool_of(&t, &req().path("/v2/users")), "b");
        assert_eq!(pool_of(&t, &req().path("/x/v2/users")), "default");
    }

    #[test]
    fn url_exact_prefix_regex_see_scheme_host_and_query() {
        let t = table(
            "- {url: {exact: 'https://example.com/a?x=1'}, pool: a}\n- {url: {prefix: 'https://example.com/b'}, pool: b}\n- {url: {regex: 'debug=1'}, pool: c}",
        );
        assert_eq!(pool_of(&t, &req().https().path("/a").query("x=1")), "a");
        assert_eq!(pool_of(&t, &req().path("/a").query("x=1")), "default");
        assert_eq!(pool_of(&t, &req().https().path("/b/c")), "b");
        assert_eq!(pool_of(&t, &req().path("/z").query("debug=1")), "c");
    }

    #[test]
    fn header_equals() {
        let t = table("- {header: {name: X-Env, equals: canary}, pool: a}");
        assert_eq!(pool_of(&t, &req().header("x-env", "canary")), "a");
        assert_eq!(pool_of(&t, &req().header("x-env", "Canary")), "default");
    }

    #[test]
    fn header_contains() {
        let t = table("- {header: {name: user-agent, contains: Mobile}, pool: a}");
        assert_eq!(
            pool_of(&t, &req().header("User-Agent", "Foo Mobile Safari")),
            "a"
        );
        assert_eq!(
            pool_of(&t, &req().header("User-Agent", "Desktop")),
            "default"
        );
    }

    #[test]
    fn header_regex() {
        let t = table("- {header: {name: cookie, regex: 'beta=(1|yes)'}, pool: a}");
        assert_eq!(pool_of(&t, &req().header("cookie", "a=b; beta=yes")), "a");
        assert_eq!(pool_of(&t, &req().header("cookie", "beta=no")), "default");
    }

    #[test]
    fn header_present_and_absent() {
        let t = table("- {header: {name: authorization, present: true}, pool: a}\n- {header: {name: x-skip, present: false}, pool: b}");
        assert_eq!(pool_of(&t, &req().header("Authorization", "Bearer x")), "a");
        assert_eq!(pool_of(&t, &req()), "b");
        assert_eq!(pool_of(&t, &req().header("x-skip", "1")), "default");
    }

    #[test]
    fn header_any_of_several_values() {
        let t = table("- {header: {name: accept, equals: text/html}, pool: a}");
        assert_eq!(
            pool_of(
                &t,
                &req()
                    .header("accept", "application/json")
                    .header("accept", "text/html")
            ),
            "a"
        );
    }

    #[test]
    fn method_one_or_list() {
        let t = table("- {method: POST, pool: a}\n- {method: [PUT, DELETE], pool: b}");
        assert_eq!(pool_of(&t, &req().method("POST")), "a");
        assert_eq!(pool_of(&t, &req().method("DELETE")), "b");
        assert_eq!(pool_of(&t, &req().method("GET")), "default");
    }

    #[test]
    fn client_cidr_v4_v6_and_mapped() {
        let t = table("- {client: [10.0.0.0/8, '2001:db8::/32'], pool: a}");
        assert_eq!(pool_of(&t, &req().client("10.1.2.3")), "a");
        assert_eq!(pool_of(&t, &req().client("::ffff:10.1.2.3")), "a");
        assert_eq!(pool_of(&t, &req().client("2001:db8::1")), "a");
        assert_eq!(pool_of(&t, &req().client("192.0.2.1")), "default");
    }

    #[test]
    fn all_conditions_of_a_rule_must_match() {
        let t = table("- {host: example.com, path: {prefix: /api}, method: POST, pool: a}");
        assert_eq!(pool_of(&t, &req().path("/api/x").method("POST")), "a");
        assert_eq!(pool_of(&t, &req().path("/api/x")), "default");
        assert_eq!(pool_of(&t, &req().path("/web").method("POST")), "default");
    }

    #[test]
    fn first_match_wins() {
        let t = table("- {path: {prefix: /api}, pool: a}\n- {path: {prefix: /api/v2}, pool: b}");
        assert_eq!(pool_of(&t, &req().path("/api/v2/x")), "a");
    }

    #[test]
    fn later_rules_apply_when_earlier_ones_do_not_match() {
        let t = table("- {host: other.com, pool: a}\n- {path: {prefix: /}, pool: b}");
        assert_eq!(pool_of(&t, &req()), "b");
    }

    #[test]
    fn redirect_renders_the_template() {
        let t = table("- {path: {prefix: /old}, redirect: {status: 301, location: 'https://{host}/new{uri}'}}");
        assert_eq!(
            pool_of(&t, &req().path("/old/a").query("q=1")),
            "301 https://example.com/new/old/a?q=1"
        );
    }

    #[test]
    fn redirect_default_status_and_all_variables() {
        let t = table("- {redirect: {location: '{scheme}|{host}|{path}|{query}|{{x}}'}}");
        assert_eq!(
            pool_of(&t, &req().path("/p").query("a=b")),
            "302 http|example.com|/p|a=b|{x}"
        );
    }

    #[test]
    fn strip_prefix_is_segment_aware() {
        assert_eq!(strip_path_prefix("/api/x", "/api"), Some("/x".into()));
        assert_eq!(strip_path_prefix("/api", "/api/"), Some("/".into()));
        assert_eq!(strip_path_prefix("/apix", "/api"), None);
        assert_eq!(strip_path_prefix("/web", "/api"), None);
    }

    #[test]
    fn forward_carries_header_ops_and_the_stripped_path() {
        let t = table("- path: {prefix: /api}\n  pool: a\n  strip_prefix: /api\n  request_headers: {set: {x-a: '1'}, remove: [cookie]}\n  response_headers: {add: {x-b: '2'}}");
        let r = req().path("/api/users");
        let view = RequestView {
            scheme: r.scheme,
            host: r.host,
            path: r.path,
            query: None,
            method: "GET",
            client: "127.0.0.1".parse().unwrap(),
            headers: &[],
        };
        match t.evaluate(&view) {
            Action::Forward {
                pool,
                rule,
                request_headers,
                response_headers,
                path,
            } => {
                assert_eq!(
                    (pool, rule, path.as_deref()),
                    ("a", Some(0), Some("/users"))
                );
                assert_eq!(request_headers.unwrap().set["x-a"], "1");
                assert_eq!(request_headers.unwrap().remove, vec!["cookie"]);
                assert_eq!(response_headers.unwrap().add["x-b"], "2");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_regex_names_the_rule() {
        let e =
            build_err("- {path: {prefix: /}, pool: a}\n- {path: {regex: '(unclosed'}, pool: a}");
        assert_eq!(e.field, "frontends[0].rules[1].path.regex");
        assert!(e.message.contains("does not compile"), "{e}");
        let e = build_err("- {header: {name: x, regex: '['}, pool: a}");
        assert_eq!(e.field, "frontends[0].rules[0].header.regex");
        let e = build_err("- {url: {regex: '+'}, pool: a}");
        assert_eq!(e.field, "frontends[0].rules[0].url.regex");
    }

    #[test]
    fn unknown_pool_names_the_rule() {
        let e = build_err("- {pool: a}\n- {pool: nope}");
        assert_eq!(e.field, "frontends[0].rules[1].pool");
        let e = RuleTable::build("x", &[], "nope", |_| false).unwrap_err();
        assert_eq!(e.field, "x.pool");
    }

    #[test]
    fn pool_or_redirect_exactly_one() {
        assert_eq!(
            build_err("- {host: a.com}").field,
            "frontends[0].rules[0].pool"
        );
        let e = build_err("- {pool: a, redirect: {location: /x}}");
        assert_eq!(e.field, "frontends[0].rules[0].redirect");
    }

    #[test]
    fn bad_redirects_are_refused() {
        assert_eq!(
            build_err("- {redirect: {status: 200, location: /x}}").field,
            "frontends[0].rules[0].redirect.status"
        );
        assert_eq!(
            build_err("- {redirect: {location: '/{nope}'}}").field,
            "frontends[0].rules[0].redirect.location"
        );
        assert_eq!(
            build_err("- {redirect: {location: '/{host'}}").field,
            "frontends[0].rules[0].redirect.location"
        );
        assert_eq!(
            build_err("- {redirect: {location: '/a}b'}}").field,
            "frontends[0].rules[0].redirect.location"
        );
    }

    #[test]
    fn bad_hosts_paths_and_methods_are_refused() {
        assert_eq!(
            build_err("- {host: 'a.*.com', pool: a}").field,
            "frontends[0].rules[0].host"
        );
        assert_eq!(
            build_err("- {host: '*.', pool: a}").field,
            "frontends[0].rules[0].host"
        );
        assert_eq!(
            build_err("- {path: {prefix: api}, pool: a}").field,
            "frontends[0].rules[0].path"
        );
        assert_eq!(
            build_err("- {method: [GET, get], pool: a}").field,
            "frontends[0].rules[0].method[1]"
        );
    }

    #[test]
    fn bad_header_conditions_and_ops_are_refused() {
        assert_eq!(
            build_err("- {header: {name: 'bad name', present: true}, pool: a}").field,
            "frontends[0].rules[0].header.name"
        );
        assert_eq!(
            build_err("- {header: {name: x, equals: a, contains: b}, pool: a}").field,
            "frontends[0].rules[0].header"
        );
        assert_eq!(
            build_err("- {request_headers: {set: {x: \"a\\r\\nb\"}}, pool: a}").field,
            "frontends[0].rules[0].request_headers.x"
        );
        assert_eq!(
            build_err("- {response_headers: {add: {x: \"a\\u0001b\"}}, pool: a}").field,
            "frontends[0].rules[0].response_headers.x"
        );
        assert_eq!(
            build_err("- {response_headers: {remove: ['a b']}, pool: a}").field,
            "frontends[0].rules[0].response_headers.remove[0]"
        );
        assert_eq!(
            build_err("- {response_headers: {}, pool: a}").field,
            "frontends[0].rules[0].response_headers"
        );
        assert_eq!(
            build_err("- {strip_prefix: /, pool: a}").field,
            "frontends[0].rules[0].strip_prefix"
        );
    }

    #[test]
    fn unknown_fields_do_not_parse() {
        assert!(serde_yaml::from_str::<Vec<RuleSpec>>("- {pool: a, typo: 1}").is_err());
        assert!(serde_yaml::from_str::<Vec<RuleSpec>>("- {path: {glob: '*'}, pool: a}").is_err());
    }

    #[test]
    fn http_only_fields_are_named_for_tcp_frontends() {
        assert_eq!(
            rules("- {client: [10.0.0.0/8], pool: a}")[0].http_only_field(),
            None
        );
        assert_eq!(
            rules("- {method: GET, pool: a}")[0].http_only_field(),
            Some("method")
        );
        assert_eq!(
            rules("- {strip_prefix: /a, pool: a}")[0].http_only_field(),
            Some("strip_prefix")
        );
        assert_eq!(
            rules("- {redirect: {location: /}}")[0].http_only_field(),
            Some("redirect")
        );
    }

    #[test]
    fn a_table_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RuleTable>();
        let t = std::sync::Arc::new(table("- {path: {regex: '^/x'}, pool: a}"));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || pool_of(&t, &req().path("/xy")))
            })
            .collect();
        for h in hs {
            assert_eq!(h.join().unwrap(), "a");
        }
    }

    #[test]
    fn huge_regexes_are_refused_not_built() {
        let e = build_err("- {path: {regex: '(a|b|c|d|e|f|g|h)*[a-z]{200}x{1,1000}'}, pool: a}");
        assert_eq!(e.field, "frontends[0].rules[0].path.regex");
    }
}
