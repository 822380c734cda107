//! Berth: a zero-downtime deployment target. `berthd` (daemon) and `berth` (client) share
//! this library; see DESIGN.md for the module map and its import rules.

pub mod api;
pub mod client;
pub mod config;
pub mod daemon;
pub mod deploy;
pub mod lifecycle;
pub mod logging;
pub mod model;
pub mod proxy;
pub mod runtime;
pub mod store;
pub mod tls;
