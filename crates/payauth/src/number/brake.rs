//! The renewal brake: a gateway that keeps refusing the session keys it has just issued (a
//! vendor fault, a clock problem with signed keys, split egress) gets renewals that back off
//! instead of one authentication per refusal, and calls that fail fast meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::session_key::KeyState;
use crate::error::{Error, ErrorCode};
use crate::gateway::Core;
use crate::metrics::ReauthReason;

/// The renewal brake's wait after the `n`th young refusal past the first: 1 s doubling to 5 min,
/// ±20% so that replicas do not renew in step.
fn brake_backoff(n: u32) -> Duration {
    let base =
        Duration::from_secs(1u64 << n.saturating_sub(1).min(9)).min(Duration::from_secs(300));
    base.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// Young 5050 refusals in a row that mark a gateway as split egress: one key used from two
/// egress IPs, each renewal invalidating the other's key (see [`RenewalBrake::refused`]).
pub(crate) const SPLIT_EGRESS_STREAK: u32 = 3;

/// The brake of one gateway: see [`RenewalBrake::refused`].
#[derive(Debug)]
pub(super) struct RenewalBrake {
    /// A key refused younger than this is an anomaly (`renewal_min_key_age`).
    min_key_age: Duration,
    state: Mutex<Brake>,
    /// Whether the brake has ever engaged since it was last released: lets every call skip
    /// the brake's lock while it is off (nearly always).
    engaged: AtomicBool,
}

/// Consecutive refusals of young keys.
#[derive(Debug, Default)]
struct Brake {
    /// Young refusals in a row, all for `reason`.
    streak: u32,
    reason: Option<ReauthReason>,
    /// The newest generation already counted: each key counts once.
    counted: u64,
    until: Option<Instant>,
}

impl RenewalBrake {
    pub(super) fn new(min_key_age: Duration) -> Self {
        Self {
            min_key_age,
            state: Mutex::new(Brake::default()),
            engaged: AtomicBool::new(false),
        }
    }

    /// The gateway (`core`) refused `refused` for `reason`. A key refused younger than `renewal_min_key_age` is a gateway anomaly
    /// (the gateway refuses keys it has just issued: a vendor fault, a clock problem with signed
    /// keys); from the second such refusal in a row for the same reason, renewals back off
    /// exponentially and calls fail fast instead of sending one authentication each. Each key
    /// counts once.
    pub(super) fn refused(
        &self,
        core: &Core,
        refused: &KeyState,
        reason: ReauthReason,
    ) -> Result<(), Error> {
        let now = tokio::time::Instant::now();
        let mut brake = crate::sync::lock(&self.state);
        if refused.generation > brake.counted {
            brake.counted = refused.generation;
            let age = now.saturating_duration_since(refused.obtained);
            if age < self.min_key_age {
                // The same refusal again: an expiry then an IP change is two events, not a loop.
                brake.streak = if brake.reason == Some(reason) {
                    brake.streak + 1
                } else {
                    1
                };
                brake.reason = Some(reason);
                core.metrics.young_key_refused();
                let backoff = (brake.streak >= 2).then(|| brake_backoff(brake.streak - 1));
                brake.until = backoff.map(|b| now + b);
                if brake.until.is_some() {
                    self.engaged.store(true, Ordering::Release);
                }
                tracing::warn!(gateway = %core.name(), reason = reason.as_str(),
                    key_age_ms = age.as_millis() as u64, streak = brake.streak,
                    backoff_ms = backoff.map(|b| b.as_millis() as u64),
                    "gateway anomaly: the gateway refused a session key it issued moments ago");
                if reason == ReauthReason::IpChanged5050
                    && brake.streak >= SPLIT_EGRESS_STREAK
                    && !core.metrics.split_egress()
                {
                    core.metrics.set_split_egress(true);
                    tracing::warn!(gateway = %core.name(), streak = brake.streak,
                        "split egress: this gateway's session keys keep being refused 5050 moments \
                         after a 5050 renewal, so one key is used from two egress IPs (replicas \
                         sharing a key behind different NAT addresses, or a NAT that alternates). \
                         Renewals are braked; give each egress IP its own token (and egress_id)");
                }
            } else {
                self.engaged.store(false, Ordering::Release);
                clear_split_egress(core);
                *brake = Brake {
                    counted: refused.generation,
                    ..Brake::default()
                };
            }
        }
        match brake.until {
            Some(until) if now < until => Err(braked(core, until - now)),
            _ => Ok(()),
        }
    }

    /// Refuses a call during the renewal brake when its key is one the gateway refused.
    pub(super) fn check(&self, core: &Core, key: &KeyState) -> Result<(), Error> {
        if !self.engaged.load(Ordering::Acquire) {
            return Ok(());
        }
        let brake = crate::sync::lock(&self.state);
        if key.generation > brake.counted && key.obtained.elapsed() >= self.min_key_age {
            // A key newer than every refused one has lived past the brake's age: no split.
            clear_split_egress(core);
        }
        match brake.until {
            Some(until) if key.generation <= brake.counted => {
                let now = tokio::time::Instant::now();
                if now < until {
                    return Err(braked(core, until - now));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn clear_split_egress(core: &Core) {
    if core.metrics.split_egress() {
        core.metrics.set_split_egress(false);
        tracing::info!(gateway = %core.name(), "split egress over: a renewed key lasted");
    }
}

fn braked(core: &Core, wait: Duration) -> Error {
    core.error(
        ErrorCode::AuthUnavailable,
        format!(
            "the gateway keeps refusing session keys it has just issued ({}); renewals back \
                 off, the next one in {} ms; nothing was forwarded",
            if core.metrics.split_egress() {
                "split egress: one key used from two egress IPs"
            } else {
                "a gateway anomaly"
            },
            wait.as_millis()
        ),
    )
}
