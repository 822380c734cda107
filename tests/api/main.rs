//! The REST API, its access rules, and the status page. One test binary (one link) with a module
//! per former test file; helpers in `tests/support/`.

#[path = "../support/mod.rs"]
mod support;

mod access;
mod api;
mod contract;
mod ui_browser;
mod ui_http;
