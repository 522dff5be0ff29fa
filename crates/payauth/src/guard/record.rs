//! What the guard remembers, and the rules it applies to it: a record per credential
//! fingerprint, and the pure functions that decide what may be sent and what an outcome does.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

use super::VENDOR_CEILING;

/// A one-way fingerprint of a gateway's credentials.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    /// Fingerprints the given credential parts (for example an account code and a token).
    pub fn of(parts: &[&[u8]]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"payauth-guard-v1");
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        let digest = hasher.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        Self(out)
    }

    /// The fingerprint in hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", &self.to_hex()[..12])
    }
}

/// What the guard remembers about one set of credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardRecord {
    /// Rejected authentications in a row.
    pub rejected: u32,
    /// Attempts sent (or in flight) since the last success whose outcome is not known.
    pub unconfirmed: u32,
    /// No authentication may be sent.
    pub locked: bool,
    /// Why the gateway is locked (no secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// An attempt with these credentials succeeded and nothing was rejected or unknown since
    /// (see [`rules`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proven: bool,
    /// This is a replica's copy of a record kept in a shared store (see [`crate::shared`]): the
    /// shared record existed, so finding it missing later means the store lost it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

/// How many attempts a guard lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardLimits {
    /// Rejected attempts in a row that lock (1..=[`super::MAX_BUDGET`]).
    pub budget: u32,
    /// Attempts in flight at once while the credentials are proven (see [`rules`]); 1 keeps
    /// attempts strictly one at a time always (Number).
    pub proven_concurrency: u32,
}

impl GuardLimits {
    /// Strictly one attempt at a time, with this budget.
    pub fn serial(budget: u32) -> Self {
        Self {
            budget,
            proven_concurrency: 1,
        }
    }
}

/// The guard's rules as pure functions over a record: what may be sent next, and what an
/// outcome does to the record. [`AuthGuard`] applies them under its lock and persists the
/// result; the property test at the end of this file drives them through every interleaving.
///
/// * Credentials are **proven** when an attempt with exactly them succeeded and nothing was
///   rejected or unknown since. While unproven (first start, after a change, a rejection, an
///   unknown outcome or an unlock), attempts go one at a time. Once proven, up to
///   `proven_concurrency` may be in flight; the first rejection or unknown outcome makes them
///   unproven again, so no new attempt starts until every attempt in flight has ended, and the
///   rejections that come back from those are counted as what they are. Worst case, stated
///   plainly: if a password is revoked at the gateway while N attempts are in flight, up to N
///   rejections reach it before the gateway locks.
/// * Rejected plus unknown attempts in a row never exceed [`VENDOR_CEILING`] through attempts
///   started while unproven: the one that would is refused and the gateway locks.
pub mod rules {
    use super::{GuardLimits, GuardRecord, VENDOR_CEILING};
    use crate::guard::AttemptOutcome;

    /// Whether another attempt may be sent now.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Admit {
        /// Send it (reserve it first).
        Send,
        /// Wait for an attempt in flight to end.
        Wait,
        /// Lock the gateway, for this reason.
        Lock(&'static str),
    }

    /// Attempts sent whose outcome will never be known (ended unknown, or in flight when a
    /// process stopped).
    pub fn unknown(record: &GuardRecord, in_flight: u32) -> u32 {
        record.unconfirmed.saturating_sub(in_flight)
    }

    /// May an attempt be sent, given the record and the attempts in flight?
    pub fn admit(record: &GuardRecord, in_flight: u32, limits: GuardLimits) -> Admit {
        if record.locked {
            return Admit::Lock("locked");
        }
        let unknown = unknown(record, in_flight);
        if record.proven && record.rejected == 0 && unknown == 0 {
            return if in_flight < limits.proven_concurrency.max(1) {
                Admit::Send
            } else {
                Admit::Wait
            };
        }
        if in_flight > 0 {
            return Admit::Wait;
        }
        if record.rejected >= limits.budget {
            return Admit::Lock("rejected authentications reached the budget");
        }
        if record.rejected + unknown >= VENDOR_CEILING {
            return Admit::Lock("too many authentications with unknown outcome");
        }
        Admit::Send
    }

    /// The record once an attempt is reserved (before it is sent).
    pub fn reserve(record: &mut GuardRecord) {
        record.unconfirmed += 1;
    }

    /// The record once an attempt ended with `outcome`; `in_flight_after` counts the attempts
    /// still in flight without this one. Returns why the gateway locks now, if it does.
    pub fn settle(
        record: &mut GuardRecord,
        in_flight_after: u32,
        limits: GuardLimits,
        outcome: AttemptOutcome,
    ) -> Option<String> {
        match outcome {
            AttemptOutcome::Success => {
                record.unconfirmed = record.unconfirmed.saturating_sub(1);
                if !record.locked {
                    // The gateway's count of failures in a row starts again: earlier unknown
                    // outcomes no longer matter, only attempts still in flight.
                    record.rejected = 0;
                    record.unconfirmed = in_flight_after;
                    record.proven = true;
                }
                None
            }
            AttemptOutcome::Rejected => {
                record.unconfirmed = record.unconfirmed.saturating_sub(1);
                record.rejected += 1;
                record.proven = false;
                (record.rejected >= limits.budget && !record.locked).then(|| {
                    record.locked = true;
                    let reason = format!(
                        "{} rejected authentication(s) in a row, budget {}",
                        record.rejected, limits.budget
                    );
                    record.reason = Some(reason.clone());
                    reason
                })
            }
            AttemptOutcome::NotSent | AttemptOutcome::Withdrawn => {
                record.unconfirmed = record.unconfirmed.saturating_sub(1);
                None
            }
            AttemptOutcome::Unknown => {
                record.proven = false;
                None
            }
        }
    }

    /// The record as a new process finds it: attempts that were in flight when the last one
    /// stopped are unknown, so the credentials are no longer proven.
    pub fn reopen(record: &mut GuardRecord) {
        if record.unconfirmed > 0 {
            record.proven = false;
        }
    }
}
