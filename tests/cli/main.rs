//! The `berth` CLI against a real daemon: help and snapshots, HTTPS on api.domain, deploys. One
//! test binary (one link) with a module per former test file; helpers in `tests/support/`.

#[path = "../support/mod.rs"]
mod support;

mod cli_api_domain;
mod cli_api_pebble;
mod cli_deploy;
mod cli_help;
