//! A fake Number gateway (REST and SOAP) for tests, `payauth simulate` and `payauth demo`.
//!
//! It speaks the wire format described in `PROTOCOLS.md` and enforces the vendor's rules:
//! session keys expire (5030), keys die when the caller's IP changes (5050), six rejected
//! authentications in a row lock the IP, and in PCI mode every call must carry a valid
//! per-request HMAC signature. Knobs let a test force each of those situations, add latency,
//! or drop connections after a request was read in full ("sent but no answer").
//!
//! One listener serves everything:
//! - REST: `POST {rest_base}/Authenticate` and `POST {rest_base}/{Method}` with a `SessKey` header;
//! - SOAP 1.1: `POST {soap_path}`, the operation taken from the first child of `Body`, the
//!   session key from the operation's first child element (named `soap_session_element`);
//! - a control plane under `/_sim/` (`POST /_sim/expire`, `/_sim/change-ip`, `/_sim/unlock-ip`,
//!   `/_sim/latency?ms=N`, `/_sim/drop?n=N`, `/_sim/token` with the new token as body, and
//!   `GET /_sim/stats`).
//!
//! Error codes of its own (the real gateway's codes for these cases are not documented):
//! [`ERR_MALFORMED`] for an Authenticate it cannot read, [`ERR_UNAUTHENTICATED`] for a call whose
//! session key is missing, unknown or badly signed.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use payauth::simulate::number::{NumberSim, NumberSimConfig};
//!
//! let sim = NumberSim::start("127.0.0.1:0".parse().unwrap(), NumberSimConfig::default()).await?;
//! println!("Number simulator at {}", sim.url());
//! sim.expire_keys(); // every key issued so far now answers 5030
//! sim.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use quick_xml::escape::escape;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::time::Instant;

/// `ErrCode` of an Authenticate the simulator cannot read (bad JSON, bad XML fields, missing
/// `AcctCode`/`Token`). Sent with `FunctionOk` false. Does not count toward the IP lock.
pub const ERR_MALFORMED: i64 = 5001;
/// `ErrCode` of an API call whose session key is missing, unknown, or (PCI mode) badly
/// signed. Sent with `FunctionOk` false; `ErrMsg` says which.
pub const ERR_UNAUTHENTICATED: i64 = 5010;
/// `ErrCode` of an API call made with an expired key.
pub const ERR_EXPIRED: i64 = 5030;
/// `ErrCode` of an API call made with a key issued before the caller's IP changed.
pub const ERR_UNAUTHORIZED: i64 = 5050;

/// Rejected authentications in a row that lock the caller's IP (the vendor's rule).
const LOCK_AFTER_REJECTIONS: u64 = 6;
/// Largest request body read; bigger ones get 413.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// How long `shutdown` waits for in-flight requests before cutting connections.
const SOAP11_ENVELOPE_NS: &[u8] = b"http://schemas.xmlsoap.org/soap/envelope/";

/// Settings of a [`NumberSim`].
#[derive(Clone)]
pub struct NumberSimConfig {
    /// The account code Authenticate must carry (default `EP9116875`).
    pub account_code: String,
    /// The valid token (default `2148B239CF6846BDA5D141BF4A4CFBE8`); see [`NumberSim::set_token`].
    pub token: String,
    /// When set, every API call's session key must be the signed form
    /// `{SessKey}_{Epoch}_{UserID}_{HASH}` (PCI mode).
    pub hmac_secret: Option<String>,
    /// `ThisUser.ID` in the auth answer and the `UserID` a signature must carry (default 2547).
    pub user_id: u64,
    /// A key older than this answers 5030 (default 25 hours).
    pub key_lifetime: Duration,
    /// Added before every answer, Authenticate and API calls alike (default 0).
    pub latency: Duration,
    /// REST service path (default `/APIcardProcREST/v1.0.0`).
    pub rest_base: String,
    /// SOAP service path (default `/APIcardProcR119/CardProcAPI.svc`).
    pub soap_path: String,
    /// SOAP operation namespace; SOAPAction is `{ns}ICardProcess/{Op}` (default `http://tempuri.org/`).
    pub soap_namespace: String,
    /// Name of the session-key element, the first child of every SOAP operation but
    /// Authenticate (default `sessKey`).
    pub soap_session_element: String,
    /// Largest accepted distance between a signature's `Epoch` and now (default 300 s).
    pub signature_skew: Duration,
    /// When set, serve HTTPS (optionally requiring client certificates) instead of plain HTTP;
    /// see [`crate::simulate::tls`]. Default: plain HTTP.
    pub tls: Option<crate::simulate::tls::SimTls>,
}

impl Default for NumberSimConfig {
    fn default() -> Self {
        Self {
            account_code: "EP9116875".to_owned(),
            token: "2148B239CF6846BDA5D141BF4A4CFBE8".to_owned(),
            hmac_secret: None,
            user_id: 2547,
            key_lifetime: Duration::from_secs(25 * 3600),
            latency: Duration::ZERO,
            rest_base: "/APIcardProcREST/v1.0.0".to_owned(),
            soap_path: "/APIcardProcR119/CardProcAPI.svc".to_owned(),
            soap_namespace: "http://tempuri.org/".to_owned(),
            soap_session_element: "sessKey".to_owned(),
            signature_skew: Duration::from_secs(300),
            tls: None,
        }
    }
}

// Hand-written so a config printed by the CLI or a test never shows the token or the secret.
impl fmt::Debug for NumberSimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NumberSimConfig")
            .field("account_code", &self.account_code)
            .field("token", &"<redacted>")
            .field(
                "hmac_secret",
                &self.hmac_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("user_id", &self.user_id)
            .field("key_lifetime", &self.key_lifetime)
            .field("latency", &self.latency)
            .field("rest_base", &self.rest_base)
            .field("soap_path", &self.soap_path)
            .field("soap_namespace", &self.soap_namespace)
            .field("soap_session_element", &self.soap_session_element)
            .field("signature_skew", &self.signature_skew)
            .field("tls", &self.tls)
            .finish()
    }
}

/// What the simulator has seen so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NumberSimStats {
    /// Every Authenticate received (REST or SOAP), malformed ones included.
    pub auth_attempts: u64,
    /// Authenticates answered with a new key.
    pub auth_success: u64,
    /// Authenticates rejected for a wrong account code or token, or because the IP is locked.
    pub auth_rejected: u64,
    /// Rejected authentications since the last success or unlock.
    pub consecutive_rejections: u64,
    /// True after six rejected authentications in a row; every Authenticate is then rejected
    /// until [`NumberSim::unlock_ip`].
    pub ip_locked: bool,
    /// API calls received (not Authenticate), refused and dropped ones included.
    pub calls: u64,
    /// API calls answered `FunctionOk` true.
    pub calls_ok: u64,
    /// API calls answered 5030 (expired key).
    pub calls_5030: u64,
    /// API calls answered 5050 (IP changed).
    pub calls_5050: u64,
    /// API calls answered [`ERR_UNAUTHENTICATED`]: key missing or unknown, or a bad signature.
    pub calls_unauthenticated: u64,
    /// API calls whose signature was wrong, stale, for another user, or absent in PCI mode
    /// (also counted in `calls_unauthenticated`).
    pub bad_signatures: u64,
    /// API calls whose connection was closed on purpose without an answer.
    pub dropped: u64,
    /// Session keys issued.
    pub keys_issued: u64,
    /// TLS handshakes that failed (TLS mode only): no request was read on those connections.
    pub tls_handshake_failures: u64,
}

/// One API call the simulator received.
#[derive(Clone)]
pub struct SeenCall {
    /// `"rest"` or `"soap"`.
    pub protocol: &'static str,
    /// The API method or SOAP operation, e.g. `CreditCardSale_Manual` (empty if unreadable).
    pub method: String,
    /// The request body as received.
    pub body: Bytes,
    /// REST: the `SessKey` header; SOAP: the text of the session-key element. As sent
    /// (signed form included); `None` when absent.
    pub sess_key_header: Option<String>,
    /// `"ok"`, `"5030"`, `"5050"`, `"unauthenticated"`, `"dropped"`, or `"fault"` for a SOAP
    /// request answered with a SOAP fault (unreadable XML, wrong envelope, namespace or SOAPAction).
    pub outcome: &'static str,
}

// Hand-written: bodies hold card data and the header a session key, even in tests.
impl fmt::Debug for SeenCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeenCall")
            .field("protocol", &self.protocol)
            .field("method", &self.method)
            .field("body_len", &self.body.len())
            .field(
                "sess_key_header",
                &self.sess_key_header.as_ref().map(|_| "<redacted>"),
            )
            .field("outcome", &self.outcome)
            .finish()
    }
}

/// A running Number simulator. Dropping it (or [`NumberSim::shutdown`]) stops the server.
pub struct NumberSim {
    server: super::server::SimServer,
    shared: Arc<Shared>,
}

impl fmt::Debug for NumberSim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NumberSim")
            .field("addr", &self.server.addr())
            .finish()
    }
}

impl NumberSim {
    /// Binds `addr` (`127.0.0.1:0` picks a free port) and serves on the current tokio runtime.
    pub async fn start(addr: SocketAddr, config: NumberSimConfig) -> std::io::Result<NumberSim> {
        let shared = Arc::new(Shared::new(config));
        let handler = {
            let shared = Arc::clone(&shared);
            move |req| handle(Arc::clone(&shared), req)
        };
        let on_handshake_failure: Arc<dyn Fn() + Send + Sync> = {
            let shared = Arc::clone(&shared);
            Arc::new(move || shared.lock().stats.tls_handshake_failures += 1)
        };
        let server = super::server::SimServer::start(
            addr,
            shared.config.tls.as_ref(),
            handler,
            on_handshake_failure,
            "number simulator",
        )
        .await?;
        Ok(Self { server, shared })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Its base URL, e.g. `http://127.0.0.1:40123`, or `https://127.0.0.1:40123` with TLS (the
    /// certificate must then name that IP address).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NumberSimStats {
        self.shared.lock().stats.clone()
    }

    /// Every key issued so far answers 5030 from now on.
    pub fn expire_keys(&self) {
        self.shared.expire_keys();
    }

    /// Every key issued so far answers 5050 from now on, as if the caller's IP had changed.
    pub fn change_ip(&self) {
        self.shared.change_ip();
    }

    /// Replaces the valid token.
    pub fn set_token(&self, token: &str) {
        self.shared.lock().token = token.to_owned();
    }

    /// Replaces the latency added before every answer.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// The next `n` API calls are read in full and counted, then their connection is closed
    /// without an answer.
    pub fn drop_next_calls(&self, n: u64) {
        self.shared.lock().drop_pending = n;
    }

    /// Lifts the IP lock and clears the count of consecutive rejections.
    pub fn unlock_ip(&self) {
        self.shared.unlock_ip();
    }

    /// Every API call received so far, in order.
    pub fn calls_seen(&self) -> Vec<SeenCall> {
        self.shared.lock().seen.clone()
    }

    /// Stops accepting, lets in-flight requests finish (for up to a second) and closes every
    /// connection.
    pub async fn shutdown(mut self) {
        self.server.stop().await;
    }
}

// ---------------------------------------------------------------------------------------------
// State

struct Shared {
    config: NumberSimConfig,
    state: Mutex<State>,
}

struct State {
    token: String,
    latency: Duration,
    drop_pending: u64,
    stats: NumberSimStats,
    keys: HashMap<String, KeyRecord>,
    next_key_seq: u64,
    /// Keys with a sequence number below this are expired (5030).
    expired_below: u64,
    /// Keys with a sequence number below this were issued to the "old IP" (5050).
    ip_changed_below: u64,
    next_tx_id: u64,
    seen: Vec<SeenCall>,
}

#[derive(Debug, Clone, Copy)]
struct KeyRecord {
    seq: u64,
    issued: Instant,
}

/// What an API call's session key is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyVerdict {
    Valid,
    Expired,
    IpChanged,
    Unknown,
    BadSignature,
}

/// What to do with an API call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallDecision {
    Drop,
    Answer(CallAnswer),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallAnswer {
    Ok { tx_id: u64 },
    Expired,
    IpChanged,
    Unknown,
    BadSignature,
}

impl CallAnswer {
    fn outcome(self) -> &'static str {
        match self {
            CallAnswer::Ok { .. } => "ok",
            CallAnswer::Expired => "5030",
            CallAnswer::IpChanged => "5050",
            CallAnswer::Unknown | CallAnswer::BadSignature => "unauthenticated",
        }
    }

    /// `(FunctionOk, ErrCode, ErrMsg, RespMsg)`.
    fn fields(self) -> (bool, i64, &'static str, &'static str) {
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
enum AuthAnswer {
    Success { key: String, expires: SystemTime },
    Rejected { resp_msg: &'static str },
    Malformed { err_msg: String },
}

const REJECTED_CREDENTIALS: &str = "Authentication Failed: invalid AcctCode or Token";
const REJECTED_IP_LOCKED: &str =
    "IP locked: too many failed authentication attempts; contact support to unlock";

impl Shared {
    fn new(config: NumberSimConfig) -> Self {
        let state = State {
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
        Shared {
            config,
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    fn latency(&self) -> Duration {
        self.lock().latency
    }

    fn expire_keys(&self) {
        let mut st = self.lock();
        st.expired_below = st.next_key_seq;
    }

    fn change_ip(&self) {
        let mut st = self.lock();
        st.ip_changed_below = st.next_key_seq;
    }

    fn unlock_ip(&self) {
        let mut st = self.lock();
        st.stats.ip_locked = false;
        st.stats.consecutive_rejections = 0;
    }

    /// Judges an Authenticate. `creds` is `Err(reason)` when the request could not be read.
    fn authenticate(&self, creds: Result<(&str, &str), String>) -> AuthAnswer {
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
            },
        );
        AuthAnswer::Success {
            key,
            expires: SystemTime::now() + self.config.key_lifetime,
        }
    }

    /// Counts and judges an API call; `sess_key` is the key as sent (signed form included).
    fn judge_call(
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
                    None => st.judge_key(sent, now, self.config.key_lifetime),
                    Some(secret) => match verify_signature(
                        sent,
                        secret,
                        self.config.user_id,
                        now_epoch,
                        self.config.signature_skew,
                    ) {
                        Some(key) => st.judge_key(key, now, self.config.key_lifetime),
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
    fn record_fault(&self, method: &str, body: &Bytes, sess_key: Option<&str>) {
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

impl State {
    fn reject(&mut self) {
        self.stats.auth_rejected += 1;
        self.stats.consecutive_rejections += 1;
        if self.stats.consecutive_rejections >= LOCK_AFTER_REJECTIONS {
            self.stats.ip_locked = true;
        }
    }

    /// Expiry wins over an IP change when both apply; either way the caller must re-authenticate.
    fn judge_key(&self, key: &str, now: Instant, lifetime: Duration) -> KeyVerdict {
        let Some(rec) = self.keys.get(key) else {
            return KeyVerdict::Unknown;
        };
        if rec.seq < self.expired_below || now.saturating_duration_since(rec.issued) > lifetime {
            KeyVerdict::Expired
        } else if rec.seq < self.ip_changed_below {
            KeyVerdict::IpChanged
        } else {
            KeyVerdict::Valid
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Keys, signatures, dates

/// A 42-character upper-hex key shaped like the vendor's: 18 random hex digits, then the hex of
/// 12 ASCII characters (`{seq:05}A{user:06}`, which is what the vendor's examples decode to).
fn new_session_key(seq: u64, user_id: u64) -> String {
    let random = fastrand::u128(..);
    let tail = format!("{:05}A{:06}", seq % 100_000, user_id % 1_000_000);
    let mut key = format!("{:018X}", random >> 56);
    for b in tail.bytes() {
        key.push_str(&format!("{b:02X}"));
    }
    key
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks a signed session key `{SessKey}_{Epoch}_{UserID}_{HASH}` and returns the bare key.
/// The hash may be upper- or lowercase hex (the vendor's own examples disagree).
fn verify_signature<'a>(
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

fn decode_hex(s: &str) -> Option<Vec<u8>> {
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
fn format_vendor_date(t: SystemTime) -> String {
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
fn civil_from_days(days: i64) -> (i64, u32, u32) {
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

// ---------------------------------------------------------------------------------------------
// Server

/// Returned by the service to make hyper close the connection without answering.
#[derive(Debug)]
struct DropConnection;

impl fmt::Display for DropConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for DropConnection {}

type Resp = Response<Full<Bytes>>;

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, DropConnection> {
    let path = req.uri().path().to_owned();
    let cfg = &shared.config;

    if let Some(cmd) = path.strip_prefix("/_sim/") {
        let cmd = cmd.to_owned();
        return Ok(control(&shared, &cmd, req).await);
    }

    let rest_call = path
        .strip_prefix(cfg.rest_base.as_str())
        .and_then(|p| p.strip_prefix('/'))
        .filter(|m| is_xml_name(m))
        .map(str::to_owned);
    let is_soap = path == cfg.soap_path;
    if rest_call.is_none() && !is_soap {
        return Ok(text(StatusCode::NOT_FOUND, "not found"));
    }
    if req.method() != Method::POST {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        resp.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
        return Ok(resp);
    }

    let (parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(resp) => return Ok(resp),
    };

    match rest_call {
        Some(method) if method == "Authenticate" => {
            Ok(rest_authenticate(&shared, &parts, &body).await)
        }
        Some(method) => rest_call_handler(&shared, &parts, &method, body).await,
        None => soap(&shared, &parts, body).await,
    }
}

async fn read_body(body: Incoming) -> Result<Bytes, Resp> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) => {
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large",
                ))
            } else {
                Err(text(StatusCode::BAD_REQUEST, "could not read request body"))
            }
        }
    }
}

async fn apply_latency(shared: &Shared) {
    let latency = shared.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

fn text(status: StatusCode, msg: &'static str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from_static(msg.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(status: StatusCode, value: &serde_json::Value) -> Resp {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

fn xml(status: StatusCode, body: String) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    resp
}

/// An operation or method name we are willing to echo into element names and JSON keys.
fn is_xml_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn content_type_is(parts: &http::request::Parts, expected: &str) -> bool {
    parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected))
}

// ---------------------------------------------------------------------------------------------
// REST

#[derive(serde::Deserialize)]
struct RestAuthRequest {
    #[serde(rename = "AcctCode")]
    acct_code: String,
    #[serde(rename = "Token")]
    token: String,
}

async fn rest_authenticate(shared: &Shared, parts: &http::request::Parts, body: &Bytes) -> Resp {
    let parsed = if !content_type_is(parts, "application/json") {
        Err("Content-Type must be application/json".to_owned())
    } else {
        serde_json::from_slice::<RestAuthRequest>(body)
            .map_err(|_| "Malformed request: expected JSON with AcctCode and Token".to_owned())
    };
    let answer = shared.authenticate(
        parsed
            .as_ref()
            .map(|r| (r.acct_code.as_str(), r.token.as_str()))
            .map_err(Clone::clone),
    );
    tracing::debug!(
        protocol = "rest",
        outcome = answer.label(),
        "number simulator: authenticate"
    );
    apply_latency(shared).await;
    let cfg = &shared.config;
    let result = match answer {
        AuthAnswer::Success { key, expires } => serde_json::json!({
            "AuthSuccess": true,
            "ErrCode": 0,
            "ErrMsg": "",
            "FunctionOk": true,
            "RespMsg": format!("SessKey Expires|{}", format_vendor_date(expires)),
            "SessKey": key,
            "MerchantList": [{
                "ID": 1,
                "Descrip": "Simulated Merchant",
                "TermID": "001",
                "Location": "Simulator",
                "Address": "127.0.0.1",
            }],
            "ThisUser": {
                "ID": cfg.user_id,
                "AccountCode": cfg.account_code,
                "IsExpired": false,
                "IsLockedOut": false,
            },
        }),
        AuthAnswer::Rejected { resp_msg } => serde_json::json!({
            "AuthSuccess": false,
            "ErrCode": 0,
            "ErrMsg": "",
            "FunctionOk": true,
            "RespMsg": resp_msg,
            "SessKey": "",
            "MerchantList": [],
            "ThisUser": serde_json::Value::Null,
        }),
        AuthAnswer::Malformed { err_msg } => serde_json::json!({
            "AuthSuccess": false,
            "ErrCode": ERR_MALFORMED,
            "ErrMsg": err_msg,
            "FunctionOk": false,
            "RespMsg": "",
            "SessKey": "",
            "MerchantList": [],
            "ThisUser": serde_json::Value::Null,
        }),
    };
    json(
        StatusCode::OK,
        &serde_json::json!({ "AuthenticateResult": result }),
    )
}

impl AuthAnswer {
    fn label(&self) -> &'static str {
        match self {
            AuthAnswer::Success { .. } => "success",
            AuthAnswer::Rejected { .. } => "rejected",
            AuthAnswer::Malformed { .. } => "malformed",
        }
    }
}

async fn rest_call_handler(
    shared: &Shared,
    parts: &http::request::Parts,
    method: &str,
    body: Bytes,
) -> Result<Resp, DropConnection> {
    let sess_key = parts
        .headers
        .get("SessKey")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let decision = shared.judge_call("rest", method, &body, sess_key.as_deref());
    apply_latency(shared).await;
    let answer = match decision {
        CallDecision::Drop => return Err(DropConnection),
        CallDecision::Answer(a) => a,
    };
    let (function_ok, err_code, err_msg, resp_msg) = answer.fields();
    let mut result = serde_json::json!({
        "FunctionOk": function_ok,
        "ErrCode": err_code,
        "ErrMsg": err_msg,
        "RespMsg": resp_msg,
    });
    if let (CallAnswer::Ok { tx_id }, Some(obj)) = (answer, result.as_object_mut()) {
        let echo = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
        obj.insert("TxID".to_owned(), tx_id.into());
        obj.insert("Echo".to_owned(), echo);
    }
    let mut wrapper = serde_json::Map::new();
    wrapper.insert(format!("{method}Result"), result);
    Ok(json(StatusCode::OK, &serde_json::Value::Object(wrapper)))
}

// ---------------------------------------------------------------------------------------------
// SOAP

/// The parts of a SOAP 1.1 request the simulator looks at.
#[derive(Debug, Default, PartialEq, Eq)]
struct SoapRequest {
    /// Local name of the first element child of `Body`.
    operation: String,
    /// Namespace the operation element is in (empty when unbound).
    operation_ns: String,
    /// The operation's element children, in order: (local name, text).
    params: Vec<(String, String)>,
}

impl SoapRequest {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a SOAP 1.1 envelope. Prefixes and whitespace are free; the envelope namespace is not.
fn parse_soap(body: &[u8]) -> Result<SoapRequest, String> {
    let mut reader = NsReader::from_reader(body);
    let config = reader.config_mut();
    config.trim_text(true);
    config.expand_empty_elements = true;

    let mut depth = 0usize;
    let mut in_body = false;
    let mut op: Option<SoapRequest> = None;
    let mut op_done = false;
    let mut saw_envelope = false;
    // The parameter element currently open at depth 4, collecting its text.
    let mut param: Option<(String, String)> = None;

    loop {
        let (ns, event) = reader
            .read_resolved_event()
            .map_err(|e| format!("malformed XML: {e}"))?;
        match event {
            Event::Start(e) => {
                depth += 1;
                let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                let ns_bytes: &[u8] = match &ns {
                    ResolveResult::Bound(n) => n.as_ref(),
                    ResolveResult::Unbound => b"",
                    ResolveResult::Unknown(_) => {
                        return Err(format!("unknown namespace prefix on <{local}>"))
                    }
                };
                match depth {
                    1 => {
                        if local != "Envelope" || ns_bytes != SOAP11_ENVELOPE_NS {
                            return Err(
                                "expected a SOAP 1.1 Envelope (http://schemas.xmlsoap.org/soap/envelope/)"
                                    .to_owned(),
                            );
                        }
                        saw_envelope = true;
                    }
                    2 => in_body = local == "Body" && ns_bytes == SOAP11_ENVELOPE_NS,
                    3 if in_body => {
                        if op.is_some() {
                            return Err("Body holds more than one element".to_owned());
                        }
                        op = Some(SoapRequest {
                            operation: local,
                            operation_ns: String::from_utf8_lossy(ns_bytes).into_owned(),
                            params: Vec::new(),
                        });
                    }
                    4 if in_body && !op_done => param = Some((local, String::new())),
                    _ => {}
                }
            }
            Event::End(_) => {
                if depth == 4 {
                    if let (Some(p), Some(o)) = (param.take(), op.as_mut()) {
                        o.params.push(p);
                    }
                }
                if depth == 3 && in_body {
                    op_done = true;
                }
                if depth == 2 {
                    in_body = false;
                }
                depth = depth.saturating_sub(1);
            }
            Event::Text(t) => {
                if depth == 4 {
                    if let Some((_, value)) = param.as_mut() {
                        let unescaped = t.unescape().map_err(|e| format!("malformed XML: {e}"))?;
                        value.push_str(&unescaped);
                    }
                } else if depth <= 3 && !t.unescape().map(|s| s.trim().is_empty()).unwrap_or(false)
                {
                    return Err("unexpected text in the envelope".to_owned());
                }
            }
            Event::CData(c) if depth == 4 => {
                if let Some((_, value)) = param.as_mut() {
                    value.push_str(&String::from_utf8_lossy(&c));
                }
            }
            Event::DocType(_) => return Err("DOCTYPE is not allowed".to_owned()),
            Event::Eof => break,
            _ => {}
        }
    }
    if depth != 0 {
        return Err("malformed XML: unclosed elements".to_owned());
    }
    if !saw_envelope {
        return Err("expected a SOAP 1.1 Envelope".to_owned());
    }
    op.ok_or_else(|| "Body holds no operation".to_owned())
}

/// The SOAPAction WCF expects for an operation of the `ICardProcess` contract.
fn soap_action(namespace: &str, operation: &str) -> String {
    if namespace.ends_with('/') {
        format!("{namespace}ICardProcess/{operation}")
    } else {
        format!("{namespace}/ICardProcess/{operation}")
    }
}

fn soap_envelope(inner: &str) -> String {
    format!(
        "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body>{inner}</s:Body></s:Envelope>"
    )
}

/// A WCF-style fault, HTTP 500 as SOAP 1.1 requires.
fn soap_fault(code: &str, message: &str) -> Resp {
    let inner = format!(
        "<s:Fault><faultcode xmlns:a=\"http://schemas.microsoft.com/ws/2005/05/addressing/none\">{}</faultcode><faultstring xml:lang=\"en-US\">{}</faultstring></s:Fault>",
        escape(code),
        escape(message)
    );
    xml(StatusCode::INTERNAL_SERVER_ERROR, soap_envelope(&inner))
}

fn xml_field(out: &mut String, name: &str, value: &str) {
    if value.is_empty() {
        out.push_str(&format!("<{name}/>"));
    } else {
        out.push_str(&format!("<{name}>{}</{name}>", escape(value)));
    }
}

async fn soap(
    shared: &Shared,
    parts: &http::request::Parts,
    body: Bytes,
) -> Result<Resp, DropConnection> {
    let cfg = &shared.config;
    if !content_type_is(parts, "text/xml") {
        // What WCF's basicHttpBinding does with anything but SOAP 1.1's content type.
        return Ok(text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Cannot process the message because the content type is not 'text/xml; charset=utf-8'.",
        ));
    }
    let request = match parse_soap(&body) {
        Ok(r) => r,
        Err(msg) => {
            shared.record_fault("", &body, None);
            return Ok(soap_fault("s:Client", &msg));
        }
    };
    let op = request.operation.as_str();
    let first_param = request.params.first();
    let sess_key = first_param
        .filter(|(name, _)| *name == cfg.soap_session_element)
        .map(|(_, v)| v.trim().to_owned());
    let is_auth = op == "Authenticate";

    let expected_action = soap_action(&cfg.soap_namespace, op);
    let action = parts
        .headers
        .get("SOAPAction")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_matches('"'));
    let fault = if action != Some(expected_action.as_str()) {
        Some((
            "a:ActionNotSupported",
            format!("The message with Action '{}' cannot be processed at the receiver. Expected '{expected_action}'.", action.unwrap_or("")),
        ))
    } else if request.operation_ns != cfg.soap_namespace {
        Some((
            "s:Client",
            format!(
                "Operation element <{op}> must be in namespace '{}'",
                cfg.soap_namespace
            ),
        ))
    } else if !is_xml_name(op) {
        Some(("s:Client", "Invalid operation name".to_owned()))
    } else {
        None
    };
    if let Some((code, msg)) = fault {
        if is_auth {
            shared.lock().stats.auth_attempts += 1;
        } else {
            shared.record_fault(op, &body, sess_key.as_deref());
        }
        return Ok(soap_fault(code, &msg));
    }

    let ns = escape(cfg.soap_namespace.as_str()).into_owned();
    if is_auth {
        let creds = match (request.param("acctCode"), request.param("token")) {
            (Some(a), Some(t)) => Ok((a.trim(), t.trim())),
            _ => Err("Malformed request: Authenticate needs acctCode and token".to_owned()),
        };
        let answer = shared.authenticate(creds);
        tracing::debug!(
            protocol = "soap",
            outcome = answer.label(),
            "number simulator: authenticate"
        );
        apply_latency(shared).await;
        let mut out = String::new();
        match answer {
            AuthAnswer::Success { key, expires } => {
                xml_field(&mut out, "AuthSuccess", "true");
                xml_field(&mut out, "ErrCode", "0");
                xml_field(&mut out, "ErrMsg", "");
                xml_field(&mut out, "FunctionOk", "true");
                out.push_str("<MerchantList><Merchant>");
                xml_field(&mut out, "Address", "127.0.0.1");
                xml_field(&mut out, "Descrip", "Simulated Merchant");
                xml_field(&mut out, "ID", "1");
                xml_field(&mut out, "Location", "Simulator");
                xml_field(&mut out, "TermID", "001");
                out.push_str("</Merchant></MerchantList>");
                let resp_msg = format!("SessKey Expires|{}", format_vendor_date(expires));
                xml_field(&mut out, "RespMsg", &resp_msg);
                xml_field(&mut out, "SessKey", &key);
                out.push_str("<ThisUser>");
                xml_field(&mut out, "AccountCode", &cfg.account_code);
                xml_field(&mut out, "ID", &cfg.user_id.to_string());
                xml_field(&mut out, "IsExpired", "false");
                xml_field(&mut out, "IsLockedOut", "false");
                out.push_str("</ThisUser>");
            }
            AuthAnswer::Rejected { resp_msg } => {
                xml_field(&mut out, "AuthSuccess", "false");
                xml_field(&mut out, "ErrCode", "0");
                xml_field(&mut out, "ErrMsg", "");
                xml_field(&mut out, "FunctionOk", "true");
                out.push_str("<MerchantList/>");
                xml_field(&mut out, "RespMsg", resp_msg);
                xml_field(&mut out, "SessKey", "");
            }
            AuthAnswer::Malformed { err_msg } => {
                xml_field(&mut out, "AuthSuccess", "false");
                xml_field(&mut out, "ErrCode", &ERR_MALFORMED.to_string());
                xml_field(&mut out, "ErrMsg", &err_msg);
                xml_field(&mut out, "FunctionOk", "false");
                out.push_str("<MerchantList/>");
                xml_field(&mut out, "RespMsg", "");
                xml_field(&mut out, "SessKey", "");
            }
        }
        let inner = format!(
            "<AuthenticateResponse xmlns=\"{ns}\"><AuthenticateResult>{out}</AuthenticateResult></AuthenticateResponse>"
        );
        return Ok(xml(StatusCode::OK, soap_envelope(&inner)));
    }

    let decision = shared.judge_call("soap", op, &body, sess_key.as_deref());
    apply_latency(shared).await;
    let answer = match decision {
        CallDecision::Drop => return Err(DropConnection),
        CallDecision::Answer(a) => a,
    };
    let (function_ok, err_code, err_msg, resp_msg) = answer.fields();
    let mut out = String::new();
    xml_field(
        &mut out,
        "FunctionOk",
        if function_ok { "true" } else { "false" },
    );
    xml_field(&mut out, "ErrCode", &err_code.to_string());
    xml_field(&mut out, "ErrMsg", err_msg);
    xml_field(&mut out, "RespMsg", resp_msg);
    if let CallAnswer::Ok { tx_id } = answer {
        xml_field(&mut out, "TxID", &tx_id.to_string());
    }
    let inner =
        format!("<{op}Response xmlns=\"{ns}\"><{op}Result>{out}</{op}Result></{op}Response>");
    Ok(xml(StatusCode::OK, soap_envelope(&inner)))
}

// ---------------------------------------------------------------------------------------------
// Control plane

async fn control(shared: &Shared, cmd: &str, req: Request<Incoming>) -> Resp {
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().clone();
    let param = |name: &str| -> Option<u64> {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
    };
    let no_content = || {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        resp
    };
    match (&method, cmd) {
        (&Method::GET, "stats") => {
            let stats = shared.lock().stats.clone();
            match serde_json::to_value(&stats) {
                Ok(v) => json(StatusCode::OK, &v),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode stats"),
            }
        }
        (&Method::POST, "expire") => {
            shared.expire_keys();
            no_content()
        }
        (&Method::POST, "change-ip") => {
            shared.change_ip();
            no_content()
        }
        (&Method::POST, "unlock-ip") => {
            shared.unlock_ip();
            no_content()
        }
        (&Method::POST, "latency") => match param("ms") {
            Some(ms) => {
                shared.lock().latency = Duration::from_millis(ms);
                no_content()
            }
            None => text(StatusCode::BAD_REQUEST, "expected ?ms=N"),
        },
        (&Method::POST, "drop") => match param("n") {
            Some(n) => {
                shared.lock().drop_pending = n;
                no_content()
            }
            None => text(StatusCode::BAD_REQUEST, "expected ?n=N"),
        },
        (&Method::POST, "token") => {
            let body = match read_body(req.into_body()).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            match std::str::from_utf8(&body).map(str::trim) {
                Ok(token) if !token.is_empty() => {
                    shared.lock().token = token.to_owned();
                    no_content()
                }
                _ => text(
                    StatusCode::BAD_REQUEST,
                    "expected the new token as the body",
                ),
            }
        }
        (_, "stats" | "expire" | "change-ip" | "unlock-ip" | "latency" | "drop" | "token") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => text(StatusCode::NOT_FOUND, "unknown simulator command"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const VECTOR_KEY: &str = "9B9175EF556E4DDA93303132323141303035383339";
    const VECTOR_SECRET: &str = "7D55DBB3D691C9E0FDF341E4AB38C3C9";
    const VECTOR_HEADER: &str = "9B9175EF556E4DDA93303132323141303035383339_1702565789_123_1BD0C45A1DCBC7F9D0730FDD6222A45E10FCC7D9E84557499B812B138D0B7149";
    const SKEW: Duration = Duration::from_secs(300);

    #[test]
    fn signature_vector_from_the_vendor_is_accepted() {
        let key = verify_signature(VECTOR_HEADER, VECTOR_SECRET, 123, 1_702_565_789, SKEW);
        assert_eq!(key, Some(VECTOR_KEY));
        // Lowercase hex too, and anywhere inside the skew window.
        let lower = VECTOR_HEADER
            .to_ascii_lowercase()
            .replace(&VECTOR_KEY.to_ascii_lowercase(), VECTOR_KEY);
        assert_eq!(
            verify_signature(&lower, VECTOR_SECRET, 123, 1_702_565_789 + 300, SKEW),
            Some(VECTOR_KEY)
        );
    }

    #[test]
    fn signature_rejections() {
        let now = 1_702_565_789;
        // Stale and future epochs.
        assert_eq!(
            verify_signature(VECTOR_HEADER, VECTOR_SECRET, 123, now + 301, SKEW),
            None
        );
        assert_eq!(
            verify_signature(VECTOR_HEADER, VECTOR_SECRET, 123, now - 301, SKEW),
            None
        );
        // Another user.
        assert_eq!(
            verify_signature(VECTOR_HEADER, VECTOR_SECRET, 124, now, SKEW),
            None
        );
        // Another secret.
        assert_eq!(
            verify_signature(
                VECTOR_HEADER,
                "7D55DBB3D691C9E0FDF341E4AB38C3C8",
                123,
                now,
                SKEW
            ),
            None
        );
        // The hex-decoded secret as key is the classic mistake: must not verify.
        let mut mac = Hmac::<Sha256>::new_from_slice(&decode_hex_any(VECTOR_SECRET)).unwrap();
        mac.update(format!("{VECTOR_KEY}_{now}_123").as_bytes());
        let wrong = format!(
            "{VECTOR_KEY}_{now}_123_{}",
            hex_upper(&mac.finalize().into_bytes())
        );
        assert_eq!(
            verify_signature(&wrong, VECTOR_SECRET, 123, now, SKEW),
            None
        );
        // Tampered key, truncated hash, bare key, garbage.
        let tampered = VECTOR_HEADER.replacen("9B91", "9B92", 1);
        assert_eq!(
            verify_signature(&tampered, VECTOR_SECRET, 123, now, SKEW),
            None
        );
        let truncated = &VECTOR_HEADER[..VECTOR_HEADER.len() - 2];
        assert_eq!(
            verify_signature(truncated, VECTOR_SECRET, 123, now, SKEW),
            None
        );
        assert_eq!(
            verify_signature(VECTOR_KEY, VECTOR_SECRET, 123, now, SKEW),
            None
        );
        assert_eq!(verify_signature("___", VECTOR_SECRET, 123, now, SKEW), None);
        let signed_epoch = format!(
            "{VECTOR_KEY}_+1702565789_123_{}",
            &VECTOR_HEADER[VECTOR_HEADER.len() - 64..]
        );
        assert_eq!(
            verify_signature(&signed_epoch, VECTOR_SECRET, 123, now, SKEW),
            None
        );
    }

    fn decode_hex_any(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn hex_upper(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02X}")).collect()
    }

    #[test]
    fn session_keys_look_like_the_vendors() {
        let key = new_session_key(20, 2547);
        assert_eq!(key.len(), 42);
        assert!(key
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)));
        // The tail is the hex of "00020A002547", as in the vendor's example keys.
        assert!(key.ends_with("303030323041303032353437"), "{key}");
        assert_ne!(new_session_key(20, 2547), key);
    }

    #[test]
    fn vendor_date_format() {
        let t = UNIX_EPOCH + Duration::from_secs(1_555_572_587);
        assert_eq!(format_vendor_date(t), "4/18/2019 7:29:47 AM");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 13 * 3600 + 5); // 2000-02-29 13:00:05
        assert_eq!(format_vendor_date(t), "2/29/2000 1:00:05 PM");
        assert_eq!(format_vendor_date(UNIX_EPOCH), "1/1/1970 12:00:00 AM");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599); // 2024-12-31 23:59:59
        assert_eq!(format_vendor_date(t), "12/31/2024 11:59:59 PM");
    }

    fn state_with_keys(n: u64) -> (Shared, Vec<String>) {
        let shared = Shared::new(NumberSimConfig {
            key_lifetime: Duration::from_secs(60),
            ..NumberSimConfig::default()
        });
        let mut keys = Vec::new();
        for _ in 0..n {
            match shared.authenticate(Ok(("EP9116875", "2148B239CF6846BDA5D141BF4A4CFBE8"))) {
                AuthAnswer::Success { key, .. } => keys.push(key),
                other => panic!("{other:?}"),
            }
        }
        (shared, keys)
    }

    #[tokio::test(start_paused = true)]
    async fn key_lifetime_expiry_and_ip_change() {
        let (shared, keys) = state_with_keys(1);
        let lifetime = shared.config.key_lifetime;
        let verdict = |k: &str| shared.lock().judge_key(k, Instant::now(), lifetime);
        assert_eq!(verdict(&keys[0]), KeyVerdict::Valid);
        assert_eq!(verdict("0000"), KeyVerdict::Unknown);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            verdict(&keys[0]),
            KeyVerdict::Valid,
            "exactly the lifetime is still valid"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(verdict(&keys[0]), KeyVerdict::Expired);

        let (shared, keys) = state_with_keys(2);
        shared.change_ip();
        let later = shared.authenticate(Ok(("EP9116875", "2148B239CF6846BDA5D141BF4A4CFBE8")));
        let AuthAnswer::Success { key: fresh, .. } = later else {
            panic!("{later:?}")
        };
        let verdict = |k: &str| shared.lock().judge_key(k, Instant::now(), lifetime);
        assert_eq!(verdict(&keys[0]), KeyVerdict::IpChanged);
        assert_eq!(verdict(&keys[1]), KeyVerdict::IpChanged);
        assert_eq!(verdict(&fresh), KeyVerdict::Valid);
        shared.expire_keys();
        assert_eq!(
            verdict(&keys[0]),
            KeyVerdict::Expired,
            "expiry wins over an IP change"
        );
        assert_eq!(verdict(&fresh), KeyVerdict::Expired);
    }

    #[test]
    fn six_rejections_lock_the_ip() {
        let (shared, _) = state_with_keys(0);
        for i in 1..=5 {
            assert_eq!(
                shared.authenticate(Ok(("EP9116875", "wrong"))),
                AuthAnswer::Rejected {
                    resp_msg: REJECTED_CREDENTIALS
                }
            );
            assert_eq!(shared.lock().stats.consecutive_rejections, i);
            assert!(!shared.lock().stats.ip_locked);
        }
        // Malformed requests neither count nor reset.
        assert!(matches!(
            shared.authenticate(Err("x".into())),
            AuthAnswer::Malformed { .. }
        ));
        assert_eq!(shared.lock().stats.consecutive_rejections, 5);
        shared.authenticate(Ok(("EP0000000", "2148B239CF6846BDA5D141BF4A4CFBE8")));
        assert!(shared.lock().stats.ip_locked);
        assert_eq!(
            shared.authenticate(Ok(("EP9116875", "2148B239CF6846BDA5D141BF4A4CFBE8"))),
            AuthAnswer::Rejected {
                resp_msg: REJECTED_IP_LOCKED
            }
        );
        let stats = shared.lock().stats.clone();
        assert_eq!(
            (stats.auth_attempts, stats.auth_rejected, stats.auth_success),
            (8, 7, 0)
        );
        assert_eq!(stats.consecutive_rejections, 7);
        shared.unlock_ip();
        assert!(matches!(
            shared.authenticate(Ok(("EP9116875", "2148B239CF6846BDA5D141BF4A4CFBE8"))),
            AuthAnswer::Success { .. }
        ));
        let stats = shared.lock().stats.clone();
        assert!(!stats.ip_locked);
        assert_eq!((stats.consecutive_rejections, stats.keys_issued), (0, 1));
    }

    #[test]
    fn soap_parsing_is_lenient_on_prefixes_and_whitespace() {
        let body = br#"<?xml version="1.0" encoding="utf-8"?>
            <soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:tem="http://tempuri.org/">
              <soapenv:Header/>
              <soapenv:Body>
                <tem:CreditCardSale_Manual>
                  <tem:sessKey> ABC </tem:sessKey>
                  <tem:amount>1.00</tem:amount>
                  <tem:card><tem:nested>x</tem:nested></tem:card>
                  <tem:note>a &amp; b</tem:note>
                  <tem:empty/>
                </tem:CreditCardSale_Manual>
              </soapenv:Body>
            </soapenv:Envelope>"#;
        let req = parse_soap(body).unwrap();
        assert_eq!(req.operation, "CreditCardSale_Manual");
        assert_eq!(req.operation_ns, "http://tempuri.org/");
        let names: Vec<&str> = req.params.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["sessKey", "amount", "card", "note", "empty"]);
        assert_eq!(req.param("sessKey"), Some("ABC"));
        assert_eq!(req.param("note"), Some("a & b"));
        assert_eq!(req.param("empty"), Some(""));

        let default_ns = br#"<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body><Authenticate xmlns="http://tempuri.org/"><acctCode>A</acctCode><token>T</token></Authenticate></Body></Envelope>"#;
        let req = parse_soap(default_ns).unwrap();
        assert_eq!(req.operation, "Authenticate");
        assert_eq!(req.param("acctCode"), Some("A"));
        assert_eq!(req.param("token"), Some("T"));
    }

    #[test]
    fn soap_parsing_rejects_what_wcf_would() {
        let soap12 = br#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><Authenticate xmlns="http://tempuri.org/"/></s:Body></s:Envelope>"#;
        assert!(parse_soap(soap12).is_err());
        assert!(parse_soap(b"<not xml").is_err());
        assert!(parse_soap(b"").is_err());
        let mismatched = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><A></B></s:Body></s:Envelope>"#;
        assert!(parse_soap(mismatched).is_err());
        let empty_body = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body/></s:Envelope>"#;
        assert!(parse_soap(empty_body).is_err());
        let unknown_prefix = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><x:Op/></s:Body></s:Envelope>"#;
        assert!(parse_soap(unknown_prefix).is_err());
    }

    #[test]
    fn soap_action_shape() {
        assert_eq!(
            soap_action("http://tempuri.org/", "Authenticate"),
            "http://tempuri.org/ICardProcess/Authenticate"
        );
        assert_eq!(soap_action("urn:x", "Op"), "urn:x/ICardProcess/Op");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let cfg = NumberSimConfig {
            hmac_secret: Some(VECTOR_SECRET.to_owned()),
            ..NumberSimConfig::default()
        };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains(&cfg.token));
        assert!(!shown.contains(VECTOR_SECRET));
        let call = SeenCall {
            protocol: "rest",
            method: "CreditCardSale_Manual".into(),
            body: Bytes::from_static(b"{\"CardNum\":\"4111111111111111\"}"),
            sess_key_header: Some(VECTOR_KEY.into()),
            outcome: "ok",
        };
        let shown = format!("{call:?}");
        assert!(!shown.contains("4111111111111111"));
        assert!(!shown.contains(VECTOR_KEY));
    }
}
