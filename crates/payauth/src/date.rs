//! Dates in the config and in the portal's token JSON, read with the `time` crate.

use time::format_description::well_known::{Iso8601, Rfc3339};
use time::{Date, OffsetDateTime, PrimitiveDateTime};

/// Reads an RFC 3339 / ISO 8601 date-time into Unix seconds.
///
/// With an offset (`Z`, `+02:00`, `-05:00`) the instant is the one written. Without one
/// (`2027-05-01T00:00:00`, as Number's Client Admin Portal sends its `ExpirationDate`) it is read
/// as UTC: the vendor documents no zone, and UTC errs by at most a few hours on an expiry that is
/// warned about days ahead. A bare date (`2027-05-01`) is midnight UTC. Impossible dates
/// (February 31) are refused.
pub(crate) fn parse_timestamp(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(at.unix_timestamp());
    }
    // The ISO 8601 reader would drop an offset RFC 3339 refused (`+25:00`): no guessing.
    if has_offset(text) {
        return None;
    }
    if let Ok(at) = PrimitiveDateTime::parse(text, &Iso8601::DEFAULT) {
        return Some(at.assume_utc().unix_timestamp());
    }
    Date::parse(text, &Iso8601::DEFAULT)
        .ok()
        .map(|day| day.midnight().assume_utc().unix_timestamp())
}

/// Whether a date-time string carries a zone: `Z`, or a sign after the time.
fn has_offset(text: &str) -> bool {
    let time = text
        .split_once(['T', 't', ' '])
        .map_or("", |(_, time)| time);
    time.contains(['Z', 'z', '+', '-', '['])
}

#[cfg(test)]
mod tests {
    use super::parse_timestamp;

    #[test]
    fn offsets_are_honoured() {
        // 2025-12-31T22:00:00Z.
        assert_eq!(
            parse_timestamp("2026-01-01T00:00:00+02:00"),
            Some(1_767_218_400)
        );
        assert_eq!(parse_timestamp("2025-12-31T22:00:00Z"), Some(1_767_218_400));
        assert_eq!(
            parse_timestamp("2025-12-31T17:00:00-05:00"),
            Some(1_767_218_400)
        );
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("2023-12-14T14:56:29Z"), Some(1_702_565_789));
    }

    #[test]
    fn no_offset_means_utc() {
        assert_eq!(parse_timestamp("2027-05-01T00:00:00"), Some(1_809_129_600));
        assert_eq!(parse_timestamp("2027-05-01"), Some(1_809_129_600));
        assert_eq!(parse_timestamp(" 2023-12-14 "), Some(1_702_512_000));
    }

    #[test]
    fn impossible_dates_are_refused() {
        assert_eq!(parse_timestamp("2027-02-31T00:00:00Z"), None);
        assert_eq!(parse_timestamp("2027-02-31T00:00:00"), None);
        assert_eq!(parse_timestamp("2027-02-31"), None);
        assert_eq!(parse_timestamp("2027-05-01T25:00:00Z"), None);
        assert_eq!(parse_timestamp("2027-05-01T00:00:00+25:00"), None);
        assert_eq!(parse_timestamp("garbage"), None);
        assert_eq!(parse_timestamp(""), None);
    }
}
