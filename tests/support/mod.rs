//! The one helper module of the integration tests, compiled into each test binary with
//! `mod support;`: in-process daemons, real HTTP backends and clients (`proxy`), the `berth`
//! CLI runner (`cli`), ports (`net`), bounded polling (`poll`), a throwaway CA, TLS clients,
//! pebble and Knot (`tls`), and the Docker harness with its cleanup (`docker`). Everything a
//! test starts here stops when its handle is dropped.

#![allow(dead_code, unused_imports)]

pub mod cli;
pub mod docker;
pub mod net;
pub mod poll;
pub mod proxy;
pub mod tls;

pub use net::*;
pub use poll::*;
pub use proxy::*;
pub use tls::*;
