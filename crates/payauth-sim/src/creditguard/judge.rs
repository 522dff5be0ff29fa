//! The simulated gateway's state, and how it judges each request.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio::time::Instant;

use super::wire::{Answer, Form, IntIn, Scope};
use super::{
    CreditGuardSimConfig, CreditGuardSimStats, ReceivedCall, ERR_AUTH, ERR_GENERAL,
    ERR_INVALID_VALUE, ERR_SESSIONS_NOT_SUPPORTED, ERR_SESSION_TIMEOUT, LOCK_AFTER_REJECTIONS,
};

pub(super) struct CreditGuardSimCore {
    pub(super) config: CreditGuardSimConfig,
    state: Mutex<CreditGuardSimState>,
}

pub(super) struct CreditGuardSimState {
    pub(super) password: String,
    pub(super) get_session_latency: Duration,
    pub(super) deal_latency: Duration,
    pub(super) fail_next: Option<(String, u64)>,
    pub(super) stats: CreditGuardSimStats,
    sessions: HashMap<String, SimSession>,
    next_seq: u64,
    /// Sessions with a sequence number below this are expired.
    expired_below: u64,
    next_tran_id: u64,
    pub(super) received: Vec<ReceivedCall>,
}

struct SimSession {
    seq: u64,
    terminal: String,
    scope: Scope,
    issued: Instant,
    lifetime: Duration,
    reusable: bool,
    uses: u64,
}

/// What a request is, once read.
pub(super) struct Parsed {
    pub(super) form: Form,
    /// `None` when there is no `int_in` or it cannot be read.
    pub(super) int_in: Option<IntIn>,
}

impl CreditGuardSimCore {
    pub(super) fn new(config: CreditGuardSimConfig) -> Self {
        let state = CreditGuardSimState {
            password: config.password.clone(),
            get_session_latency: config.get_session_latency,
            deal_latency: config.deal_latency,
            fail_next: None,
            stats: CreditGuardSimStats::default(),
            sessions: HashMap::new(),
            next_seq: 0,
            expired_below: 0,
            next_tran_id: 119_295_603,
            received: Vec::new(),
        };
        Self {
            config,
            state: Mutex::new(state),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, CreditGuardSimState> {
        crate::server::lock(&self.state)
    }

    pub(super) fn expire_sessions(&self) {
        let mut st = self.lock();
        st.expired_below = st.next_seq;
    }

    pub(super) fn unlock(&self) {
        let mut st = self.lock();
        st.stats.locked = false;
        st.stats.consecutive_rejections = 0;
    }

    /// Judges a `getSessionId` (the record notes what it asked for and what it was issued).
    pub(super) fn get_session(&self, parsed: &Parsed, record: &mut ReceivedCall) -> Answer {
        let mut st = self.lock();
        st.stats.get_session_calls += 1;
        if let Some((code, n)) = st.fail_next.take() {
            if n > 1 {
                st.fail_next = Some((code.clone(), n - 1));
            }
            match code.as_str() {
                ERR_AUTH => st.reject(),
                ERR_SESSIONS_NOT_SUPPORTED => st.stats.get_session_unsupported += 1,
                _ => st.stats.get_session_failed += 1,
            }
            return Answer::error(code, "forced by the simulator");
        }
        let (user, password) = (parsed.form.value("user"), parsed.form.value("password"));
        if st.stats.locked {
            st.reject();
            return Answer::error(ERR_AUTH, "user locked after failed authentication attempts");
        }
        let ok = match (&user, &password) {
            (Some(u), Some(p)) => {
                bool::from(u.ct_eq(self.config.user.as_bytes()) & p.ct_eq(st.password.as_bytes()))
            }
            _ => false,
        };
        if !ok {
            st.reject();
            return Answer::error(ERR_AUTH, "authentication failure");
        }
        let Some(terminal) = record.terminal.clone() else {
            st.stats.get_session_failed += 1;
            return Answer::error(ERR_INVALID_VALUE, "terminalNumber missing");
        };
        // The credentials were right: the rejection count starts over.
        st.stats.consecutive_rejections = 0;
        if !self.config.terminals.contains(&terminal) {
            st.stats.get_session_failed += 1;
            return Answer::error(ERR_INVALID_VALUE, "invalid terminal");
        }
        if self.config.session_terminals_disabled.contains(&terminal) {
            st.stats.get_session_unsupported += 1;
            return Answer::error(
                ERR_SESSIONS_NOT_SUPPORTED,
                "merchant does not support session id",
            );
        }
        let received = parsed.int_in.as_ref().and_then(|i| i.scope.clone());
        let scope = match received.as_ref().map(Scope::check) {
            None => Scope::default(),
            Some(Ok(scope)) => scope,
            Some(Err(())) => {
                st.stats.get_session_failed += 1;
                return Answer::error(ERR_INVALID_VALUE, "invalid scope");
            }
        };
        record.scope = received;
        st.stats.get_session_ok += 1;
        st.stats.sessions_issued += 1;
        let seq = st.next_seq;
        st.next_seq += 1;
        let id = new_session_id();
        st.sessions.insert(
            id.clone(),
            SimSession {
                seq,
                terminal,
                scope,
                issued: Instant::now(),
                lifetime: self.config.session_lifetime,
                reusable: self.config.session_reuse,
                uses: 0,
            },
        );
        record.issued_session = Some(id.clone());
        Answer {
            result: "000".into(),
            message: "Permitted transaction".into(),
            command_body: Some(format!(
                "<getSessionId><sessionId>{id}</sessionId><sessionExpiration>{}</sessionExpiration>\
                 <sessionReUse>{}</sessionReUse></getSessionId>",
                self.config.session_lifetime.as_secs(),
                u8::from(self.config.session_reuse)
            )),
            tran_id: None,
        }
    }

    /// Judges any other call.
    pub(super) fn call(&self, parsed: &Parsed, record: &mut ReceivedCall) -> Answer {
        let mut st = self.lock();
        st.stats.calls += 1;
        let Some(int_in) = parsed.int_in.as_ref() else {
            st.stats.calls_malformed += 1;
            return Answer::error(ERR_GENERAL, "the request could not be read");
        };
        let credentials = parsed
            .form
            .fields
            .iter()
            .any(|f| f.is_like("user") || f.is_like("password"));
        if credentials {
            st.stats.calls_with_credentials += 1;
            return Answer::error(
                ERR_AUTH,
                "user and password must not accompany a session call",
            );
        }
        let Some(id) = record.session_id.clone() else {
            st.stats.calls_without_session += 1;
            return Answer::error(ERR_AUTH, "no session");
        };
        let now = Instant::now();
        let expired_below = st.expired_below;
        let verdict = match st.sessions.get(&id) {
            None => Verdict::Timeout,
            Some(s)
                if s.seq < expired_below
                    || now.saturating_duration_since(s.issued) >= s.lifetime =>
            {
                Verdict::Timeout
            }
            Some(s) if s.uses > 0 && !s.reusable => Verdict::Used,
            Some(s) if Some(s.terminal.as_str()) != int_in.terminal.as_deref() => Verdict::Scope,
            Some(s) if !s.scope.allows(int_in) => Verdict::Scope,
            Some(s) => Verdict::Ok { reuse: s.uses > 0 },
        };
        match verdict {
            Verdict::Timeout => {
                st.stats.calls_456 += 1;
                Answer::error(ERR_SESSION_TIMEOUT, "session timeout")
            }
            Verdict::Used => {
                st.stats.calls_456 += 1;
                st.stats.sessions_reused_refused += 1;
                Answer::error(ERR_SESSION_TIMEOUT, "session timeout")
            }
            Verdict::Scope => {
                st.stats.calls_scope_refused += 1;
                Answer::error(ERR_INVALID_VALUE, "the session does not allow this request")
            }
            Verdict::Ok { reuse } => {
                if let Some(s) = st.sessions.get_mut(&id) {
                    s.uses += 1;
                }
                if reuse {
                    st.stats.sessions_reused += 1;
                }
                st.stats.calls_ok += 1;
                let tran_id = st.next_tran_id;
                st.next_tran_id += 1;
                let terminal = int_in.terminal.clone().unwrap_or_default();
                let command = &int_in.command;
                Answer {
                    result: "000".into(),
                    message: "Permitted transaction".into(),
                    command_body: Some(format!(
                        "<{command}><status>000</status><statusText>Permitted transaction</statusText>\
                         <terminalNumber>{}</terminalNumber><cardMask>458000******0000</cardMask>\
                         <authNumber>0123456</authNumber></{command}>",
                        quick_xml::escape::escape(terminal.as_str())
                    )),
                    tran_id: Some(tran_id),
                }
            }
        }
    }
}

enum Verdict {
    Timeout,
    Used,
    Scope,
    Ok { reuse: bool },
}

impl CreditGuardSimState {
    fn reject(&mut self) {
        self.stats.get_session_rejected += 1;
        self.stats.consecutive_rejections += 1;
        if self.stats.consecutive_rejections >= LOCK_AFTER_REJECTIONS {
            self.stats.locked = true;
        }
    }
}

/// A UUID-shaped random id, like the vendor's.
pub(super) fn new_session_id() -> String {
    let r = fastrand::u128(..);
    let hex = format!("{r:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
