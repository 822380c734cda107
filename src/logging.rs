//! Log output: journald when running under systemd (`JOURNAL_STREAM` set), otherwise stderr
//! in human or JSON form. Access-log lines use the `berth::access` target.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::model::config::LogFormat;

/// Installs the global subscriber. `level` is a filter directive; `RUST_LOG` overrides it.
pub fn init(level: &str, format: LogFormat) {
    let mut filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // bollard's debug output holds whole Docker requests and answers, container environments
    // included: app secrets would reach the log. Never below info, whatever was asked.
    if let Ok(d) = "bollard=info".parse() {
        filter = filter.add_directive(d);
    }
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            let _ = registry.with(journald).try_init();
            return;
        }
    }
    match format {
        LogFormat::Json => {
            let _ = registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .with_writer(std::io::stderr),
                )
                .try_init();
        }
        LogFormat::Human => {
            let _ = registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(
                            std::io::IsTerminal::is_terminal(&std::io::stderr())
                                && std::env::var_os("NO_COLOR").is_none(),
                        )
                        .with_writer(std::io::stderr),
                )
                .try_init();
        }
    }
}
