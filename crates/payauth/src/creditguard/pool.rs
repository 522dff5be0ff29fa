//! The session pool: sessions fetched ahead of demand, per (terminal, scope).
//!
//! This module is the pool's bookkeeping, synchronous and clock-driven (every method takes
//! `now`) so it can be tested without a network; the layer drives it (fetch tasks, the filler).
//!
//! # Sizing
//!
//! Each key (terminal and [`SessionScope`]) keeps an estimate of its request rate λ, measured
//! over windows of [`RATE_WINDOW`]: it rises at once to a higher measured rate (already after
//! [`RATE_EARLY_LOOK`] into a window) and decays towards a lower one with a time constant of
//! [`RATE_DECAY`] (bursts are served at once, a lull
//! does not empty the pool). The pool also keeps an average of the measured `getSessionId`
//! latency L. A key's target is
//!
//! ```text
//! target = clamp(ceil(HEADROOM × λ × (L + RATE_WINDOW)), min, max)
//! ```
//!
//! i.e. enough sessions to serve the traffic of one estimation window plus one refill, with
//! half again as headroom, within the configured bounds. A key without requests for
//! [`IDLE_KEY`] gets target 0 (its sessions are used or expire; nothing new is fetched), so a
//! terminal that stopped trading does not keep fetching sessions just to waste them. A key
//! holding a reusable session (`sessionReUse` 1) needs nothing more.
//!
//! # Expiry and waste
//!
//! A session is discarded `expiry_margin` before the gateway's `sessionExpiration` (the margin
//! is capped at half the session's lifetime), so a pooled session is never sent stale. Sessions
//! discarded unused are *wasted* (`payauth_sessions_wasted_total`).
//!
//! # Waiting
//!
//! A request that finds its key empty waits in a FIFO queue; it starts a fetch of its own
//! ("on demand") unless enough fetches are already on their way for everyone waiting. Every
//! fetched session goes to the oldest live waiter first, so a burst beyond the pool is served
//! in order and no request is dropped.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::form::session_field;
use super::int_in::TerminalNumber;
use super::scope::SessionScope;
use crate::error::Error;
use crate::metrics::GatewayMetrics;
use crate::secret::Secret;

/// How often the filler looks at the pool.
pub(crate) const TICK: Duration = Duration::from_millis(250);
/// Request rates are measured over windows this long.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);
/// Within a window, a rate measured over at least this long may raise the estimate at once.
pub const RATE_EARLY_LOOK: Duration = Duration::from_millis(250);
/// A lower rate replaces a higher estimate with this time constant.
pub const RATE_DECAY: Duration = Duration::from_secs(30);
/// Extra sessions beyond the expected need.
pub const HEADROOM: f64 = 1.5;
/// A key without requests for this long is not refilled.
pub const IDLE_KEY: Duration = Duration::from_secs(300);
/// After a 455, no session is requested for the terminal for this long.
pub const TERMINAL_DISABLED_FOR: Duration = Duration::from_secs(60);
/// `getSessionId` latency assumed until one is measured.
const DEFAULT_LATENCY: f64 = 0.25;
/// Weight of a new latency measurement.
const LATENCY_WEIGHT: f64 = 0.3;
/// The gateway's documented session lifetime, when an answer does not say.
pub(crate) const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);

/// Bounds of the session pool (config `pool`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Sessions kept ready per active (terminal, scope), at least (default 2).
    pub min: usize,
    /// Sessions kept ready per (terminal, scope), at most (default 32).
    pub max: usize,
    /// Sessions are discarded this long before the gateway says they expire (default 30 s;
    /// capped at half a session's lifetime).
    pub expiry_margin: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            min: 2,
            max: 32,
            expiry_margin: Duration::from_secs(30),
        }
    }
}

/// A snapshot of the pool's counters, for the admin API, tests and the demo.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Sessions ready now, over all keys (a reusable session counts once).
    pub ready: usize,
    /// `getSessionId` calls in flight.
    pub fetching: usize,
    /// Sessions obtained from the gateway.
    pub fetched: u64,
    /// Sessions handed to calls (each use of a reusable session counts).
    pub used: u64,
    /// Sessions discarded unused (expired in the pool, or dropped when the user changed or the
    /// gateway refused a session early).
    pub wasted: u64,
    /// Fetches started by a request that found its key empty.
    pub on_demand: u64,
}

/// Sessions are pooled per terminal and scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub(crate) terminal: TerminalNumber,
    pub(crate) scope: SessionScope,
}

/// A session id and the form field that carries it.
pub(crate) struct SessionToken {
    #[allow(dead_code)] // Kept so the id has one owner that redacts it; the field carries it.
    id: Secret<String>,
    field: Secret<Bytes>,
}

impl SessionToken {
    pub(crate) fn new(id: Secret<String>) -> Self {
        let field = Secret::new(session_field(id.expose()));
        Self { id, field }
    }

    /// `sessionId=<id>`, URL-encoded.
    pub(crate) fn field(&self) -> &[u8] {
        self.field.expose()
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// A session handed to one call.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pub(crate) token: Arc<SessionToken>,
    pub(crate) reusable: bool,
}

/// A session just obtained from the gateway.
#[derive(Debug)]
pub(crate) struct Fresh {
    pub(crate) token: Arc<SessionToken>,
    pub(crate) reusable: bool,
    /// When its `getSessionId` was sent (the gateway issued it no earlier).
    pub(crate) obtained: Instant,
    pub(crate) lifetime: Duration,
    /// The pool epoch when the fetch started (a change of user bumps it).
    pub(crate) epoch: u64,
}

#[derive(Debug)]
struct Pooled {
    token: Arc<SessionToken>,
    reusable: bool,
    used: bool,
    obtained: Instant,
    /// When it is discarded (the gateway's expiry minus the margin).
    discard_at: Instant,
}

type Waiter = oneshot::Sender<Result<Lease, Error>>;

#[derive(Debug)]
struct KeyPool {
    ready: VecDeque<Pooled>,
    waiters: VecDeque<Waiter>,
    fetching: usize,
    arrivals: u64,
    rate: f64,
    last_request: Instant,
}

impl KeyPool {
    fn new(now: Instant) -> Self {
        Self {
            ready: VecDeque::new(),
            waiters: VecDeque::new(),
            fetching: 0,
            arrivals: 0,
            rate: 0.0,
            last_request: now,
        }
    }

    /// Removes sessions past their discard time; returns how many were unused.
    fn purge(&mut self, now: Instant) -> u64 {
        let mut wasted = 0;
        self.ready.retain(|s| {
            let keep = now < s.discard_at;
            if !keep && !s.used {
                wasted += 1;
            }
            keep
        });
        wasted
    }

    fn live_waiters(&mut self) -> usize {
        self.waiters.retain(|w| !w.is_closed());
        self.waiters.len()
    }
}

/// What [`Pool::acquire`] found.
#[derive(Debug)]
pub(crate) enum Acquire {
    /// A session, ready.
    Ready(Lease),
    /// None ready: wait on `rx`; when `fetch` is true the caller must start a fetch (already
    /// counted as in flight).
    Wait {
        rx: oneshot::Receiver<Result<Lease, Error>>,
        fetch: bool,
    },
    /// The terminal answered 455 recently.
    TerminalDisabled,
}

/// Every key's sessions, waiters and rates.
#[derive(Debug)]
pub(crate) struct Pool {
    config: PoolConfig,
    metrics: GatewayMetrics,
    keys: HashMap<PoolKey, KeyPool>,
    disabled: HashMap<TerminalNumber, Instant>,
    epoch: u64,
    /// Sessions requested before this are suspect (a 456 arrived for a call sent then).
    retired_before: Option<Instant>,
    latency: Option<f64>,
    last_rate_update: Instant,
    stats: PoolStats,
}

impl Pool {
    pub(crate) fn new(config: PoolConfig, metrics: GatewayMetrics, now: Instant) -> Self {
        metrics.set_pool_size(0);
        Self {
            config,
            metrics,
            keys: HashMap::new(),
            disabled: HashMap::new(),
            epoch: 0,
            retired_before: None,
            latency: None,
            last_rate_update: now,
            stats: PoolStats::default(),
        }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Makes `key` known (pre-warming), as if it had just seen a request.
    pub(crate) fn register(&mut self, key: PoolKey, now: Instant) {
        self.keys.entry(key).or_insert_with(|| KeyPool::new(now));
    }

    /// Takes a session for one call, or queues the caller.
    pub(crate) fn acquire(&mut self, key: &PoolKey, now: Instant) -> Acquire {
        if self.is_disabled(&key.terminal, now) {
            return Acquire::TerminalDisabled;
        }
        let kp = self
            .keys
            .entry(key.clone())
            .or_insert_with(|| KeyPool::new(now));
        kp.arrivals += 1;
        kp.last_request = now;
        let wasted = kp.purge(now);
        let taken = match kp.ready.front_mut() {
            Some(front) if front.reusable => {
                front.used = true;
                Some(Lease {
                    token: Arc::clone(&front.token),
                    reusable: true,
                })
            }
            Some(_) => kp.ready.pop_front().map(|s| Lease {
                token: s.token,
                reusable: false,
            }),
            None => None,
        };
        let result = match taken {
            Some(lease) => {
                self.stats.used += 1;
                Acquire::Ready(lease)
            }
            None => {
                self.metrics.session_wait();
                let (tx, rx) = oneshot::channel();
                let waiting = kp.live_waiters() + 1;
                kp.waiters.push_back(tx);
                let fetch = kp.fetching < waiting;
                if fetch {
                    kp.fetching += 1;
                    self.stats.on_demand += 1;
                }
                Acquire::Wait { rx, fetch }
            }
        };
        self.wasted(wasted);
        self.publish();
        result
    }

    /// The filler starts a fetch for `key`.
    pub(crate) fn fetch_started(&mut self, key: &PoolKey, now: Instant) {
        self.keys
            .entry(key.clone())
            .or_insert_with(|| KeyPool::new(now))
            .fetching += 1;
    }

    /// A fetch for `key` brought a session: it goes to the oldest live waiter, or the pool.
    ///
    /// A session fetched for a previous user, or requested before a call the gateway refused
    /// with 456, is discarded. Returns true when that leaves a waiter without a fetch: the
    /// caller then fetches again (already counted as in flight).
    pub(crate) fn delivered(&mut self, key: &PoolKey, fresh: Fresh, now: Instant) -> bool {
        self.stats.fetched += 1;
        let margin = self.config.expiry_margin.min(fresh.lifetime / 2);
        let discard_at = fresh.obtained + fresh.lifetime.saturating_sub(margin);
        let stale = fresh.epoch != self.epoch
            || self
                .retired_before
                .is_some_and(|before| fresh.obtained < before);
        let kp = self
            .keys
            .entry(key.clone())
            .or_insert_with(|| KeyPool::new(now));
        kp.fetching = kp.fetching.saturating_sub(1);
        if stale {
            let again = kp.live_waiters() > kp.fetching;
            if again {
                kp.fetching += 1;
            }
            self.wasted(1);
            self.publish();
            return again;
        }
        let mut pooled = Pooled {
            token: fresh.token,
            reusable: fresh.reusable,
            used: false,
            obtained: fresh.obtained,
            discard_at,
        };
        let mut handed = 0;
        if pooled.reusable {
            // Everyone waiting on this key may share it.
            for waiter in kp.waiters.drain(..) {
                let lease = Lease {
                    token: Arc::clone(&pooled.token),
                    reusable: true,
                };
                if waiter.send(Ok(lease)).is_ok() {
                    handed += 1;
                }
            }
            pooled.used = handed > 0;
            kp.ready.push_back(pooled);
        } else {
            let mut offer = Ok(Lease {
                token: Arc::clone(&pooled.token),
                reusable: false,
            });
            while let Some(waiter) = kp.waiters.pop_front() {
                match waiter.send(offer) {
                    Ok(()) => {
                        handed = 1;
                        break;
                    }
                    // That caller went away: offer it to the next.
                    Err(back) => offer = back,
                }
            }
            if handed == 0 {
                kp.ready.push_back(pooled);
            }
        }
        self.stats.used += handed;
        // A session already past its discard time still served a waiter above (the gateway
        // accepts it until its real expiry); unhanded, it is not kept.
        let wasted = kp.purge(now);
        self.wasted(wasted);
        self.publish();
        false
    }

    /// A fetch for `key` failed. With `key_wide`, everyone waiting on the key gets `error`;
    /// otherwise only a waiter that no other fetch in flight will serve.
    pub(crate) fn failed(&mut self, key: &PoolKey, error: Error, key_wide: bool) {
        let Some(kp) = self.keys.get_mut(key) else {
            return;
        };
        kp.fetching = kp.fetching.saturating_sub(1);
        let live = kp.live_waiters();
        if key_wide {
            for waiter in kp.waiters.drain(..) {
                let _ = waiter.send(Err(error.clone()));
            }
        } else if live > kp.fetching {
            if let Some(waiter) = kp.waiters.pop_front() {
                let _ = waiter.send(Err(error));
            }
        }
        self.publish();
    }

    /// The gateway refused a session (456) in a call sent at `sent_at`: every session requested
    /// before then, pooled or still on its way, is suspect and dropped, so the replay and later
    /// calls use sessions requested after the call. Returns how many pooled ones were dropped.
    pub(crate) fn retire_before(&mut self, sent_at: Instant) -> usize {
        if self.retired_before.is_none_or(|before| before < sent_at) {
            self.retired_before = Some(sent_at);
        }
        let mut dropped = 0;
        let mut wasted = 0;
        for kp in self.keys.values_mut() {
            kp.ready.retain(|s| {
                let keep = s.obtained >= sent_at;
                if !keep {
                    dropped += 1;
                    if !s.used {
                        wasted += 1;
                    }
                }
                keep
            });
        }
        self.wasted(wasted);
        self.publish();
        dropped
    }

    /// The API user changed: pooled sessions belong to the old user and are dropped, and
    /// fetches in flight for the old user will be discarded.
    pub(crate) fn change_user(&mut self) {
        self.epoch += 1;
        let mut wasted = 0;
        for kp in self.keys.values_mut() {
            wasted += kp.ready.iter().filter(|s| !s.used).count() as u64;
            kp.ready.clear();
        }
        self.disabled.clear();
        self.wasted(wasted);
        self.publish();
    }

    /// Forgets 455s (the operator changed something).
    pub(crate) fn clear_disabled(&mut self) {
        self.disabled.clear();
    }

    /// The terminal answered 455.
    pub(crate) fn disable_terminal(&mut self, terminal: &TerminalNumber, now: Instant) {
        self.disabled
            .insert(terminal.clone(), now + TERMINAL_DISABLED_FOR);
    }

    fn is_disabled(&self, terminal: &TerminalNumber, now: Instant) -> bool {
        self.disabled
            .get(terminal)
            .is_some_and(|until| now < *until)
    }

    /// Records a `getSessionId` round trip.
    pub(crate) fn observe_latency(&mut self, elapsed: Duration) {
        let sample = elapsed.as_secs_f64();
        self.latency = Some(match self.latency {
            None => sample,
            Some(avg) => avg + LATENCY_WEIGHT * (sample - avg),
        });
    }

    /// Periodic upkeep: rates, expiry, idle keys.
    pub(crate) fn tick(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last_rate_update);
        if dt >= RATE_WINDOW {
            let secs = dt.as_secs_f64();
            let decay = (-secs / RATE_DECAY.as_secs_f64()).exp();
            for kp in self.keys.values_mut() {
                let measured = kp.arrivals as f64 / secs;
                kp.rate = if measured >= kp.rate {
                    measured
                } else {
                    kp.rate * decay + measured * (1.0 - decay)
                };
                kp.arrivals = 0;
            }
            self.last_rate_update = now;
        } else if dt >= RATE_EARLY_LOOK {
            // A rate already higher within the window counts at once (the window goes on): a
            // pool going from idle to full load must not wait a whole window to grow.
            let secs = dt.as_secs_f64();
            for kp in self.keys.values_mut() {
                kp.rate = kp.rate.max(kp.arrivals as f64 / secs);
            }
        }
        let mut wasted = 0;
        for kp in self.keys.values_mut() {
            wasted += kp.purge(now);
        }
        self.keys.retain(|_, kp| {
            now.saturating_duration_since(kp.last_request) < IDLE_KEY
                || !kp.ready.is_empty()
                || kp.fetching > 0
                || kp.live_waiters() > 0
        });
        self.disabled.retain(|_, until| now < *until);
        self.wasted(wasted);
        self.publish();
    }

    /// The target size of a key with request rate `rate` (per second).
    pub(crate) fn target_for(&self, rate: f64) -> usize {
        let latency = self.latency.unwrap_or(DEFAULT_LATENCY);
        let want = (HEADROOM * rate * (latency + RATE_WINDOW.as_secs_f64())).ceil();
        // `want` is finite and non-negative; the float-to-int cast saturates.
        let want = want as usize;
        let max = self.config.max.max(1);
        want.clamp(self.config.min.min(max), max)
    }

    /// Keys short of their target, most short first, with how many sessions each lacks.
    pub(crate) fn deficits(&mut self, now: Instant) -> Vec<(PoolKey, usize)> {
        let mut out = Vec::new();
        let targets: Vec<(PoolKey, usize)> = self
            .keys
            .iter()
            .filter(|(key, kp)| {
                !self.is_disabled(&key.terminal, now)
                    && now.saturating_duration_since(kp.last_request) < IDLE_KEY
                    && !kp.ready.iter().any(|s| s.reusable)
            })
            .map(|(key, kp)| (key.clone(), self.target_for(kp.rate)))
            .collect();
        for (key, target) in targets {
            let Some(kp) = self.keys.get_mut(&key) else {
                continue;
            };
            let waiting = kp.live_waiters();
            let coming = kp.ready.len() + kp.fetching.saturating_sub(waiting);
            if target > coming {
                out.push((key, target - coming));
            }
        }
        out.sort_by_key(|(_, deficit)| std::cmp::Reverse(*deficit));
        out
    }

    pub(crate) fn stats(&self) -> PoolStats {
        PoolStats {
            ready: self.ready(),
            fetching: self.keys.values().map(|k| k.fetching).sum(),
            ..self.stats
        }
    }

    fn ready(&self) -> usize {
        self.keys.values().map(|k| k.ready.len()).sum()
    }

    fn wasted(&mut self, n: u64) {
        if n > 0 {
            self.stats.wasted += n;
            self.metrics.sessions_wasted(n);
        }
    }

    fn publish(&self) {
        self.metrics.set_pool_size(self.ready());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn key(t: &str) -> PoolKey {
        PoolKey {
            terminal: t.into(),
            scope: SessionScope::UNSCOPED,
        }
    }

    fn pool(min: usize, max: usize) -> Pool {
        Pool::new(
            PoolConfig {
                min,
                max,
                expiry_margin: Duration::from_secs(30),
            },
            GatewayMetrics::unregistered("cg"),
            Instant::now(),
        )
    }

    fn fresh(p: &Pool, id: &str, reusable: bool, now: Instant) -> Fresh {
        Fresh {
            token: Arc::new(SessionToken::new(Secret::from(id))),
            reusable,
            obtained: now,
            lifetime: DEFAULT_LIFETIME,
            epoch: p.epoch(),
        }
    }

    fn error() -> Error {
        Error::new(ErrorCode::AuthUnavailable, "cg", "failed")
    }

    fn id(lease: &Lease) -> String {
        String::from_utf8_lossy(lease.token.field()).into_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn single_use_sessions_are_used_once_in_order() {
        let mut p = pool(2, 32);
        let now = Instant::now();
        let k = key("1");
        p.register(k.clone(), now);
        for n in ["a", "b"] {
            p.fetch_started(&k, now);
            let f = fresh(&p, n, false, now);
            p.delivered(&k, f, now);
        }
        let mut ids = Vec::new();
        for _ in 0..2 {
            match p.acquire(&k, now) {
                Acquire::Ready(l) => ids.push(id(&l)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ids, ["sessionId=a", "sessionId=b"]);
        // Empty now: the caller waits and starts a fetch; a second caller does too.
        let Acquire::Wait {
            rx: rx1,
            fetch: true,
        } = p.acquire(&k, now)
        else {
            panic!("should wait and fetch")
        };
        let Acquire::Wait {
            rx: rx2,
            fetch: true,
        } = p.acquire(&k, now)
        else {
            panic!("should wait and fetch")
        };
        assert_eq!(p.stats().on_demand, 2);
        let f = fresh(&p, "c", false, now);
        p.delivered(&k, f, now);
        let f = fresh(&p, "d", false, now);
        p.delivered(&k, f, now);
        assert_eq!(id(&rx1.await.expect("sent").expect("ok")), "sessionId=c");
        assert_eq!(id(&rx2.await.expect("sent").expect("ok")), "sessionId=d");
        let stats = p.stats();
        assert_eq!(
            (stats.ready, stats.fetched, stats.used, stats.fetching),
            (0, 4, 4, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_waiters_are_skipped() {
        let mut p = pool(0, 4);
        let now = Instant::now();
        let k = key("1");
        let Acquire::Wait { rx, .. } = p.acquire(&k, now) else {
            panic!()
        };
        drop(rx);
        let f = fresh(&p, "a", false, now);
        p.delivered(&k, f, now);
        assert_eq!(p.stats().ready, 1);
        assert_eq!(p.stats().used, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn reusable_sessions_stay_and_serve_everyone() {
        let mut p = pool(2, 32);
        let now = Instant::now();
        let k = key("1");
        let Acquire::Wait { rx: a, .. } = p.acquire(&k, now) else {
            panic!()
        };
        let Acquire::Wait { rx: b, .. } = p.acquire(&k, now) else {
            panic!()
        };
        let f = fresh(&p, "r", true, now);
        p.delivered(&k, f, now);
        assert_eq!(id(&a.await.expect("sent").expect("ok")), "sessionId=r");
        assert_eq!(id(&b.await.expect("sent").expect("ok")), "sessionId=r");
        match p.acquire(&k, now) {
            Acquire::Ready(l) => assert!(l.reusable),
            other => panic!("{other:?}"),
        }
        assert_eq!(p.stats().ready, 1);
        assert!(p.deficits(now).is_empty(), "a reusable session is enough");
        // A 456 retires it.
        assert_eq!(p.retire_before(now + Duration::from_millis(1)), 1);
        assert_eq!(p.stats().wasted, 0, "it was used, so not wasted");
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_expire_with_the_margin_and_count_as_wasted() {
        let mut p = pool(2, 32);
        let now = Instant::now();
        let k = key("1");
        let f = fresh(&p, "a", false, now);
        p.delivered(&k, f, now);
        p.tick(now + Duration::from_secs(569));
        assert_eq!(p.stats().ready, 1);
        p.tick(now + Duration::from_secs(570));
        assert_eq!(p.stats().ready, 0);
        assert_eq!(p.stats().wasted, 1);
        // A short-lived session keeps half its life: margin capped.
        let mut short = fresh(&p, "b", false, now);
        short.lifetime = Duration::from_secs(10);
        p.delivered(&k, short, now);
        p.tick(now + Duration::from_secs(4));
        assert_eq!(p.stats().ready, 1);
        p.tick(now + Duration::from_secs(5));
        assert_eq!(p.stats().ready, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn target_follows_rate_and_latency_within_bounds() {
        let mut p = pool(2, 32);
        assert_eq!(p.target_for(0.0), 2);
        p.observe_latency(Duration::from_millis(100));
        // 20 requests/s × (0.1 s + 1 s) × 1.5 = 33 → max 32.
        assert_eq!(p.target_for(20.0), 32);
        assert_eq!(p.target_for(5.0), 9);
        let now = Instant::now();
        let k = key("1");
        p.register(k.clone(), now);
        let mut waiting = Vec::new();
        for i in 0..10 {
            waiting.push(p.acquire(&k, now + Duration::from_millis(i * 100)));
        }
        p.tick(now + Duration::from_secs(1));
        let deficits = p.deficits(now + Duration::from_secs(1));
        assert_eq!(deficits.len(), 1);
        // Rate 10/s → target 17; ten waiters each have a fetch: nothing of them counts.
        assert_eq!(deficits[0].1, 17);
        // The rate decays slowly.
        p.tick(now + Duration::from_secs(11));
        let deficits = p.deficits(now + Duration::from_secs(11));
        assert!(deficits[0].1 >= 10, "{deficits:?}");
        // Idle keys are not refilled.
        p.tick(now + IDLE_KEY + Duration::from_secs(2));
        assert!(p
            .deficits(now + IDLE_KEY + Duration::from_secs(2))
            .is_empty());
    }

    /// The waste when the load stops. A model of the filler (every tick, each deficit fetched
    /// at once) serves a steady 40 calls/s for a minute, then no call comes. The sessions left
    /// in the pool are not refilled as the rate estimate decays, the key goes idle after
    /// [`IDLE_KEY`], and they are discarded once, at their expiry: at most `max` wasted per
    /// key, nothing fetched after the load, and nothing more ever.
    #[tokio::test(start_paused = true)]
    async fn when_the_load_stops_at_most_one_pool_is_wasted_once() {
        let (min, max) = (2, 32);
        let mut p = pool(min, max);
        p.observe_latency(Duration::from_millis(100));
        let start = Instant::now();
        let k = key("1");
        p.register(k.clone(), start);
        let mut n = 0u64;
        let mut refill = |p: &mut Pool, now: Instant| {
            p.tick(now);
            for (key, deficit) in p.deficits(now) {
                for _ in 0..deficit {
                    p.fetch_started(&key, now);
                    n += 1;
                    let f = fresh(p, &format!("s{n}"), false, now);
                    p.delivered(&key, f, now);
                }
            }
        };
        let step = Duration::from_millis(25);
        let load_end = start + Duration::from_secs(60);
        let mut now = start;
        let mut waited = 0;
        while now < load_end {
            if now.duration_since(start).as_millis().is_multiple_of(250) {
                refill(&mut p, now);
            }
            match p.acquire(&k, now) {
                Acquire::Ready(_) => {}
                Acquire::Wait { .. } => {
                    // Served by the fetch it started (or the one on its way, already counted):
                    // instant in the model. The first second is the ramp.
                    if now >= start + RATE_WINDOW {
                        waited += 1;
                    }
                    let f = fresh(&p, "on-demand", false, now);
                    p.delivered(&k, f, now);
                }
                Acquire::TerminalDisabled => unreachable!("no 455 in the model"),
            }
            now += step;
        }
        assert_eq!(
            waited, 0,
            "calls waited after the first second of a steady load"
        );
        let at_stop = p.stats();
        assert_eq!(at_stop.wasted, 0, "nothing wasted under load");
        assert!(at_stop.ready <= max);
        // Twenty minutes without a call, the filler still ticking.
        let mut per_minute = Vec::new();
        let mut wasted_before = at_stop.wasted;
        let mut fetched_after_a_minute = 0;
        for minute in 0..20u32 {
            for quarter in 0..240u32 {
                let at = load_end + Duration::from_secs(60) * minute + TICK * quarter;
                refill(&mut p, at);
            }
            let wasted = p.stats().wasted;
            per_minute.push(wasted - wasted_before);
            wasted_before = wasted;
            if minute == 0 {
                fetched_after_a_minute = p.stats().fetched;
            }
        }
        assert_eq!(
            p.stats().fetched,
            fetched_after_a_minute,
            "nothing fetched after the first minute without calls"
        );
        let after = p.stats();
        // The first look after the load tops the pool up to its target one last time.
        let topped_up = after.fetched - at_stop.fetched;
        let left = at_stop.ready as u64 + topped_up;
        assert!(
            left <= max as u64,
            "{left} sessions left: more than one pool"
        );
        assert_eq!(after.wasted, left, "what was left is wasted, once");
        assert!(
            per_minute.iter().all(|&w| w <= max as u64),
            "at most one pool a minute: {per_minute:?}"
        );
        assert_eq!(after.ready, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rising_rate_grows_the_target_within_the_window() {
        let mut p = pool(2, 32);
        p.observe_latency(Duration::from_millis(300));
        let now = Instant::now();
        let k = key("1");
        p.register(k.clone(), now);
        p.tick(now + RATE_WINDOW);
        let start = now + RATE_WINDOW;
        // 20 requests/s from idle: after 300 ms, not a whole window, the target has grown.
        let mut waiting = Vec::new();
        for i in 0..6 {
            waiting.push(p.acquire(&k, start + Duration::from_millis(i * 50)));
        }
        let at = start + Duration::from_millis(300);
        p.tick(at);
        let deficits = p.deficits(at);
        // Rate 6 / 0.3 s = 20/s → target 1.5 × 20 × 1.3 = 39 → 32; six waiters have fetches.
        assert_eq!(deficits, vec![(k, 32)], "{deficits:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_reach_only_unserved_waiters_unless_key_wide() {
        let mut p = pool(0, 4);
        let now = Instant::now();
        let k = key("1");
        let Acquire::Wait { rx: a, fetch: true } = p.acquire(&k, now) else {
            panic!()
        };
        // A background fetch is also in flight: its failure leaves `a` to its own fetch.
        p.fetch_started(&k, now);
        p.failed(&k, error(), false);
        let Acquire::Wait { rx: b, fetch: true } = p.acquire(&k, now) else {
            panic!()
        };
        p.failed(&k, error(), true);
        assert!(a.await.expect("sent").is_err());
        assert!(b.await.expect("sent").is_err());
        p.disable_terminal(&k.terminal, now);
        assert!(matches!(p.acquire(&k, now), Acquire::TerminalDisabled));
        assert!(matches!(
            p.acquire(&k, now + TERMINAL_DISABLED_FOR),
            Acquire::Wait { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_456_retires_sessions_requested_before_the_refused_call() {
        let mut p = pool(0, 4);
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(5);
        let k = key("1");
        let f = fresh(&p, "pooled", false, t0);
        p.delivered(&k, f, t0);
        // A call sent at t1 was refused: the pooled session requested at t0 goes.
        assert_eq!(p.retire_before(t1), 1);
        let Acquire::Wait { rx, fetch: true } = p.acquire(&k, t1) else {
            panic!("pool should be empty")
        };
        // A fetch requested at t0 lands after the refusal: discarded, and the waiter needs
        // another fetch.
        let late = fresh(&p, "late", false, t0);
        assert!(p.delivered(&k, late, t1));
        assert_eq!(p.stats().fetching, 1);
        let f = fresh(&p, "new", false, t1);
        assert!(!p.delivered(&k, f, t1));
        assert_eq!(id(&rx.await.expect("sent").expect("ok")), "sessionId=new");
        assert_eq!(p.stats().wasted, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_user_drops_old_sessions_and_late_deliveries() {
        let mut p = pool(0, 4);
        let now = Instant::now();
        let k = key("1");
        let f = fresh(&p, "a", false, now);
        p.delivered(&k, f, now);
        let late = fresh(&p, "b", false, now);
        p.change_user();
        assert_eq!(p.stats().wasted, 1);
        p.delivered(&k, late, now);
        assert_eq!(p.stats().ready, 0);
        assert_eq!(p.stats().wasted, 2);
    }
}
