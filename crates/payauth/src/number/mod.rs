//! Number (REST and SOAP): authenticate once, add the `SessKey` to every call, renew on
//! 5030/5050 with one authentication however many calls noticed, replay the refused call once.
//!
//! [`NumberAuthLayer`] wraps any HTTP client service; the sidecar uses the very same layer.
//!
//! ```no_run
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use payauth::number::{NumberAuthLayer, NumberConfig, NumberCredentials};
//! use tower::{Layer, ServiceExt};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! let config = NumberConfig::rest("number", "http://127.0.0.1:9001".parse()?);
//! let credentials = NumberCredentials::new("EP9116875", "2148B239CF6846BDA5D141BF4A4CFBE8");
//! let layer = NumberAuthLayer::new(config, credentials)?;
//! let number = layer.layer(client);
//!
//! let request = http::Request::post("http://127.0.0.1:9001/APIcardProcREST/v1.0.0/Transaction_Query")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from_static(b"{\"TxID\": 1}")))?;
//! let response = number.oneshot(request).await?;
//! println!("{}", response.status());
//! # Ok(()) }
//! ```

mod brake;
mod keys;
mod layer;
mod rules;
mod seal;
pub(crate) mod session_key;
mod signer;
pub mod wire;

pub use layer::{NumberAuth, NumberAuthLayer, NumberConfig, NumberGateway, NumberHandle, Protocol};
pub use seal::{KeySeal, SealError};
pub use session_key::KeyInfo;
pub use signer::{SignError, SignatureBuf, SignatureCache, Signer, MAX_SESS_KEY_LEN};
pub use wire::SoapNames;

use crate::guard::Fingerprint;
use crate::secret::Secret;

/// A merchant's Number credentials. The token and HMAC secret never show in Debug output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberCredentials {
    /// The account code (`AcctCode`), not a secret.
    pub account_code: String,
    /// The token from the Client Admin Portal.
    pub token: Secret<String>,
    /// PCI mode: sign every request with this secret and user id.
    pub signing: Option<Signing>,
}

/// PCI mode's per-request signature settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signing {
    /// The 32-character hex HMAC secret.
    pub secret: Secret<String>,
    /// The user or device id in the signature.
    pub user_id: u64,
}

impl NumberCredentials {
    /// Credentials without request signing.
    pub fn new(account_code: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            account_code: account_code.into(),
            token: Secret::new(token.into()),
            signing: None,
        }
    }

    /// Adds PCI-mode signing.
    pub fn with_signing(mut self, secret: impl Into<String>, user_id: u64) -> Self {
        self.signing = Some(Signing {
            secret: Secret::new(secret.into()),
            user_id,
        });
        self
    }

    /// The guard's fingerprint: account code and token (the HMAC secret plays no part in
    /// authentication).
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&[
            b"number",
            self.account_code.as_bytes(),
            self.token.expose().as_bytes(),
        ])
    }
}
