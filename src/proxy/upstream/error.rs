//! Why a request got no response from its upstream (both paths share it).

use crate::proxy::framing::FramingError;

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    #[error("connecting to {addr} failed: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP/1.1 handshake with {addr} failed: {source}")]
    Handshake {
        addr: String,
        #[source]
        source: hyper::Error,
    },
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// The upstream's response head has no trustworthy framing (see `framing.rs`).
    #[error("upstream {addr}: {source}")]
    Framing {
        addr: String,
        #[source]
        source: FramingError,
    },
    #[error("upstream {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

impl UpstreamError {
    /// Whether the failure happened before a connection existed (connect, resolve).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::ConnectTimeout(_) | UpstreamError::Connect { .. }
        )
    }
    pub fn is_connect_timeout(&self) -> bool {
        matches!(self, UpstreamError::ConnectTimeout(_))
    }
}
