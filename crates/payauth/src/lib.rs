//! payauth keeps payment-gateway credentials out of applications.
//!
//! An application sends its gateway calls, unauthenticated, through payauth; payauth adds the
//! gateway's session credential, notices when the gateway says it expired, renews it once (one
//! authentication however many calls noticed) and replays the refused call once. It never retries
//! a rejected authentication (the gateways lock the caller out) and never replays a call that may
//! have been executed.
//!
//! It ships as a sidecar binary (`payauth run`) and as tower layers, which the sidecar itself uses:
//!
//! * [`number::NumberAuthLayer`]: Number (REST and SOAP), session keys and PCI-mode signatures.
//! * [`creditguard::CreditGuardSessionLayer`]: CreditGuard's relay, scoped single-use sessions
//!   from a pool.
//!
//! Both are one mechanism, [`gateway`]: send the call with the credential, and if the gateway
//! refused the credential get a new one once and replay the call once. [`proxy::FrontLayer`] is
//! the stack the sidecar puts in front of a gateway (request ids, access log, the contract's
//! error responses, load shedding), for embedders who serve a gateway themselves.
//! [`shared`] keeps a gateway's credential state in Redis, so that replicas behind one egress
//! IP share one session key and one lockout budget.
//!
//! # Features
//!
//! `sidecar` (on by default) adds what the `payauth` command runs: [`config`], [`sidecar`],
//! the admin API, [`shared`], the worker threads and [`proxy::FrontLayer`]. With
//! `default-features = false` the crate is the layers, [`UpstreamClient`] and the metrics
//! handles, without axum, redis or the config parser.
//!
//! # Embedding in axum
//!
//! Wrap the HTTP client your service already uses; handlers call it like any client.
//!
//! ```no_run
//! use axum::{extract::State, routing::post, Router};
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use payauth::number::{NumberAuthLayer, NumberConfig, NumberCredentials};
//! use tower::{util::BoxCloneSyncService, ServiceBuilder, ServiceExt};
//!
//! type Number = BoxCloneSyncService<
//!     http::Request<Full<Bytes>>,
//!     http::Response<payauth::body::ResponseBody<payauth::UpstreamBody>>,
//!     payauth::Error,
//! >;
//!
//! async fn refund(State(number): State<Number>) -> Result<String, axum::http::StatusCode> {
//!     let call = http::Request::post("https://easypay5.com/APIcardProcREST/v1.0.0/CreditCardRefund")
//!         .header("content-type", "application/json")
//!         .body(Full::new(Bytes::from_static(b"{\"TxID\": 42}")))
//!         .map_err(|_| axum::http::StatusCode::BAD_REQUEST)?;
//!     let answer = number.oneshot(call).await.map_err(|e| e.code().status())?;
//!     Ok(answer.status().to_string())
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // payauth's pooled client: HTTP/1.1 over rustls, trusting the webpki roots.
//! let client = payauth::UpstreamClient::webpki()?;
//! let token = std::fs::read_to_string("/run/secrets/number/token")?;
//! let layer = NumberAuthLayer::new(
//!     NumberConfig::rest("number", "https://easypay5.com".parse()?),
//!     NumberCredentials::new("EP9116875", token.trim()),
//! )?;
//! let number: Number = BoxCloneSyncService::new(ServiceBuilder::new().layer(layer).service(client));
//! let app: Router = Router::new().route("/refund", post(refund)).with_state(number);
//! # let _ = app; Ok(()) }
//! ```

#[cfg(feature = "sidecar")]
mod admin;
pub mod body;
pub mod clock;
#[cfg(feature = "sidecar")]
pub mod config;
#[cfg(feature = "sidecar")]
pub mod credentials;
pub mod creditguard;
#[cfg(feature = "sidecar")]
mod date;
pub mod error;
mod files;
pub mod forward;
pub mod gateway;
pub mod guard;
pub mod metrics;
pub mod number;
pub mod path;
pub mod proxy;
pub mod secret;
#[cfg(feature = "sidecar")]
pub mod shared;
#[cfg(feature = "sidecar")]
pub mod sidecar;
mod sync;
#[cfg(feature = "sidecar")]
mod tokens;
mod xml;

pub use error::{Error, ErrorCode};

/// The library's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit it was built from (12 hex digits), or `unknown` outside a git checkout.
pub const COMMIT: &str = env!("PAYAUTH_COMMIT");
pub use proxy::client::UpstreamClient;
pub use proxy::pool::{UpstreamBody, UpstreamError};
pub use proxy::tls::TlsFiles;
pub use secret::Secret;
