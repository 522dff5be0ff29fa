//! The text log format without colours: its lines ([`PlainFormat`]), fields ([`PlainFields`])
//! and timestamps ([`UtcTime`]), each writing exactly what tracing-subscriber's default writes,
//! with less work per line (the tests compare both byte for byte). Its own file so that
//! `benches/layer.rs` measures the sidecar's format with it.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Format, Full, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Lines as tracing-subscriber's default (`Full`) format writes them without colours:
/// `<time> <LEVEL> <span>{<fields>}:<span>{<fields>}: <target>: <fields>`, with the pieces
/// written as they are rather than through `Display` wrappers that paint them (which they do
/// even with colours off). Lines with colours, and records of the `log` crate (whose metadata
/// the default rewrites), go to the default format itself.
#[derive(Debug)]
pub(crate) struct PlainFormat<T> {
    timer: T,
    default: Format<Full, T>,
}

impl<T: FormatTime + Clone> PlainFormat<T> {
    pub(crate) fn new(timer: T) -> Self {
        Self {
            default: Format::default().with_timer(timer.clone()),
            timer,
        }
    }
}

impl<S, N, T> FormatEvent<S, N> for PlainFormat<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if writer.has_ansi_escapes() || meta.fields().field("log.target").is_some() {
            return self.default.format_event(ctx, writer, event);
        }
        if self.timer.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_str(match *meta.level() {
            Level::TRACE => " TRACE ",
            Level::DEBUG => " DEBUG ",
            Level::INFO => "  INFO ",
            Level::WARN => "  WARN ",
            Level::ERROR => " ERROR ",
        })?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                writer.write_str(span.metadata().name())?;
                seen = true;
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        writer.write_char('{')?;
                        writer.write_str(fields)?;
                        writer.write_char('}')?;
                    }
                }
                writer.write_char(':')?;
            }
            if seen {
                writer.write_char(' ')?;
            }
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// Fields written exactly as tracing-subscriber's default text format writes them without
/// colours (`name=value` separated by spaces, `{:?}` values, so strings quoted), with fewer
/// formatting calls. The default visitor paints every field name and `=` even with colours
/// off, which was a tenth of a call's cost in payauth with the access line on (its fields are
/// all plain). Messages, errors and `r#` names, which the default escapes or expands, go to the
/// default visitor itself; the tests compare both formats' output.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = PlainVisitor {
            out: Staged::new(writer),
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result.and_then(|()| visitor.out.flush())
    }
}

/// How many bytes [`Staged`] gathers before it writes them on.
const STAGED: usize = 256;

/// Text on its way to a [`Writer`], gathered on the stack and written on in one piece when the
/// fields are done (or the room runs out). Every write through a `Writer` is a few dynamic
/// calls, and a span's fields go into a new `String` that would otherwise grow, and move,
/// field by field.
struct Staged<'a> {
    writer: Writer<'a>,
    bytes: [u8; STAGED],
    len: usize,
}

impl<'a> Staged<'a> {
    fn new(writer: Writer<'a>) -> Self {
        Self {
            writer,
            bytes: [0; STAGED],
            len: 0,
        }
    }

    /// Writes what is gathered on to the writer.
    fn flush(&mut self) -> fmt::Result {
        if self.len == 0 {
            return Ok(());
        }
        // Only whole `str`s are gathered, so the bytes are always UTF-8 (the check is cheap on
        // ASCII, and keeps the crate free of `unsafe`).
        let text = std::str::from_utf8(&self.bytes[..self.len]).map_err(|_| fmt::Error)?;
        self.len = 0;
        self.writer.write_str(text)
    }

    /// One ASCII character (a separator or a quote), without a call through `fmt::Write`.
    fn ascii(&mut self, c: u8) -> fmt::Result {
        debug_assert!(c.is_ascii());
        if self.len == STAGED {
            self.flush()?;
        }
        self.bytes[self.len] = c;
        self.len += 1;
        Ok(())
    }

    /// The writer itself, with everything gathered so far written to it first.
    fn writer(&mut self) -> Result<&mut Writer<'a>, fmt::Error> {
        self.flush()?;
        Ok(&mut self.writer)
    }
}

impl fmt::Write for Staged<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        if STAGED - self.len < text.len() {
            self.flush()?;
            if STAGED < text.len() {
                return self.writer.write_str(text);
            }
        }
        let end = self.len + text.len();
        self.bytes[self.len..end].copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }

    fn write_char(&mut self, c: char) -> fmt::Result {
        self.write_str(c.encode_utf8(&mut [0; 4]))
    }
}

struct PlainVisitor<'a> {
    out: Staged<'a>,
    is_empty: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// Writes ` name=` and then the value `write` writes.
    fn field(&mut self, name: &str, write: impl FnOnce(&mut Staged<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let out = &mut self.out;
        self.result = if self.is_empty {
            Ok(())
        } else {
            out.ascii(b' ')
        }
        .and_then(|()| {
            out.write_str(name)?;
            out.ascii(b'=')?;
            write(out)
        });
        self.is_empty = false;
    }

    /// An integer in decimal, as `{:?}` writes it.
    fn record_integer<I: itoa::Integer + fmt::Debug>(&mut self, field: &Field, value: I) {
        if plain_name(field.name()) {
            self.field(field.name(), |w| {
                w.write_str(itoa::Buffer::new().format(value))
            });
        } else {
            self.record_debug(field, &value);
        }
    }

    /// Lets the default visitor write one field, then carries on after it.
    fn default_visitor(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        self.result = self.out.writer().and_then(|writer| {
            let mut visitor = DefaultVisitor::new(writer.by_ref(), self.is_empty);
            record(&mut visitor);
            visitor.finish()
        });
        self.is_empty = false;
    }
}

/// `value` as a whole number of thousandths, when it is the `f64` nearest to one (from 0.001 up
/// to 10^9): the access line's times, milliseconds to the microsecond.
///
/// For those `{:?}` writes the thousandths in plain decimals, trailing zeros trimmed: the
/// decimal parses back to `value` (it is the nearest), and no shorter one does, since `value`'s
/// neighbours are less than a thousandth apart below 10^9. Core's shortest-digit search costs
/// several hundred instructions per field; this costs a multiplication and a division.
fn thousandths(value: f64) -> Option<u64> {
    if !(0.001..1e9).contains(&value) {
        return None;
    }
    let n = (value * 1000.0).round();
    // Exact: `n` is a whole number below 2^53, and the division is correctly rounded.
    (n / 1000.0 == value).then_some(n as u64)
}

/// Writes `n` thousandths as `{:?}` writes their `f64`: `12.5`, `0.007`, `3.0`.
fn write_thousandths(w: &mut Staged<'_>, n: u64) -> fmt::Result {
    w.write_str(itoa::Buffer::new().format(n / 1000))?;
    w.ascii(b'.')?;
    let fraction = n % 1000;
    if fraction == 0 {
        return w.ascii(b'0');
    }
    // Three digits, the trailing zeros left out.
    let digits = [fraction / 100, fraction / 10 % 10, fraction % 10];
    let used = if !fraction.is_multiple_of(10) {
        3
    } else if !fraction.is_multiple_of(100) {
        2
    } else {
        1
    };
    digits[..used]
        .iter()
        .try_for_each(|&digit| w.ascii(b'0' + digit as u8))
}

/// Whether a field of this name is written as `name=value` (not a message, an `r#` name or a
/// `log` record's metadata, which [`PlainVisitor::record_debug`] treats apart).
fn plain_name(name: &str) -> bool {
    name != "message" && !name.starts_with("r#") && !name.starts_with("log.")
}

/// Whether `{:?}` writes `text` as itself between quotes: printable ASCII but `"` and `\`.
fn quotes_only(text: &str) -> bool {
    // A fold without an early exit, which the compiler turns into vector instructions.
    text.bytes().fold(true, |plain, b| {
        plain & (0x20..0x7f).contains(&b) & (b != b'"') & (b != b'\\')
    })
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let name = field.name();
        if name == "message" {
            self.default_visitor(|v| v.record_str(field, value));
        } else if plain_name(name) && quotes_only(value) {
            // What `{:?}` writes, without its per-character escaping.
            self.field(name, |w| {
                w.ascii(b'"')?;
                w.write_str(value)?;
                w.ascii(b'"')
            });
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if plain_name(field.name()) {
            self.field(field.name(), |w| {
                w.write_str(if value { "true" } else { "false" })
            });
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        match thousandths(value) {
            Some(n) if plain_name(field.name()) => {
                self.field(field.name(), |w| write_thousandths(w, n))
            }
            _ => self.record_debug(field, &value),
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_integer(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_integer(field, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_ok() {
            self.default_visitor(|v| v.record_error(field, value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        // Log metadata of `log` records, already in the line's head (as the default skips it).
        if name.starts_with("log.") {
            return;
        }
        if name == "message" || name.starts_with("r#") {
            return self.default_visitor(|v| v.record_debug(field, value));
        }
        self.field(name, |w| write!(w, "{value:?}"));
    }
}

/// Timestamps exactly as tracing-subscriber's default timer writes them
/// (`2026-12-02T12:34:56.123456Z`, UTC), with the date and the time of day formatted once per
/// second per thread rather than for every line: formatting them was a quarter of the access
/// line's cost.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct UtcTime;

impl FormatTime for UtcTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        write_time(w, now)
    }
}

/// Writes the time `since_epoch` after 1970 as [`UtcTime`] does.
fn write_time(w: &mut impl fmt::Write, since_epoch: Duration) -> fmt::Result {
    thread_local! {
        /// The last second formatted on this thread, and its `YYYY-MM-DDTHH:MM:SS.`.
        static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
    }
    let secs = since_epoch.as_secs();
    let prefix = SECOND.with(|cached| match cached.get() {
        (second, prefix) if second == secs => prefix,
        _ => {
            let prefix = date_and_time(secs);
            cached.set((secs, prefix));
            prefix
        }
    });
    let mut text = [0u8; 27];
    text[..20].copy_from_slice(&prefix);
    let mut micros = since_epoch.subsec_micros();
    for digit in text[20..26].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    text[26] = b'Z';
    // ASCII throughout, so never the empty fallback.
    w.write_str(std::str::from_utf8(&text).unwrap_or_default())
}

/// `YYYY-MM-DDTHH:MM:SS.` of the second `secs` after 1970, UTC.
fn date_and_time(secs: u64) -> [u8; 20] {
    let mut prefix = *b"1970-01-01T00:00:00.";
    if let Ok(t) = i64::try_from(secs)
        .map_err(|_| ())
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).map_err(|_| ()))
    {
        let mut cursor = std::io::Cursor::new(&mut prefix[..]);
        let _ = std::io::Write::write_fmt(
            &mut cursor,
            format_args!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            ),
        );
    }
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_in_the_default_timers_format() {
        let at = |since_epoch| {
            let mut text = String::new();
            write_time(&mut text, since_epoch).expect("written");
            text
        };
        for (secs, micros, expected) in [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, 500_000, "2000-02-29T00:00:00.500000Z"),
            (1_796_169_599, 999_999, "2026-12-01T23:59:59.999999Z"),
            (1_764_633_600, 7, "2025-12-02T00:00:00.000007Z"),
            (4_102_444_799, 123_456, "2099-12-31T23:59:59.123456Z"),
        ] {
            let since_epoch = Duration::new(secs, micros * 1000 + 999);
            assert_eq!(at(since_epoch), expected);
            // Again from the cache, in the same second and in the next day.
            assert_eq!(at(since_epoch), expected);
            assert_ne!(
                at(since_epoch + Duration::from_secs(86_400))[..10],
                expected[..10]
            );
        }
    }

    #[test]
    fn utc_time_writes_what_the_default_timer_writes() {
        use tracing_subscriber::fmt::time::SystemTime as Default;
        let format = |timer: &dyn FormatTime| {
            let mut text = String::new();
            timer
                .format_time(&mut Writer::new(&mut text))
                .expect("written");
            text
        };
        // Both at the same second: tried again if a second began between the two.
        let (ours, theirs) = (0..10)
            .map(|_| (format(&UtcTime), format(&Default)))
            .find(|(ours, theirs)| ours[..19] == theirs[..19])
            .expect("two readings in the same second");
        assert_eq!(ours.len(), theirs.len(), "{ours} {theirs}");
        assert_eq!(ours[..20], theirs[..20], "{ours} {theirs}");
        assert!(ours.ends_with('Z') && theirs.ends_with('Z'));
    }
}
