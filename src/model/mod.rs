//! Pure types and decisions: names, routes, balancers, configuration. No I/O, no async.

pub mod balance;
pub mod config;
pub mod histogram;
pub mod host;
pub mod route;
pub mod stats;
