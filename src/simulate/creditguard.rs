//! A fake CreditGuard relay for tests, `payauth simulate` and `payauth demo`.
//!
//! It speaks the relay's wire (see `PROTOCOLS.md`): `POST {relay_path}` with a form of `user`,
//! `password` and `int_in`, or `sessionId` and `int_in`; answers are HTTP 200 with an XML body
//! declaring ISO-8859-8 (the user message is Hebrew in ISO-8859-8 bytes, so a proxy that
//! re-encodes answers is caught). It enforces what a session-based client must get right:
//!
//! - `getSessionId` needs the right `user` and `password` (else `405`; six in a row lock it
//!   until [`CreditGuardSim::unlock`]), a known terminal ([`ERR_INVALID_VALUE`] otherwise), a
//!   terminal enabled for sessions (else `455`) and a valid `<scope>`; it answers a UUID-shaped
//!   session id, `sessionExpiration` and `sessionReUse`.
//! - A call must carry `sessionId` and no `user` or `password` (else `405`); the session must be
//!   known, unexpired and, unless reusable, unused (else `456`: the call is not processed); it
//!   must be for the call's terminal and its scope must allow the call's command, `validation`
//!   and `transactionType` (else [`ERR_INVALID_VALUE`], and the session is not consumed).
//!   A form or `int_in` it cannot read gets [`ERR_GENERAL`].
//! - Knobs: [`expire_sessions`](CreditGuardSim::expire_sessions) (every issued session answers
//!   456), [`fail_next_get_session`](CreditGuardSim::fail_next_get_session) (405/455/457/303...),
//!   latency for `getSessionId` and for other calls, a new password. It records every request
//!   it received ([`CreditGuardSim::received`]).
//!
//! The control plane lives under `/_sim/`: `GET /_sim/stats` (JSON), `POST /_sim/expire`,
//! `POST /_sim/fail-next?code=457&n=2`, `POST /_sim/latency?get_session_ms=100&deal_ms=50`,
//! `POST /_sim/password` (the new password as the body) and `POST /_sim/unlock`.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use payauth::simulate::creditguard::{CreditGuardSim, CreditGuardSimConfig};
//!
//! let sim = CreditGuardSim::start("127.0.0.1:0".parse().unwrap(), CreditGuardSimConfig::default()).await?;
//! println!("CreditGuard relay at {}/xpo/Relay", sim.url());
//! sim.expire_sessions(); // every session issued so far now answers 456
//! sim.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use quick_xml::escape::escape;
use quick_xml::events::Event;
use quick_xml::Reader;
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use crate::creditguard::form::{form_decode, FieldKind, RelayForm};
use crate::creditguard::int_in::{self, IntIn};
use crate::creditguard::{ScopeCmd, SessionScope, TransactionType, Validation};

/// Result of a call or `getSessionId` the simulator cannot read (form or XML).
pub const ERR_GENERAL: &str = "303";
/// Wrong user or password; also a call carrying credentials or no session.
pub const ERR_AUTH: &str = "405";
/// The terminal is not enabled for session ids.
pub const ERR_SESSIONS_NOT_SUPPORTED: &str = "455";
/// The session is unknown, expired or already used: the call was not processed.
pub const ERR_SESSION_TIMEOUT: &str = "456";
/// An invalid value: unknown terminal, a bad `<scope>`, or a session used outside its scope or
/// terminal. (The real gateway's code for a scope mismatch is not documented; 462 is "invalid
/// value in request" in public client code.)
pub const ERR_INVALID_VALUE: &str = "462";

/// Rejected `getSessionId`s in a row that lock the user (the vendor's rule).
const LOCK_AFTER_REJECTIONS: u64 = 6;
/// Largest request body read; bigger ones get 413.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// How long `shutdown` waits for in-flight requests before cutting connections.
/// "Permitted transaction" in Hebrew, ISO-8859-8 (as the real relay's `userMessage`).
const HEBREW_PERMITTED: &[u8] = &[0xF2, 0xF1, 0xF7, 0xE4, b' ', 0xFA, 0xF7, 0xE9, 0xF0, 0xE4];

/// Settings of a [`CreditGuardSim`].
#[derive(Clone)]
pub struct CreditGuardSimConfig {
    /// The API user `getSessionId` must carry (default `merchant-user`).
    pub user: String,
    /// The valid password (default `s3cret-Passw0rd`); see [`CreditGuardSim::set_password`].
    pub password: String,
    /// Terminals that exist (default `["0882819014"]`).
    pub terminals: Vec<String>,
    /// Terminals whose `getSessionId` answers 455 (default none).
    pub session_terminals_disabled: Vec<String>,
    /// `sessionExpiration` of new sessions (default 600 s).
    pub session_lifetime: Duration,
    /// Whether sessions may be used more than once (`sessionReUse`, default false).
    pub session_reuse: bool,
    /// Added before answering a `getSessionId` (default 0).
    pub get_session_latency: Duration,
    /// Added before answering any other call (default 0).
    pub deal_latency: Duration,
    /// The relay's path (default `/xpo/Relay`).
    pub relay_path: String,
    /// Serve HTTPS (and with a client CA, require client certificates); see
    /// [`crate::simulate::tls`]. Default: plain HTTP.
    pub tls: Option<crate::simulate::tls::SimTls>,
}

impl Default for CreditGuardSimConfig {
    fn default() -> Self {
        Self {
            user: "merchant-user".to_owned(),
            password: "s3cret-Passw0rd".to_owned(),
            terminals: vec!["0882819014".to_owned()],
            session_terminals_disabled: Vec::new(),
            session_lifetime: Duration::from_secs(600),
            session_reuse: false,
            get_session_latency: Duration::ZERO,
            deal_latency: Duration::ZERO,
            relay_path: "/xpo/Relay".to_owned(),
            tls: None,
        }
    }
}

// Hand-written so a config printed by the CLI or a test never shows the password.
impl fmt::Debug for CreditGuardSimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreditGuardSimConfig")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("terminals", &self.terminals)
            .field(
                "session_terminals_disabled",
                &self.session_terminals_disabled,
            )
            .field("session_lifetime", &self.session_lifetime)
            .field("session_reuse", &self.session_reuse)
            .field("get_session_latency", &self.get_session_latency)
            .field("deal_latency", &self.deal_latency)
            .field("relay_path", &self.relay_path)
            .field("tls", &self.tls)
            .finish()
    }
}

/// What the simulator has seen so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CreditGuardSimStats {
    /// `getSessionId`s received, whatever their outcome.
    pub get_session_calls: u64,
    /// `getSessionId`s answered with a session.
    pub get_session_ok: u64,
    /// `getSessionId`s answered 405 (wrong credentials, forced, or locked).
    pub get_session_rejected: u64,
    /// `getSessionId`s answered 455 (terminal not enabled, or forced).
    pub get_session_unsupported: u64,
    /// `getSessionId`s answered with another error (forced 457/303/..., bad terminal or scope).
    pub get_session_failed: u64,
    /// Rejected `getSessionId`s since the last success or unlock.
    pub consecutive_rejections: u64,
    /// True after six rejections in a row; every `getSessionId` then gets 405 until unlocked.
    pub locked: bool,
    /// Calls received (anything but `getSessionId`), refused ones included.
    pub calls: u64,
    /// Calls answered `000`.
    pub calls_ok: u64,
    /// Calls answered 456 (unknown, expired or used session).
    pub calls_456: u64,
    /// Calls refused because the session's scope or terminal does not fit
    /// ([`ERR_INVALID_VALUE`]).
    pub calls_scope_refused: u64,
    /// Calls that carried `user` or `password` (answered 405).
    pub calls_with_credentials: u64,
    /// Calls without `sessionId` (answered 405).
    pub calls_without_session: u64,
    /// Calls whose form or `int_in` could not be read ([`ERR_GENERAL`]).
    pub calls_malformed: u64,
    /// Sessions issued.
    pub sessions_issued: u64,
    /// Second uses of a single-use session (answered 456, also in `calls_456`).
    pub sessions_reused_refused: u64,
    /// Further uses of a reusable session (answered normally).
    pub sessions_reused: u64,
}

/// What kind of request the simulator received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceivedKind {
    /// `getSessionId`.
    GetSessionId,
    /// Any other command (or an unreadable request).
    Call,
}

/// The `<scope>` a `getSessionId` asked for, as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceivedScope {
    /// `scopeCmd`.
    pub cmd: Option<String>,
    /// `validation`.
    pub validation: Option<String>,
    /// `transactionType`.
    pub transaction_type: Option<String>,
}

/// One request the simulator received.
#[derive(Clone)]
pub struct ReceivedCall {
    /// `getSessionId` or another call.
    pub kind: ReceivedKind,
    /// The request body exactly as received.
    pub body: Bytes,
    /// The form's field names, in order (unnamed segments as an empty string).
    pub field_names: Vec<String>,
    /// `int_in`'s value exactly as received (still encoded, if it was).
    pub int_in: Option<Bytes>,
    /// The `sessionId` sent, decoded.
    pub session_id: Option<String>,
    /// `int_in`'s command.
    pub command: Option<String>,
    /// `int_in`'s terminal.
    pub terminal: Option<String>,
    /// The scope a `getSessionId` asked for (`None` without `<scope>`).
    pub scope: Option<ReceivedScope>,
    /// For a `getSessionId` answered `000`, the session it issued.
    pub issued_session: Option<String>,
    /// The `<result>` answered, e.g. `000` or `456`.
    pub result: String,
}

// Hand-written: bodies hold card data and passwords, and session ids are credentials.
impl fmt::Debug for ReceivedCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivedCall")
            .field("kind", &self.kind)
            .field("body_len", &self.body.len())
            .field("field_names", &self.field_names)
            .field("int_in_len", &self.int_in.as_ref().map(Bytes::len))
            .field(
                "session_id",
                &self.session_id.as_ref().map(|_| "<redacted>"),
            )
            .field("command", &self.command)
            .field("terminal", &self.terminal)
            .field("scope", &self.scope)
            .field("result", &self.result)
            .finish()
    }
}

/// A running CreditGuard simulator. Dropping it (or [`CreditGuardSim::shutdown`]) stops it.
pub struct CreditGuardSim {
    server: super::server::SimServer,
    shared: Arc<Shared>,
}

impl fmt::Debug for CreditGuardSim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreditGuardSim")
            .field("addr", &self.server.addr())
            .finish()
    }
}

impl CreditGuardSim {
    /// Binds `addr` (`127.0.0.1:0` picks a free port) and serves on the current tokio runtime.
    pub async fn start(addr: SocketAddr, config: CreditGuardSimConfig) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::new(config));
        let handler = {
            let shared = Arc::clone(&shared);
            move |req| handle(Arc::clone(&shared), req)
        };
        let on_handshake_failure: Arc<dyn Fn() + Send + Sync> =
            Arc::new(|| tracing::debug!("creditguard simulator: a TLS handshake failed"));
        let server = super::server::SimServer::start(
            addr,
            shared.config.tls.as_ref(),
            handler,
            on_handshake_failure,
            "creditguard simulator",
        )
        .await?;
        Ok(Self { server, shared })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Its base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The relay's URL, e.g. `http://127.0.0.1:40123/xpo/Relay`.
    pub fn relay_url(&self) -> String {
        format!("{}{}", self.server.url(), self.shared.config.relay_path)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CreditGuardSimStats {
        self.shared.lock().stats.clone()
    }

    /// Every session issued so far answers 456 from now on.
    pub fn expire_sessions(&self) {
        self.shared.expire_sessions();
    }

    /// The next `n` `getSessionId`s answer `code` (e.g. `"457"`, `"405"`, `"455"`, `"303"`)
    /// whatever they carry; a forced 405 counts as a rejection.
    pub fn fail_next_get_session(&self, code: &str, n: u64) {
        self.shared.lock().fail_next = Some((code.to_owned(), n));
    }

    /// Replaces the valid password.
    pub fn set_password(&self, password: &str) {
        self.shared.lock().password = password.to_owned();
    }

    /// Replaces the latencies of `getSessionId` and of other calls.
    pub fn set_latency(&self, get_session: Duration, deal: Duration) {
        let mut st = self.shared.lock();
        st.get_session_latency = get_session;
        st.deal_latency = deal;
    }

    /// Lifts the lock after six rejections and clears the count.
    pub fn unlock(&self) {
        self.shared.unlock();
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<ReceivedCall> {
        self.shared.lock().received.clone()
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
    config: CreditGuardSimConfig,
    state: Mutex<State>,
}

struct State {
    password: String,
    get_session_latency: Duration,
    deal_latency: Duration,
    fail_next: Option<(String, u64)>,
    stats: CreditGuardSimStats,
    sessions: HashMap<String, SimSession>,
    next_seq: u64,
    /// Sessions with a sequence number below this are expired.
    expired_below: u64,
    next_tran_id: u64,
    received: Vec<ReceivedCall>,
}

struct SimSession {
    seq: u64,
    terminal: String,
    scope: SessionScope,
    issued: Instant,
    lifetime: Duration,
    reusable: bool,
    uses: u64,
}

/// What a request is, once read.
struct Parsed {
    form: Option<RelayForm>,
    int_in: Option<IntIn>,
    xml: Option<Vec<u8>>,
}

impl Shared {
    fn new(config: CreditGuardSimConfig) -> Self {
        let state = State {
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

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    fn expire_sessions(&self) {
        let mut st = self.lock();
        st.expired_below = st.next_seq;
    }

    fn unlock(&self) {
        let mut st = self.lock();
        st.stats.locked = false;
        st.stats.consecutive_rejections = 0;
    }

    /// Judges a `getSessionId`; returns the answer's result and, on success, the session.
    fn get_session(&self, parsed: &Parsed, record: &mut ReceivedCall) -> Answer {
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
        let form = parsed.form.as_ref();
        let field = |name: &str| {
            form.and_then(|f| f.value(name))
                .map(|v| form_decode(v).into_owned())
        };
        let (user, password) = (field("user"), field("password"));
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
        let scope = match parsed.xml.as_deref().map(read_scope) {
            Some(Ok(scope)) => scope,
            _ => {
                st.stats.get_session_failed += 1;
                return Answer::error(ERR_INVALID_VALUE, "invalid scope");
            }
        };
        record.scope = scope.as_ref().map(|(received, _)| received.clone());
        let scope = scope.map(|(_, s)| s).unwrap_or_default();
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
    fn call(&self, parsed: &Parsed, record: &mut ReceivedCall) -> Answer {
        let mut st = self.lock();
        st.stats.calls += 1;
        let (Some(form), Some(int_in)) = (parsed.form.as_ref(), parsed.int_in.as_ref()) else {
            st.stats.calls_malformed += 1;
            return Answer::error(ERR_GENERAL, "the request could not be read");
        };
        let credentials = form
            .fields()
            .filter(|f| f.kind == FieldKind::Credential)
            .any(|f| {
                f.name
                    .is_some_and(|n| !n.eq_ignore_ascii_case(b"sessionId"))
            });
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
            Some(s)
                if Some(s.terminal.as_str()) != int_in.terminal.as_ref().map(|t| t.as_str()) =>
            {
                Verdict::Scope
            }
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
                let terminal = int_in
                    .terminal
                    .as_ref()
                    .map(|t| t.as_str().to_owned())
                    .unwrap_or_default();
                let command = &int_in.command;
                Answer {
                    result: "000".into(),
                    message: "Permitted transaction".into(),
                    command_body: Some(format!(
                        "<{command}><status>000</status><statusText>Permitted transaction</statusText>\
                         <terminalNumber>{}</terminalNumber><cardMask>458000******0000</cardMask>\
                         <authNumber>0123456</authNumber></{command}>",
                        escape(terminal.as_str())
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

impl State {
    fn reject(&mut self) {
        self.stats.get_session_rejected += 1;
        self.stats.consecutive_rejections += 1;
        if self.stats.consecutive_rejections >= LOCK_AFTER_REJECTIONS {
            self.stats.locked = true;
        }
    }
}

/// An answer's variable parts.
struct Answer {
    result: String,
    message: String,
    /// The command's own element (e.g. `<doDeal>...</doDeal>`).
    command_body: Option<String>,
    tran_id: Option<u64>,
}

impl Answer {
    fn error(code: impl Into<String>, message: &str) -> Self {
        Self {
            result: code.into(),
            message: message.to_owned(),
            command_body: None,
            tran_id: None,
        }
    }

    fn render(&self, command: &str) -> Bytes {
        let command = if is_word(command) { command } else { "unknown" };
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(
            b"<?xml version='1.0' encoding='ISO-8859-8'?><ashrait><response><command>",
        );
        out.extend_from_slice(command.as_bytes());
        out.extend_from_slice(b"</command><dateTime/><requestId/>");
        match self.tran_id {
            Some(id) => out.extend_from_slice(format!("<tranId>{id}</tranId>").as_bytes()),
            None => out.extend_from_slice(b"<tranId/>"),
        }
        out.extend_from_slice(
            format!(
                "<result>{}</result><message>{}</message><userMessage>",
                escape(self.result.as_str()),
                escape(self.message.as_str())
            )
            .as_bytes(),
        );
        if self.result == "000" {
            out.extend_from_slice(HEBREW_PERMITTED);
        }
        out.extend_from_slice(
            b"</userMessage><additionalInfo/><version>2000</version><language>Eng</language>",
        );
        match &self.command_body {
            Some(body) => out.extend_from_slice(body.as_bytes()),
            // Error answers keep the command's element with empty children.
            None if command == "getSessionId" => out.extend_from_slice(
                b"<getSessionId><sessionId/><sessionExpiration/><sessionReUse/></getSessionId>",
            ),
            None => {}
        }
        out.extend_from_slice(b"</response></ashrait>");
        Bytes::from(out)
    }
}

/// Reads `/ashrait/request/getSessionId/scope`: `Ok(None)` without a scope; `Err` for an
/// invalid one (values not in the vendor's lists, or validation/type without scopeCmd).
fn read_scope(xml: &[u8]) -> Result<Option<(ReceivedScope, SessionScope)>, ()> {
    let mut reader = Reader::from_reader(xml);
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut seen = false;
    let mut received = ReceivedScope::default();
    loop {
        match reader.read_event().map_err(|_| ())? {
            Event::Start(e) => path.push(e.local_name().as_ref().to_vec()),
            Event::Empty(e)
                if e.local_name().as_ref() == b"scope"
                    && path.last().is_some_and(|p| p == b"getSessionId") =>
            {
                seen = true;
            }
            Event::End(_) => {
                if path.last().is_some_and(|p| p == b"scope") {
                    seen = true;
                }
                path.pop();
            }
            Event::Text(t) => {
                let n = path.len();
                if n >= 3 && path[n - 2] == b"scope" && path[n - 3] == b"getSessionId" {
                    let text = t.unescape().map_err(|_| ())?.trim().to_owned();
                    let slot = match path[n - 1].as_slice() {
                        b"scopeCmd" => &mut received.cmd,
                        b"validation" => &mut received.validation,
                        b"transactionType" => &mut received.transaction_type,
                        _ => continue,
                    };
                    *slot = Some(text);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !seen {
        return Ok(None);
    }
    let cmd = match received.cmd.as_deref() {
        None => None,
        Some(c) => Some(ScopeCmd::parse(c).ok_or(())?),
    };
    let validation = match received.validation.as_deref() {
        None => None,
        Some(v) => Some(Validation::parse(v).ok_or(())?),
    };
    let transaction_type = match received.transaction_type.as_deref() {
        None => None,
        Some(t) => Some(TransactionType::parse(t).ok_or(())?),
    };
    if cmd.is_none() && (validation.is_some() || transaction_type.is_some()) {
        return Err(());
    }
    Ok(Some((
        received,
        SessionScope {
            cmd,
            validation,
            transaction_type,
        },
    )))
}

/// A UUID-shaped random id, like the vendor's.
fn new_session_id() -> String {
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

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

// ---------------------------------------------------------------------------------------------
// Server

type Resp = Response<Full<Bytes>>;

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Resp, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    if let Some(cmd) = path.strip_prefix("/_sim/") {
        let cmd = cmd.to_owned();
        return Ok(control(&shared, &cmd, req).await);
    }
    if path != shared.config.relay_path {
        return Ok(text(StatusCode::NOT_FOUND, "not found"));
    }
    if req.method() != Method::POST {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        resp.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
        return Ok(resp);
    }
    let body = match read_body(req.into_body()).await {
        Ok(b) => b,
        Err(resp) => return Ok(resp),
    };
    Ok(relay(&shared, body).await)
}

async fn relay(shared: &Shared, body: Bytes) -> Resp {
    let form = RelayForm::parse(body.clone()).ok();
    let xml = form.as_ref().map(|f| f.decoded_int_in().into_owned());
    let int_in = xml.as_deref().and_then(|x| int_in::read(x).ok());
    let parsed = Parsed { form, int_in, xml };
    let mut record = ReceivedCall {
        kind: if parsed.int_in.as_ref().is_some_and(IntIn::is_get_session_id) {
            ReceivedKind::GetSessionId
        } else {
            ReceivedKind::Call
        },
        body,
        field_names: parsed
            .form
            .as_ref()
            .map(|f| {
                f.fields()
                    .map(|field| {
                        field
                            .name
                            .map(|n| String::from_utf8_lossy(n).into_owned())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default(),
        int_in: parsed
            .form
            .as_ref()
            .map(|f| Bytes::copy_from_slice(f.int_in())),
        session_id: parsed
            .form
            .as_ref()
            .and_then(|f| f.value("sessionId"))
            .map(|v| String::from_utf8_lossy(&form_decode(v)).into_owned()),
        command: parsed.int_in.as_ref().map(|i| i.command.clone()),
        terminal: parsed
            .int_in
            .as_ref()
            .and_then(|i| i.terminal.as_ref())
            .map(|t| t.as_str().to_owned()),
        scope: None,
        issued_session: None,
        result: String::new(),
    };
    let latency = {
        let st = shared.lock();
        match record.kind {
            ReceivedKind::GetSessionId => st.get_session_latency,
            ReceivedKind::Call => st.deal_latency,
        }
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let answer = match record.kind {
        ReceivedKind::GetSessionId => shared.get_session(&parsed, &mut record),
        ReceivedKind::Call => shared.call(&parsed, &mut record),
    };
    record.result = answer.result.clone();
    let command = record.command.clone().unwrap_or_default();
    tracing::debug!(kind = ?record.kind, command = %command, result = %answer.result, "creditguard simulator: relay");
    let body = answer.render(&command);
    shared.lock().received.push(record);
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=ISO-8859-8"),
    );
    resp
}

async fn read_body(body: Incoming) -> Result<Bytes, Resp> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err)
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
            ))
        }
        Err(_) => Err(text(StatusCode::BAD_REQUEST, "could not read request body")),
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

// ---------------------------------------------------------------------------------------------
// Control plane

async fn control(shared: &Shared, cmd: &str, req: Request<Incoming>) -> Resp {
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().clone();
    let param = |name: &str| -> Option<String> {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    };
    let millis = |name: &str| {
        param(name)
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis)
    };
    let no_content = || {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        resp
    };
    match (&method, cmd) {
        (&Method::GET, "stats") => {
            let stats = shared.lock().stats.clone();
            match serde_json::to_vec(&stats) {
                Ok(v) => {
                    let mut resp = Response::new(Full::new(Bytes::from(v)));
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    resp
                }
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode stats"),
            }
        }
        (&Method::POST, "expire") => {
            shared.expire_sessions();
            no_content()
        }
        (&Method::POST, "unlock") => {
            shared.unlock();
            no_content()
        }
        (&Method::POST, "fail-next") => {
            let code =
                param("code").filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()));
            let n = param("n").map_or(Some(1), |n| n.parse::<u64>().ok());
            match (code, n) {
                (Some(code), Some(n)) => {
                    shared.lock().fail_next = Some((code, n));
                    no_content()
                }
                _ => text(StatusCode::BAD_REQUEST, "expected ?code=NNN&n=N"),
            }
        }
        (&Method::POST, "latency") => match (millis("get_session_ms"), millis("deal_ms")) {
            (None, None) => text(
                StatusCode::BAD_REQUEST,
                "expected ?get_session_ms=N&deal_ms=N",
            ),
            (get_session, deal) => {
                let mut st = shared.lock();
                if let Some(g) = get_session {
                    st.get_session_latency = g;
                }
                if let Some(d) = deal {
                    st.deal_latency = d;
                }
                no_content()
            }
        },
        (&Method::POST, "password") => {
            let body = match read_body(req.into_body()).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            match std::str::from_utf8(&body).map(str::trim) {
                Ok(p) if !p.is_empty() => {
                    shared.lock().password = p.to_owned();
                    no_content()
                }
                _ => text(
                    StatusCode::BAD_REQUEST,
                    "expected the new password as the body",
                ),
            }
        }
        (_, "stats" | "expire" | "unlock" | "fail-next" | "latency" | "password") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => text(StatusCode::NOT_FOUND, "unknown simulator command"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_look_like_uuids() {
        let id = new_session_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
        assert_ne!(id, new_session_id());
    }

    #[test]
    fn scopes_are_read_and_validated() {
        let xml = |scope: &str| {
            format!("<ashrait><request><command>getSessionId</command><getSessionId><terminalNumber>1</terminalNumber>{scope}</getSessionId></request></ashrait>")
        };
        assert_eq!(read_scope(xml("").as_bytes()), Ok(None));
        let (received, scope) = read_scope(
            xml("<scope><scopeCmd>doDeal</scopeCmd><validation>autoComm</validation></scope>")
                .as_bytes(),
        )
        .expect("valid")
        .expect("present");
        assert_eq!(received.validation.as_deref(), Some("autoComm"));
        assert_eq!(scope.cmd, Some(ScopeCmd::DoDeal));
        assert_eq!(scope.validation, Some(Validation::AutoComm));
        assert!(
            read_scope(xml("<scope><validation>AutoComm</validation></scope>").as_bytes()).is_err()
        );
        assert!(
            read_scope(xml("<scope><scopeCmd>doNothing</scopeCmd></scope>").as_bytes()).is_err()
        );
    }

    #[test]
    fn answers_are_iso_8859_8_with_the_result() {
        let answer = Answer::error(ERR_SESSION_TIMEOUT, "session timeout").render("doDeal");
        assert_eq!(
            crate::creditguard::wire::answer_result(&answer),
            Some(crate::creditguard::wire::ResultCode::SESSION_TIMEOUT)
        );
        let ok = Answer {
            result: "000".into(),
            message: "Permitted transaction".into(),
            command_body: None,
            tran_id: Some(1),
        }
        .render("doDeal");
        assert!(ok
            .windows(HEBREW_PERMITTED.len())
            .any(|w| w == HEBREW_PERMITTED));
        assert!(std::str::from_utf8(&ok).is_err(), "not UTF-8 on purpose");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let config = CreditGuardSimConfig::default();
        assert!(!format!("{config:?}").contains("s3cret"));
        let call = ReceivedCall {
            kind: ReceivedKind::Call,
            body: Bytes::from_static(b"sessionId=abc&int_in=<cardNo>4580000000000000</cardNo>"),
            field_names: vec!["sessionId".into(), "int_in".into()],
            int_in: Some(Bytes::from_static(b"<cardNo>4580000000000000</cardNo>")),
            session_id: Some("abc-session".into()),
            command: Some("doDeal".into()),
            terminal: None,
            scope: None,
            issued_session: None,
            result: "000".into(),
        };
        let shown = format!("{call:?}");
        assert!(
            !shown.contains("4580") && !shown.contains("abc-session"),
            "{shown}"
        );
    }
}
