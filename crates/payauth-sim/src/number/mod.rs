//! A fake Number gateway (REST and SOAP) for tests, `payauth simulate` and `payauth demo`.
//!
//! It speaks the wire format described in `docs/protocols.md` and enforces the vendor's rules:
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
//! use payauth_sim::number::{NumberSim, NumberSimConfig};
//!
//! let sim = NumberSim::start("127.0.0.1:0".parse().unwrap(), NumberSimConfig::default()).await?;
//! println!("Number simulator at {}", sim.url());
//! sim.expire_keys(); // every key issued so far now answers 5030
//! sim.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod keys;
mod rest;
mod server;
mod soap;
mod state;
#[cfg(test)]
mod tests;

use crate::server::{read_body, text, Resp};
use keys::*;
use rest::*;
use server::*;
use soap::*;
use state::*;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
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
    /// The simulator's clock, as the `Date` header of its answers shows it, runs this many
    /// seconds ahead of the host's (behind when negative; default 0). Signatures are still
    /// checked against the host's clock.
    pub clock_offset_secs: i64,
    /// Keys are bound to the IP address that authenticated, as Number binds them: a call from
    /// any other address answers 5050 (default false: every caller is one IP).
    pub bind_keys_to_caller: bool,
    /// When set, serve HTTPS (optionally requiring client certificates) instead of plain HTTP;
    /// see [`crate::simulate::tls`]. Default: plain HTTP.
    pub tls: Option<crate::tls::SimTls>,
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
            clock_offset_secs: 0,
            bind_keys_to_caller: false,
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
            .field("clock_offset_secs", &self.clock_offset_secs)
            .field("bind_keys_to_caller", &self.bind_keys_to_caller)
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
    shared: Arc<NumberSimCore>,
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
        let shared = Arc::new(NumberSimCore::new(config));
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
