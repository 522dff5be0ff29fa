//! The renewal brake: a gateway that keeps refusing the session keys it has just issued (a
//! vendor fault, a clock problem with signed keys, split egress) gets renewals that back off
//! instead of one authentication per refusal, and calls that fail fast meanwhile.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::keys::KeyState;
use super::layer::NumberGateway;
use crate::error::{Error, ErrorCode};
use crate::metrics::ReauthReason;

/// The renewal brake's wait after the `n`th young refusal past the first: 1 s doubling to 5 min,
/// ±20% so that replicas do not renew in step.
fn brake_backoff(n: u32) -> Duration {
    let base =
        Duration::from_secs(1u64 << n.saturating_sub(1).min(9)).min(Duration::from_secs(300));
    base.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// Young 5050 refusals in a row that mark a gateway as split egress: one key used from two
/// egress IPs, each renewal invalidating the other's key (see [`NumberGateway::brake`]).
pub(crate) const SPLIT_EGRESS_STREAK: u32 = 3;

/// Consecutive refusals of young keys; see [`NumberGateway::brake`].
#[derive(Debug, Default)]
pub(super) struct Brake {
    /// Young refusals in a row, all for `reason`.
    streak: u32,
    reason: Option<ReauthReason>,
    /// The newest generation already counted: each key counts once.
    counted: u64,
    until: Option<Instant>,
}

impl NumberGateway {
    /// The renewal brake. A key refused younger than `renewal_min_key_age` is a gateway anomaly
    /// (the gateway refuses keys it has just issued: a vendor fault, a clock problem with signed
    /// keys); from the second such refusal in a row for the same reason, renewals back off
    /// exponentially and calls fail fast instead of sending one authentication each. Each key
    /// counts once.
    pub(super) fn brake(&self, refused: &KeyState, reason: ReauthReason) -> Result<(), Error> {
        let now = tokio::time::Instant::now();
        let mut brake = crate::sync::lock(&self.brake);
        if refused.generation > brake.counted {
            brake.counted = refused.generation;
            let age = now.saturating_duration_since(refused.obtained);
            if age < self.config.renewal_min_key_age {
                // The same refusal again: an expiry then an IP change is two events, not a loop.
                brake.streak = if brake.reason == Some(reason) {
                    brake.streak + 1
                } else {
                    1
                };
                brake.reason = Some(reason);
                self.core.metrics.young_key_refused();
                let backoff = (brake.streak >= 2).then(|| brake_backoff(brake.streak - 1));
                brake.until = backoff.map(|b| now + b);
                if brake.until.is_some() {
                    self.brake_engaged.store(true, Ordering::Release);
                }
                tracing::warn!(gateway = %self.core.name(), reason = reason.as_str(),
                    key_age_ms = age.as_millis() as u64, streak = brake.streak,
                    backoff_ms = backoff.map(|b| b.as_millis() as u64),
                    "gateway anomaly: the gateway refused a session key it issued moments ago");
                if reason == ReauthReason::IpChanged5050
                    && brake.streak >= SPLIT_EGRESS_STREAK
                    && !self.core.metrics.split_egress()
                {
                    self.core.metrics.set_split_egress(true);
                    tracing::warn!(gateway = %self.core.name(), streak = brake.streak,
                        "split egress: this gateway's session keys keep being refused 5050 moments \
                         after a 5050 renewal, so one key is used from two egress IPs (replicas \
                         sharing a key behind different NAT addresses, or a NAT that alternates). \
                         Renewals are braked; give each egress IP its own token (and egress_id)");
                }
            } else {
                self.brake_engaged.store(false, Ordering::Release);
                self.clear_split_egress();
                *brake = Brake {
                    counted: refused.generation,
                    ..Brake::default()
                };
            }
        }
        match brake.until {
            Some(until) if now < until => Err(self.braked(until - now)),
            _ => Ok(()),
        }
    }

    /// Refuses a call during the renewal brake when its key is one the gateway refused.
    pub(super) fn check_brake(&self, key: &KeyState) -> Result<(), Error> {
        if !self.brake_engaged.load(Ordering::Acquire) {
            return Ok(());
        }
        let brake = crate::sync::lock(&self.brake);
        if key.generation > brake.counted
            && key.obtained.elapsed() >= self.config.renewal_min_key_age
        {
            // A key newer than every refused one has lived past the brake's age: no split.
            self.clear_split_egress();
        }
        match brake.until {
            Some(until) if key.generation <= brake.counted => {
                let now = tokio::time::Instant::now();
                if now < until {
                    return Err(self.braked(until - now));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn clear_split_egress(&self) {
        if self.core.metrics.split_egress() {
            self.core.metrics.set_split_egress(false);
            tracing::info!(gateway = %self.core.name(), "split egress over: a renewed key lasted");
        }
    }

    fn braked(&self, wait: Duration) -> Error {
        self.core.error(
            ErrorCode::AuthUnavailable,
            format!(
                "the gateway keeps refusing session keys it has just issued ({}); renewals back \
                 off, the next one in {} ms; nothing was forwarded",
                if self.core.metrics.split_egress() {
                    "split egress: one key used from two egress IPs"
                } else {
                    "a gateway anomaly"
                },
                wait.as_millis()
            ),
        )
    }
}
