//! The simulated gateway's state: keys, the IP lock, counters, and how calls are judged.

use super::*;

pub(super) struct NumberSimCore {
    pub(super) config: NumberSimConfig,
    pub(super) state: Mutex<NumberSimState>,
}

pub(super) struct NumberSimState {
    pub(super) token: String,
    pub(super) latency: Duration,
    pub(super) drop_pending: u64,
    pub(super) stats: NumberSimStats,
    pub(super) keys: HashMap<String, KeyRecord>,
    pub(super) next_key_seq: u64,
    /// Keys with a sequence number below this are expired (5030).
    pub(super) expired_below: u64,
    /// Keys with a sequence number below this were issued to the "old IP" (5050).
    pub(super) ip_changed_below: u64,
    pub(super) next_tx_id: u64,
    pub(super) seen: Vec<SeenCall>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct KeyRecord {
    pub(super) seq: u64,
    pub(super) issued: Instant,
    /// The address that authenticated (see `NumberSimConfig::bind_keys_to_caller`).
    pub(super) caller: Option<std::net::IpAddr>,
}

/// What an API call's session key is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyVerdict {
    Valid,
    Expired,
    IpChanged,
    Unknown,
    BadSignature,
}

/// What to do with an API call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CallDecision {
    Drop,
    Answer(CallAnswer),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CallAnswer {
    Ok { tx_id: u64 },
    Expired,
    IpChanged,
    Unknown,
    BadSignature,
}

impl CallAnswer {
    pub(super) fn outcome(self) -> &'static str {
        match self {
            CallAnswer::Ok { .. } => "ok",
            CallAnswer::Expired => "5030",
            CallAnswer::IpChanged => "5050",
            CallAnswer::Unknown | CallAnswer::BadSignature => "unauthenticated",
        }
    }

    /// `(FunctionOk, ErrCode, ErrMsg, RespMsg)`.
    pub(super) fn fields(self) -> (bool, i64, &'static str, &'static str) {
        match self {
            CallAnswer::Ok { .. } => (true, 0, "", "Approved"),
            CallAnswer::Expired => (false, ERR_EXPIRED, "Expired Session Key", ""),
            CallAnswer::IpChanged => (false, ERR_UNAUTHORIZED, "Unauthorized Session Key", ""),
            CallAnswer::Unknown => (false, ERR_UNAUTHENTICATED, "Invalid Session Key", ""),
            CallAnswer::BadSignature => {
                (false, ERR_UNAUTHENTICATED, "Invalid Request Signature", "")
            }
        }
    }
}

/// The outcome of an Authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AuthAnswer {
    Success { key: String, expires: SystemTime },
    Rejected { resp_msg: &'static str },
    Malformed { err_msg: String },
}

pub(super) const REJECTED_CREDENTIALS: &str = "Authentication Failed: invalid AcctCode or Token";
pub(super) const REJECTED_IP_LOCKED: &str =
    "IP locked: too many failed authentication attempts; contact support to unlock";

impl NumberSimCore {
    pub(super) fn new(config: NumberSimConfig) -> Self {
        let state = NumberSimState {
            token: config.token.clone(),
            latency: config.latency,
            drop_pending: 0,
            stats: NumberSimStats::default(),
            keys: HashMap::new(),
            next_key_seq: 0,
            expired_below: 0,
            ip_changed_below: 0,
            next_tx_id: 1_000_001,
            seen: Vec::new(),
        };
        NumberSimCore {
            config,
            state: Mutex::new(state),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, NumberSimState> {
        crate::server::lock(&self.state)
    }

    pub(super) fn latency(&self) -> Duration {
        self.lock().latency
    }

    pub(super) fn expire_keys(&self) {
        let mut st = self.lock();
        st.expired_below = st.next_key_seq;
    }

    pub(super) fn change_ip(&self) {
        let mut st = self.lock();
        st.ip_changed_below = st.next_key_seq;
    }

    pub(super) fn unlock_ip(&self) {
        let mut st = self.lock();
        st.stats.ip_locked = false;
        st.stats.consecutive_rejections = 0;
    }

    /// Judges an Authenticate. `creds` is `Err(reason)` when the request could not be read.
    pub(super) fn authenticate(&self, creds: Result<(&str, &str), String>) -> AuthAnswer {
        let mut st = self.lock();
        st.stats.auth_attempts += 1;
        let (acct, token) = match creds {
            Ok(c) => c,
            Err(err_msg) => return AuthAnswer::Malformed { err_msg },
        };
        if st.stats.ip_locked {
            st.reject();
            return AuthAnswer::Rejected {
                resp_msg: REJECTED_IP_LOCKED,
            };
        }
        let ok = bool::from(
            acct.as_bytes().ct_eq(self.config.account_code.as_bytes())
                & token.as_bytes().ct_eq(st.token.as_bytes()),
        );
        if !ok {
            st.reject();
            return AuthAnswer::Rejected {
                resp_msg: REJECTED_CREDENTIALS,
            };
        }
        st.stats.auth_success += 1;
        st.stats.consecutive_rejections = 0;
        st.stats.keys_issued += 1;
        let seq = st.next_key_seq;
        st.next_key_seq += 1;
        let key = new_session_key(seq, self.config.user_id);
        st.keys.insert(
            key.clone(),
            KeyRecord {
                seq,
                issued: Instant::now(),
                caller: crate::server::caller(),
            },
        );
        AuthAnswer::Success {
            key,
            expires: SystemTime::now() + self.config.key_lifetime,
        }
    }

    /// Counts and judges an API call; `sess_key` is the key as sent (signed form included).
    pub(super) fn judge_call(
        &self,
        protocol: &'static str,
        method: &str,
        body: &Bytes,
        sess_key: Option<&str>,
    ) -> CallDecision {
        let now = Instant::now();
        let now_epoch = unix_now();
        let mut st = self.lock();
        st.stats.calls += 1;
        let decision = if st.drop_pending > 0 {
            st.drop_pending -= 1;
            st.stats.dropped += 1;
            CallDecision::Drop
        } else {
            let verdict = match sess_key.filter(|k| !k.is_empty()) {
                None => KeyVerdict::Unknown,
                Some(sent) => match &self.config.hmac_secret {
                    None => st.judge_key(sent, now, &self.config),
                    Some(secret) => match verify_signature(
                        sent,
                        secret,
                        self.config.user_id,
                        now_epoch,
                        self.config.signature_skew,
                    ) {
                        Some(key) => st.judge_key(key, now, &self.config),
                        None => KeyVerdict::BadSignature,
                    },
                },
            };
            let answer = match verdict {
                KeyVerdict::Valid => {
                    st.stats.calls_ok += 1;
                    let tx_id = st.next_tx_id;
                    st.next_tx_id += 1;
                    CallAnswer::Ok { tx_id }
                }
                KeyVerdict::Expired => {
                    st.stats.calls_5030 += 1;
                    CallAnswer::Expired
                }
                KeyVerdict::IpChanged => {
                    st.stats.calls_5050 += 1;
                    CallAnswer::IpChanged
                }
                KeyVerdict::Unknown => {
                    st.stats.calls_unauthenticated += 1;
                    CallAnswer::Unknown
                }
                KeyVerdict::BadSignature => {
                    st.stats.calls_unauthenticated += 1;
                    st.stats.bad_signatures += 1;
                    CallAnswer::BadSignature
                }
            };
            CallDecision::Answer(answer)
        };
        let outcome = match decision {
            CallDecision::Drop => "dropped",
            CallDecision::Answer(a) => a.outcome(),
        };
        st.seen.push(SeenCall {
            protocol,
            method: method.to_owned(),
            body: body.clone(),
            sess_key_header: sess_key.map(str::to_owned),
            outcome,
        });
        tracing::debug!(protocol, method, outcome, "number simulator: api call");
        decision
    }

    /// Records a SOAP call answered with a fault.
    pub(super) fn record_fault(&self, method: &str, body: &Bytes, sess_key: Option<&str>) {
        let mut st = self.lock();
        st.stats.calls += 1;
        st.seen.push(SeenCall {
            protocol: "soap",
            method: method.to_owned(),
            body: body.clone(),
            sess_key_header: sess_key.map(str::to_owned),
            outcome: "fault",
        });
        tracing::debug!(method, "number simulator: soap fault");
    }
}

impl NumberSimState {
    pub(super) fn reject(&mut self) {
        self.stats.auth_rejected += 1;
        self.stats.consecutive_rejections += 1;
        if self.stats.consecutive_rejections >= LOCK_AFTER_REJECTIONS {
            self.stats.ip_locked = true;
        }
    }

    /// Expiry wins over an IP change when both apply; either way the caller must re-authenticate.
    pub(super) fn judge_key(
        &self,
        key: &str,
        now: Instant,
        config: &NumberSimConfig,
    ) -> KeyVerdict {
        let Some(rec) = self.keys.get(key) else {
            return KeyVerdict::Unknown;
        };
        let elsewhere = config.bind_keys_to_caller && rec.caller != crate::server::caller();
        if rec.seq < self.expired_below
            || now.saturating_duration_since(rec.issued) > config.key_lifetime
        {
            KeyVerdict::Expired
        } else if rec.seq < self.ip_changed_below || elsewhere {
            KeyVerdict::IpChanged
        } else {
            KeyVerdict::Valid
        }
    }
}
