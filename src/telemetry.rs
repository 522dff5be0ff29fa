//! Logging setup: `RUST_LOG` filters (default `info`), text or JSON lines on stderr.

use std::str::FromStr;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber; `default_level` applies when `RUST_LOG` is not set.
///
/// `RUST_LOG` of levels and targets (`info`, `payauth=debug,hyper=warn`) is read as a
/// [`Targets`] filter, decided once per call site: it costs nothing per request. Only a
/// `RUST_LOG` that names spans or fields (`[request{gateway=cg}]=debug`) needs an [`EnvFilter`],
/// which also looks at every span entered and exited on the request path.
pub(crate) fn init(format: LogFormat, default_level: &str) {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| default_level.to_owned());
    // One of the two, as a global filter.
    let (targets, env_filter) = match Targets::from_str(&directives) {
        Ok(targets) => (Some(targets), None),
        Err(_) => (
            None,
            Some(EnvFilter::try_new(&directives).unwrap_or_else(|e| {
                eprintln!("payauth: RUST_LOG={directives:?} is not understood ({e}); logging at {default_level}");
                EnvFilter::new(default_level)
            })),
        ),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: never escape codes in a file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let registry = tracing_subscriber::registry()
        .with(targets)
        .with(env_filter);
    let result = match format {
        LogFormat::Text => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
    };
    if let Err(e) = result {
        eprintln!("payauth: logging setup failed: {e}");
    }
}
