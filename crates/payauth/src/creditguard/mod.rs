//! CreditGuard: scoped, single-use sessions swapped into relay calls.
//!
//! The app keeps posting its usual relay form (`user`, `password`, `int_in`) to payauth.
//! [`CreditGuardSessionLayer`] removes the credentials (and any `sessionId` the app sent), adds
//! a fresh `sessionId` from its pool, keeps every other byte of the form as the app sent it, and
//! forwards the call: the gateway sees `sessionId=..&int_in=..` and never the app's password.
//!
//! What it does, in order, for each request:
//!
//! 1. Only `POST {relay_path}` is relayed. Any other path or method gets `bad_request` and is
//!    not forwarded: another path could carry the app's credentials to the gateway (the SOAP
//!    relay `/xpo/services/Relay` is out of scope for now).
//! 2. The form is split by the rule in [`form`] (raw and URL-encoded forms alike), and
//!    `int_in` is read ([`int_in`]) for `command`, `terminalNumber` and, for `doDeal`,
//!    `validation` and `transactionType`. No `int_in`, XML that does not parse or is ambiguous,
//!    or no terminal: 400 `bad_request`. A terminal not in `terminals`: 403
//!    `terminal_not_allowed`. Nothing is forwarded in either case. Card data is never decoded
//!    beyond the parser's view of it, and never logged.
//! 3. The app's own `getSessionId` is answered locally ([`wire::PLACEHOLDER_SESSION_ID`],
//!    result `000`, reusable); a later call carrying the placeholder is handled like any other.
//! 4. A session comes from the pool for (terminal, scope) (see [`Scope`] and the sizing rule
//!    in [`pool`]); with the pool warm a call costs one gateway round trip. An empty pool
//!    fetches on demand; nothing is dropped.
//! 5. An answer with result `456` means the session was refused and the call not processed:
//!    every pooled session obtained before the call was sent is retired, and the call is
//!    replayed once with a new session. After a timeout, reset or cut-off answer, the call is
//!    never replayed (`outcome_unknown`).
//!
//! `getSessionId` answers: `405` is a rejected authentication (the [`crate::guard`] budget,
//! persisted; unlocked by a new password or an operator); `455` (terminal not enabled for
//! sessions) fails that terminal's requests with a clear `auth_unavailable` for a minute
//! without asking again; `457` and general errors (303/308/354/444) make the guard back off
//! (1 s doubling to 60 s, jittered) and the request gets `auth_unavailable`.
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use payauth::creditguard::{CreditGuardConfig, CreditGuardCredentials, CreditGuardSessionLayer};
//! use tower::{Layer, ServiceExt};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! let mut config = CreditGuardConfig::new("creditguard", "http://127.0.0.1:9002".parse()?);
//! config.terminals = vec!["0882819014".into()];
//! let credentials = CreditGuardCredentials::new("merchant-user", "s3cret-Passw0rd");
//! let creditguard = CreditGuardSessionLayer::new(config, credentials)?.layer(client);
//!
//! // The app's form, credentials and all: they are removed on the way.
//! let form = "user=app&password=dummy&int_in=<ashrait><request><command>doDeal</command>\
//!             <doDeal><terminalNumber>0882819014</terminalNumber>...</doDeal></request></ashrait>";
//! let request = http::Request::post("http://127.0.0.1:9002/xpo/Relay")
//!     .header("content-type", "application/x-www-form-urlencoded")
//!     .body(Full::new(Bytes::from(form)))?;
//! let response = creditguard.oneshot(request).await?;
//! println!("{}", response.status());
//! # Ok(()) }
//! ```

pub mod form;
pub mod int_in;
mod layer;
pub mod pool;
mod rules;
mod scope;
mod sessions;
pub mod wire;

pub use int_in::{IntIn, TerminalNumber};
pub use layer::{
    CreditGuardConfig, CreditGuardGateway, CreditGuardHandle, CreditGuardSession,
    CreditGuardSessionLayer,
};
pub use pool::{PoolConfig, PoolStats};
pub use scope::{ParseScopeError, Scope, ScopeCmd, SessionScope, TransactionType, Validation};

use crate::guard::Fingerprint;
use crate::secret::Secret;

/// A merchant's CreditGuard API credentials. The password never shows in Debug output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditGuardCredentials {
    /// The API user, not a secret.
    pub user: String,
    /// The API password.
    pub password: Secret<String>,
}

impl CreditGuardCredentials {
    /// Credentials for `getSessionId`.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            password: Secret::new(password.into()),
        }
    }

    /// The guard's fingerprint: user and password.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&[
            b"creditguard",
            self.user.as_bytes(),
            self.password.expose().as_bytes(),
        ])
    }
}

/// Reads a relay form and its `int_in` the way the layer does, and rewrites it with
/// `session_field` (see [`form::session_field`]): the per-request work of the layer, for
/// benches and fuzzing. `Err` is what the layer answers with `bad_request`.
pub fn prepare_relay_form(
    body: bytes::Bytes,
    session_field: &[u8],
) -> Result<(IntIn, bytes::Bytes), PrepareError> {
    let form = form::RelayForm::parse(body)?;
    let int_in = int_in::read(&form.decoded_int_in())?;
    Ok((int_in, form.rewrite(session_field)))
}

/// Why [`prepare_relay_form`] refused a form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    /// The form itself.
    #[error(transparent)]
    Form(#[from] form::FormError),
    /// Its `int_in`.
    #[error(transparent)]
    IntIn(#[from] int_in::IntInError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_hide_the_password_and_fingerprint_both_parts() {
        let c = CreditGuardCredentials::new("merchant-user", "s3cret-Passw0rd");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_ne!(
            c.fingerprint(),
            CreditGuardCredentials::new("merchant-user", "other").fingerprint()
        );
        assert_ne!(
            c.fingerprint(),
            CreditGuardCredentials::new("other", "s3cret-Passw0rd").fingerprint()
        );
        assert_eq!(c.fingerprint(), c.clone().fingerprint());
    }
}
