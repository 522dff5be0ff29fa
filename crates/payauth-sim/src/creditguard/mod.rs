//! A fake CreditGuard relay for tests, `payauth simulate` and `payauth demo`.
//!
//! It speaks the relay's wire (see `docs/protocols.md`): `POST {relay_path}` with a form of `user`,
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
//! use payauth_sim::creditguard::{CreditGuardSim, CreditGuardSimConfig};
//!
//! let sim = CreditGuardSim::start("127.0.0.1:0".parse().unwrap(), CreditGuardSimConfig::default()).await?;
//! println!("CreditGuard relay at {}/xpo/Relay", sim.url());
//! sim.expire_sessions(); // every session issued so far now answers 456
//! sim.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod judge;
mod server;
#[cfg(test)]
mod tests;
mod wire;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use judge::CreditGuardSimCore;
use server::handle;

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
    /// [`crate::tls`]. Default: plain HTTP.
    pub tls: Option<crate::tls::SimTls>,
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
    /// The form's field names as sent, in order (a piece without `=` is all name, as to a
    /// servlet).
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
            // A piece without `=` is a name to the servlet, and may be part of a raw password.
            .field("field_count", &self.field_names.len())
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
    server: crate::server::SimServer,
    shared: Arc<CreditGuardSimCore>,
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
        let shared = Arc::new(CreditGuardSimCore::new(config));
        let handler = {
            let shared = Arc::clone(&shared);
            move |req| handle(Arc::clone(&shared), req)
        };
        let on_handshake_failure: Arc<dyn Fn() + Send + Sync> =
            Arc::new(|| tracing::debug!("creditguard simulator: a TLS handshake failed"));
        let server = crate::server::SimServer::start(
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
