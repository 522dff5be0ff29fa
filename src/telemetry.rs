//! Logging setup: `RUST_LOG` filters (default `info`), text or JSON lines on stderr (written as
//! [`crate::log_writer`] describes).

use std::str::FromStr;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;
use crate::log_fields::{PlainFields, PlainFormat, UtcTime};

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
    // Colours only for a person at a terminal: never escape codes in a file or a pipe.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(crate::log_writer::Stderr)
        .with_timer(UtcTime)
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry()
        .with(targets)
        .with(env_filter);
    let result = match format {
        LogFormat::Text if ansi => registry.with(fmt).try_init(),
        LogFormat::Text => registry
            .with(
                fmt.fmt_fields(PlainFields)
                    .event_format(PlainFormat::new(UtcTime)),
            )
            .try_init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
    };
    if let Err(e) = result {
        eprintln!("payauth: logging setup failed: {e}");
    }
}

#[cfg(test)]
// A test's buffer: a poisoned lock is a failed test anyway.
#[allow(clippy::disallowed_methods)]
mod tests {
    use crate::log_fields::{PlainFields, PlainFormat};
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::FormatFields;

    /// What a text subscriber with `fields` (no time, no colours) writes for the same events.
    fn written<N>(fields: N) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        written_with(fields, every_kind_of_field)
    }

    /// What a text subscriber with `fields` (no time, no colours) writes for `events`.
    fn written_with<N>(fields: N, events: impl FnOnce()) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        written_as(
            tracing_subscriber::fmt::format::Format::default().without_time(),
            fields,
            events,
        )
    }

    /// What a text subscriber with `format` and `fields` (no colours) writes for `events`.
    fn written_as<E, N>(format: E, fields: N, events: impl FnOnce()) -> String
    where
        E: tracing_subscriber::fmt::FormatEvent<tracing_subscriber::Registry, N>
            + Send
            + Sync
            + 'static,
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("buffer").extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .fmt_fields(fields)
            .event_format(format)
            .finish();
        tracing::subscriber::with_default(subscriber, events);
        let bytes = buffer.0.lock().expect("buffer").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    fn every_kind_of_field() {
        {
            #[derive(Debug, thiserror::Error)]
            #[error("outer failed")]
            struct Outer(#[source] std::io::Error);
            let error = Outer(std::io::Error::other("inner \x1b[31m cause"));
            let span = tracing::info_span!("request", gateway = %"number", request_id = "pa-1");
            let _entered = span.enter();
            let nested = tracing::debug_span!("inner", n = 3_u64, r#type = "x");
            nested.in_scope(|| {
                tracing::info!(
                    target: "payauth::access",
                    gateway = %"number",
                    method = %http::Method::POST,
                    path = "/a \"quoted\" path\n",
                    status = 200_u16,
                    outcome = "forwarded",
                    replayed = false,
                    upstream_ms = 0.25_f64,
                    skipped = None::<f64>,
                    duration_ms = 1.0_f64 / 3.0,
                    count = -4_i64,
                    big = u128::MAX,
                    request_id = "pa-3f9c2a71b04e-1a",
                );
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "a \x1b[31mred\x1b[0m message {}",
                    7
                );
                tracing::warn!(r#type = "kind", text = "é\u{7f}\u{85}", "plain message");
                tracing::error!(message = "named message", after = true);
                tracing::info!(only = ?Some("debug"));
                tracing::info!("");
            });
        }
    }

    /// A clock stopped at one time, or one that cannot tell the time.
    #[derive(Clone)]
    struct Stopped(bool);

    impl tracing_subscriber::fmt::time::FormatTime for Stopped {
        fn format_time(
            &self,
            w: &mut tracing_subscriber::fmt::format::Writer<'_>,
        ) -> std::fmt::Result {
            if self.0 {
                w.write_str("2026-12-02T10:11:12.000001Z")
            } else {
                Err(std::fmt::Error)
            }
        }
    }

    #[test]
    fn plain_lines_are_exactly_what_the_default_format_writes() {
        use tracing_subscriber::fmt::format::Format;
        for clock in [Stopped(true), Stopped(false)] {
            let events = || {
                every_kind_of_field();
                tracing::trace!(a = 1_u64, "at every level");
                tracing::debug!(b = 2_i64);
                let empty = tracing::info_span!("empty");
                let _entered = empty.enter();
                tracing::error!(target: "elsewhere", "in a span without fields");
            };
            let default = written_as(
                Format::default().with_timer(clock.clone()),
                PlainFields,
                events,
            );
            let plain = written_as(PlainFormat::new(clock), PlainFields, events);
            assert!(default.lines().count() >= 9, "{default}");
            assert!(default.contains("request{gateway=number"), "{default}");
            assert!(default.contains(" TRACE "), "{default}");
            assert_eq!(plain, default);
        }
    }

    proptest::proptest! {
        /// Text, numbers and flags, whatever they hold, as the default writes them (plain
        /// ASCII text takes a shorter way, anything else the default's).
        #[test]
        fn any_field_value_is_written_as_the_default_writes_it(
            text in "[ -~]{0,40}|\\PC{0,20}|.{0,20}",
            n: u64,
            i: i64,
            flag: bool,
            bits: u64,
            nanos in 0u64..100_000_000_000,
            micros in 0u64..2_000_000_000_000,
        ) {
            // Any f64 at all (NaN, infinities and subnormals among them), and durations in ms.
            let float = f64::from_bits(bits);
            let ms = std::time::Duration::from_nanos(nanos).as_secs_f64() * 1000.0;
            // Milliseconds to the microsecond, as the access line has them, on both sides of
            // the 10^9 where the short way stops.
            let us = micros as f64 / 1000.0;
            let events = || {
                tracing::info!(text = text.as_str(), n, i, flag, float, ms, us, "m");
                tracing::info!(r#type = text.as_str(), log.target = "x", message = text.as_str());
            };
            let plain = written_with(PlainFields, events);
            let default = written_with(tracing_subscriber::fmt::format::DefaultFields::new(), events);
            proptest::prop_assert_eq!(plain, default);
        }
    }

    /// Floats where `{:?}` changes notation (1e-4 and 1e16), one step either side of each, where
    /// other shortest-digit writers change theirs (1e-5, 1e21), and the ends of the range.
    #[test]
    fn floats_where_the_notation_changes_are_written_as_the_default_writes_them() {
        let mut floats = vec![
            0.0,
            f64::MIN_POSITIVE,
            f64::MAX,
            5e-324,
            1e-7,
            1e-5,
            1.5e-5,
            1e21,
            1e22,
            0.001,
            0.0005,
            0.0999,
            1.5,
            2.0,
            12.25,
            999_999_999.999,
            1e9,
            1e9 + 0.001,
            f64::NAN,
            f64::INFINITY,
        ];
        for edge in [1e-4_f64, 1e16] {
            floats.extend([
                edge,
                f64::from_bits(edge.to_bits() - 1),
                f64::from_bits(edge.to_bits() + 1),
            ]);
        }
        let negated: Vec<f64> = floats.iter().map(|f| -f).collect();
        floats.extend(negated);
        let events = || {
            for &float in &floats {
                tracing::info!(float);
            }
        };
        let plain = written_with(PlainFields, events);
        let default = written_with(
            tracing_subscriber::fmt::format::DefaultFields::new(),
            events,
        );
        assert!(default.contains("float=1e-5"), "{default}");
        assert!(default.contains("float=0.0001\n"), "{default}");
        assert_eq!(plain, default);
    }

    /// Fields past the staging buffer's 256 bytes: one value longer than it, and many short
    /// fields that fill it several times, with an escaped one and a message in between.
    #[test]
    fn fields_longer_than_the_staging_buffer_are_written_as_the_default_writes_them() {
        let long = "p".repeat(300);
        let events = || {
            tracing::info!(path = long.as_str(), after = 1_u64);
            tracing::info!(
                a = "0123456789012345678901234567890123456789",
                b = "0123456789012345678901234567890123456789",
                c = "0123456789012345678901234567890123456789",
                d = "0123456789012345678901234567890123456789",
                e = "0123456789012345678901234567890123456789",
                f = "quote \" inside",
                g = "0123456789012345678901234567890123456789",
                h = 1.25_f64,
                "and a message"
            );
        };
        let plain = written_with(PlainFields, events);
        let default = written_with(
            tracing_subscriber::fmt::format::DefaultFields::new(),
            events,
        );
        assert!(default.contains(&long), "{default}");
        assert!(default.len() > 600, "{default}");
        assert_eq!(plain, default);
    }

    #[test]
    fn plain_fields_write_exactly_what_the_default_writes() {
        let default = written(tracing_subscriber::fmt::format::DefaultFields::new());
        let plain = written(PlainFields);
        assert!(default.lines().count() >= 6, "{default}");
        assert!(default.contains("method=POST"), "{default}");
        assert!(default.contains("type=\"x\""), "{default}");
        assert!(default.contains("error.sources="), "{default}");
        assert_eq!(plain, default);
    }
}
