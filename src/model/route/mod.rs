//! Route specifications (what an operator asks for) and the immutable `RouteTable` snapshot the
//! proxy reads once per request. Building a table validates the whole set of routes; a table
//! that exists is consistent (no domain+prefix claimed twice, every backend address parsed).
//! Per-backend counters and runtime health carry over from the previous table by (route name,
//! backend id); balancer choice (`Route::pick_for`) reads only the snapshot and atomics.
//!
//! Files: `types.rs` (domains, addresses, prefixes, states), `spec.rs` (route and backend specs,
//! balancer and health-check specs, serde), `validate.rs` (`validate_routes`, `RouteError`),
//! `table.rs` (`RouteTable`: build, lookup, pick), `as_rules.rs` (routes as the rules of the
//! default frontends `http` and `https`; the host index is their compiled form).

mod as_rules;
mod spec;
mod table;
mod types;
mod validate;

pub use as_rules::*;
pub use spec::*;
pub use table::*;
pub use types::*;
pub use validate::*;

#[cfg(test)]
mod tests;
