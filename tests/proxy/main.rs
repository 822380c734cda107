//! The proxy: routing and forwarding, health checks, HTTP conformance, fuzzing, TCP mode. One test
//! binary (one link) with a module per former test file; helpers in `tests/support/`.

#[path = "../support/mod.rs"]
mod support;

mod conformance;
mod frontends;
mod fuzz;
mod idle_memory;
mod proxy;
mod proxy_health;
mod tcp;
