//! Pure types and decisions: names, routes, balancers, configuration, deploy plans and labels.
//! No I/O, no async.

pub mod access;
pub mod api;
pub mod balance;
pub mod canary;
pub mod config;
pub mod deploy;
pub mod dns;
pub mod frontend;
pub mod health;
pub mod histogram;
pub mod host;
pub mod labels;
pub mod ondemand;
pub mod pool;
pub mod renewal;
pub mod route;
pub mod routeset;
pub mod rules;
pub mod sni;
pub mod stats;
pub mod tar;
pub mod traffic;
