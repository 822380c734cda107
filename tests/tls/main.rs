//! TLS: certificates, SNI, ACME over HTTP-01 / TLS-ALPN-01 / DNS-01, on-demand TLS. One test binary
//! (one link) with a module per former test file; helpers in `tests/support/`.

#[path = "../support/mod.rs"]
mod support;

mod tls;
mod tls_dns;
mod tls_ondemand;
mod tls_pebble;
