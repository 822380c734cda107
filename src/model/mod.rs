//! Pure types and decisions: names, routes, balancers, configuration. No I/O, no async.

pub mod balance;
pub mod config;
pub mod health;
pub mod host;
pub mod renewal;
pub mod route;
pub mod sni;
pub mod stats;
