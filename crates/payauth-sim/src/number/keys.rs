//! Session keys, signatures and the vendor's date format.

use super::*;

/// A 42-character upper-hex key shaped like the vendor's: 18 random hex digits, then the hex of
/// 12 ASCII characters (`{seq:05}A{user:06}`, which is what the vendor's examples decode to).
pub(super) fn new_session_key(seq: u64, user_id: u64) -> String {
    let random = fastrand::u128(..);
    let tail = format!("{:05}A{:06}", seq % 100_000, user_id % 1_000_000);
    let mut key = format!("{:018X}", random >> 56);
    for b in tail.bytes() {
        key.push_str(&format!("{b:02X}"));
    }
    key
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks a signed session key `{SessKey}_{Epoch}_{UserID}_{HASH}` and returns the bare key.
/// The hash may be upper- or lowercase hex (the vendor's own examples disagree).
pub(super) fn verify_signature<'a>(
    sent: &'a str,
    secret: &str,
    user_id: u64,
    now_epoch: u64,
    skew: Duration,
) -> Option<&'a str> {
    let (signed, hash_hex) = sent.rsplit_once('_')?;
    let (rest, user) = signed.rsplit_once('_')?;
    let (key, epoch) = rest.rsplit_once('_')?;
    if key.is_empty() || user != user_id.to_string() {
        return None;
    }
    if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let epoch: u64 = epoch.parse().ok()?;
    if now_epoch.abs_diff(epoch) > skew.as_secs() {
        return None;
    }
    let hash = decode_hex(hash_hex)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(signed.as_bytes());
    mac.verify_slice(&hash).ok()?;
    Some(key)
}

pub(super) fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            Some((hi * 16 + lo) as u8)
        })
        .collect()
}

/// `M/D/YYYY h:mm:ss AM` in UTC, the shape of the vendor's `SessKey Expires|...` text.
pub(super) fn format_vendor_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let (hour, min, sec) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let (h12, ampm) = match hour {
        0 => (12, "AM"),
        1..=11 => (hour, "AM"),
        12 => (12, "PM"),
        _ => (hour - 12, "PM"),
    };
    format!("{m}/{d}/{y} {h12}:{min:02}:{sec:02} {ampm}")
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
pub(super) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // d is in 1..=31 and m in 1..=12 by construction.
    (y, m as u32, d as u32)
}
