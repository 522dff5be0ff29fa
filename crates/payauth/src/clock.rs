//! The gateway's clock, as the `Date` headers of its answers tell it, against ours.
//!
//! Number's request signature carries the sidecar's Unix time, and a gateway whose clock is far
//! from ours refuses it. The skew is watched so that it shows before signatures break: sampled
//! from at most one answer per second (a look at the local clock per answer otherwise), exported
//! as `payauth_clock_skew_seconds{gateway}` (the gateway's time minus ours), and warned about
//! once when it passes [`SKEW_WARNING`] (again only after it came back within it). The signed
//! time is never changed on the gateway's word: a wrong `Date` must not move what payauth signs.
//!
//! `Date` has a resolution of one second, so its middle is taken as the gateway's time: the
//! skew is known to about ±0.5 s plus the time the answer took to arrive.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use crate::metrics::GatewayMetrics;

/// A skew past this is warned about (and alerted on, `deploy/prometheus`).
pub const SKEW_WARNING: Duration = Duration::from_secs(30);

/// One gateway's watch of its clock.
#[derive(Debug, Default)]
pub(crate) struct SkewWatch {
    /// The local Unix second of the last sample, so that one answer a second is read.
    sampled: AtomicU64,
    /// A warning was logged and the skew has not come back within [`SKEW_WARNING`] since.
    warned: AtomicBool,
}

impl SkewWatch {
    /// Looks at an answer's `Date`, at most once per local second.
    pub(crate) fn observe(&self, headers: &HeaderMap, metrics: &GatewayMetrics) {
        if let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) {
            self.observe_at(headers, now, metrics);
        }
    }

    /// [`observe`](Self::observe) with the local time given (Unix); returns the skew sampled.
    fn observe_at(
        &self,
        headers: &HeaderMap,
        now: Duration,
        metrics: &GatewayMetrics,
    ) -> Option<f64> {
        let second = now.as_secs();
        if self.sampled.load(Ordering::Relaxed) == second {
            return None;
        }
        let date = headers.get(http::header::DATE)?;
        // One answer of the second takes the sample, whichever worker sees it first.
        if self.sampled.swap(second, Ordering::Relaxed) == second {
            return None;
        }
        let skew = skew_seconds(date.to_str().ok()?, now)?;
        metrics.set_clock_skew(skew);
        let far = skew.abs() > SKEW_WARNING.as_secs_f64();
        if far && !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(gateway = %metrics.gateway(), skew_seconds = skew,
                "the gateway's clock (its answers' Date) is far from this host's: signed requests \
                 may be refused; check NTP on this host");
        } else if !far && self.warned.swap(false, Ordering::Relaxed) {
            tracing::info!(gateway = %metrics.gateway(), skew_seconds = skew,
                "the gateway's clock is within the warning bound again");
        }
        Some(skew)
    }
}

/// The gateway's time (the middle of the second an HTTP `Date` names) minus `now` (Unix), in
/// seconds; `None` for a value that is no HTTP date.
fn skew_seconds(date: &str, now: Duration) -> Option<f64> {
    let at = httpdate::parse_http_date(date).ok()?;
    let at = at.duration_since(UNIX_EPOCH).ok()?;
    Some(at.as_secs_f64() + 0.5 - now.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};
    use proptest::prelude::*;

    use super::*;

    fn dated(date: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::DATE,
            HeaderValue::from_str(date).expect("value"),
        );
        headers
    }

    /// 2026-12-06T03:00:00Z.
    const NOW: u64 = 1_796_526_000;

    #[test]
    fn the_skew_is_the_gateways_time_minus_ours() {
        let now = Duration::from_secs(NOW) + Duration::from_millis(250);
        let ours = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(NOW));
        assert_eq!(skew_seconds(&ours, now), Some(0.25));
        let ahead = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(NOW + 90));
        assert_eq!(skew_seconds(&ahead, now), Some(90.25));
        let behind = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(NOW - 45));
        assert_eq!(skew_seconds(&behind, now), Some(-44.75));
        for junk in [
            "",
            "yesterday",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 32 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(skew_seconds(junk, now), None, "{junk:?}");
        }
    }

    #[test]
    fn one_answer_a_second_is_sampled_and_the_warning_is_armed_once() {
        let metrics = GatewayMetrics::unregistered("number");
        let watch = SkewWatch::default();
        let at = |offset: i64| {
            dated(&httpdate::fmt_http_date(
                UNIX_EPOCH + Duration::from_secs(NOW.saturating_add_signed(offset)),
            ))
        };
        let now = Duration::from_secs(NOW);
        assert_eq!(watch.observe_at(&at(60), now, &metrics), Some(60.5));
        assert!(
            watch.warned.load(Ordering::Relaxed),
            "past the bound: warned"
        );
        assert_eq!(
            watch.observe_at(&at(0), now + Duration::from_millis(900), &metrics),
            None,
            "the same second is not sampled again"
        );
        assert_eq!(metrics.clock_skew(), Some(60.5));
        let later = now + Duration::from_secs(1);
        assert_eq!(watch.observe_at(&HeaderMap::new(), later, &metrics), None);
        assert_eq!(
            watch.observe_at(&at(1), later, &metrics),
            Some(0.5),
            "no Date took no sample"
        );
        assert!(
            !watch.warned.load(Ordering::Relaxed),
            "back within: re-armed"
        );
        assert_eq!(metrics.clock_skew(), Some(0.5));
    }

    proptest! {
        /// Any HTTP date is read to within its one-second resolution; any other text is no date.
        #[test]
        fn an_http_date_is_read_to_its_second(offset in -1_000_000i64..1_000_000, junk in ".{0,40}") {
            let now = Duration::from_secs(NOW);
            let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(NOW.saturating_add_signed(offset)));
            prop_assert_eq!(skew_seconds(&date, now), Some(offset as f64 + 0.5));
            if httpdate::parse_http_date(&junk).is_err() {
                prop_assert_eq!(skew_seconds(&junk, now), None);
            }
        }
    }
}
