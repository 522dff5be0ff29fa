//! [`NumberAuthLayer`] and [`NumberAuth`]: the Number middleware, its settings, its state and
//! its handle. What a call must be and how the key goes into it: [`super::rules`]; getting and
//! renewing the key: [`super::keys`]; the renewal brake: [`super::brake`].

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::Uri;
use tower::Layer;

use super::brake::RenewalBrake;
use super::session_key::{KeyInfo, KeyState};
use super::signer::Signer;
use super::wire::SoapNames;
use super::NumberCredentials;
use crate::error::Error;
use crate::gateway::{Core, GatewaySettings, LayerBuilder, Middleware, SharedState};

/// Which of Number's APIs the gateway speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// JSON over HTTP; the key goes in the `SessKey` header.
    #[default]
    Rest,
    /// SOAP 1.1 (WCF); the key is the first argument of every operation.
    Soap,
}

/// Settings of one Number gateway.
#[derive(Debug, Clone)]
pub struct NumberConfig {
    /// What every gateway has: name, upstream, budget, limits, timeout.
    pub gateway: GatewaySettings,
    /// REST or SOAP.
    pub protocol: Protocol,
    /// REST: the Authenticate path. SOAP: the service path.
    pub auth_path: String,
    /// SOAP names (namespace, Authenticate action, session-key element).
    pub soap: SoapNames,
    /// A key refused (5030/5050) younger than this is a gateway anomaly: a second one in a row
    /// makes further renewals back off exponentially (1 s doubling to 5 min, jittered), calls
    /// failing fast with `auth_unavailable` meanwhile (default 30 s).
    pub renewal_min_key_age: Duration,
}

impl NumberConfig {
    /// Default of [`Self::renewal_min_key_age`]: 30 s.
    pub const DEFAULT_RENEWAL_MIN_KEY_AGE: Duration = Duration::from_secs(30);
    /// Default of [`Self::auth_path`] for REST.
    pub const DEFAULT_REST_AUTH_PATH: &'static str = "/APIcardProcREST/v1.0.0/Authenticate";

    /// REST defaults: `/APIcardProcREST/v1.0.0/Authenticate` and the [`GatewaySettings`]
    /// defaults (budget 1, 1 MiB requests, 64 KiB inspected, 30 s timeout).
    pub fn rest(name: impl Into<String>, upstream: Uri) -> Self {
        Self {
            gateway: GatewaySettings::new(name, upstream),
            protocol: Protocol::Rest,
            auth_path: Self::DEFAULT_REST_AUTH_PATH.into(),
            soap: SoapNames::default(),
            renewal_min_key_age: Self::DEFAULT_RENEWAL_MIN_KEY_AGE,
        }
    }

    /// SOAP defaults, with the service path (for example `/APIcardProcR119/CardProcAPI.svc`).
    pub fn soap(name: impl Into<String>, upstream: Uri, service_path: impl Into<String>) -> Self {
        Self {
            protocol: Protocol::Soap,
            auth_path: service_path.into(),
            ..Self::rest(name, upstream)
        }
    }
}

/// The authentication in flight, its outcome shared by every caller waiting for it.
pub(super) type Flight = tokio::sync::watch::Receiver<Option<Result<Arc<KeyState>, Error>>>;

pub(super) struct CredState {
    pub(super) credentials: NumberCredentials,
    pub(super) signer: Option<Signer>,
    /// Seals keys for the credential state (a shared store keeps them only sealed).
    pub(super) seal: super::KeySeal,
}

/// A Number gateway's state, shared by its layer, its middleware and its handle.
pub struct NumberGateway {
    pub(super) core: Core,
    pub(super) config: NumberConfig,
    pub(super) auth_uri: Uri,
    /// `config.auth_path` canonicalised once (none if it is refused: then it matches nothing).
    pub(super) auth_path: Option<crate::path::CanonicalPath<'static>>,
    pub(super) credentials: ArcSwap<CredState>,
    pub(super) key: ArcSwapOption<KeyState>,
    pub(super) flight: Mutex<Option<Flight>>,
    pub(super) brake: RenewalBrake,
}

impl fmt::Debug for NumberGateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NumberGateway")
            .field("config", &self.config)
            .field(
                "generation",
                &self.key.load().as_ref().map(|k| k.generation),
            )
            .finish_non_exhaustive()
    }
}

/// Adds Number's session key to every request and renews it transparently.
///
/// Requests must carry absolute URIs on the gateway (as a hyper client expects). The wrapped
/// client is also used to authenticate.
#[derive(Clone, Debug)]
pub struct NumberAuthLayer {
    shared: Arc<NumberGateway>,
}

/// Control of a running Number gateway: credentials, unlock, status.
#[derive(Clone, Debug)]
pub struct NumberHandle {
    shared: Arc<NumberGateway>,
}

impl NumberAuthLayer {
    /// A layer whose lockout guard lives in memory and whose metrics are not exported: the
    /// [`builder`](Self::builder)'s defaults.
    pub fn new(config: NumberConfig, credentials: NumberCredentials) -> std::io::Result<Self> {
        Self::builder(config, credentials).build()
    }

    /// A builder: where the credential state lives, where the metrics go.
    pub fn builder(
        config: NumberConfig,
        credentials: NumberCredentials,
    ) -> LayerBuilder<NumberConfig, NumberCredentials> {
        LayerBuilder::new(config, credentials)
    }

    /// A handle to control the gateway while it runs.
    pub fn handle(&self) -> NumberHandle {
        NumberHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl LayerBuilder<NumberConfig, NumberCredentials> {
    /// Builds the layer.
    pub fn build(mut self) -> std::io::Result<NumberAuthLayer> {
        // Number's authentications are rare and its lock at 6 is the vendor's rule: strictly one
        // at a time, always.
        let fingerprint = self.credentials.fingerprint();
        let settings = self.config.gateway.clone();
        let core = self.core(&settings, 1, fingerprint)?;
        let Self {
            config,
            credentials,
            ..
        } = self;
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let auth_uri = config.gateway.upstream_at(&config.auth_path)?;
        let cred_state =
            cred_state(credentials, &config.gateway.name).map_err(|e| invalid(e.to_string()))?;
        let auth_path = crate::path::canonicalize(&config.auth_path)
            .ok()
            .map(crate::path::CanonicalPath::into_owned);
        let brake = RenewalBrake::new(config.renewal_min_key_age);
        Ok(NumberAuthLayer {
            shared: Arc::new(NumberGateway {
                core,
                config,
                auth_uri,
                auth_path,
                credentials: ArcSwap::from_pointee(cred_state),
                key: ArcSwapOption::empty(),
                flight: Mutex::new(None),
                brake,
            }),
        })
    }
}

fn cred_state(
    credentials: NumberCredentials,
    gateway: &str,
) -> Result<CredState, super::SignError> {
    let signer = credentials
        .signing
        .as_ref()
        .map(|s| Signer::new(&s.secret, s.user_id))
        .transpose()?;
    let seal =
        super::KeySeal::new(&credentials.token, gateway).map_err(|_| super::SignError::BadKey)?;
    Ok(CredState {
        credentials,
        signer,
        seal,
    })
}

impl NumberHandle {
    /// Swaps in new credentials (a changed token or HMAC secret file). A new token gets its own
    /// guard record, so a gateway locked by a rejected token is unlocked by a different one. The
    /// current session key stays in use until the gateway refuses it.
    pub fn update_credentials(
        &self,
        credentials: NumberCredentials,
    ) -> Result<(), super::SignError> {
        let fingerprint = credentials.fingerprint();
        let signing_changed = {
            let current = self.shared.credentials.load();
            current.credentials.signing != credentials.signing
        };
        let state = cred_state(credentials, self.shared.core.name())?;
        self.shared.credentials.store(Arc::new(state));
        self.shared.core.guard.change_credentials(fingerprint);
        if signing_changed {
            // The key's signer is part of the key state: re-derive it with the new secret.
            if let Some(current) = self.shared.key.load_full() {
                let signer = self.shared.credentials.load().signer.clone();
                if let Ok(next) = KeyState::new(
                    current.key_clone(),
                    current.generation,
                    signer,
                    current.obtained,
                ) {
                    self.shared.key.store(Some(Arc::new(next)));
                }
            }
        }
        Ok(())
    }

    /// The gateway's lockout guard (unlock, status).
    pub fn guard(&self) -> &SharedState {
        &self.shared.core.guard
    }

    /// The gateway's name.
    pub fn name(&self) -> &str {
        self.shared.core.name()
    }

    /// Resolves once no authentication is in flight (or after `limit`), so that a process
    /// stopping records the real outcome of its last authentication rather than an unknown one.
    pub async fn wait_idle(&self, limit: Duration) {
        self.shared.core.guard.wait_idle(limit).await;
    }

    /// Takes a key a peer published, if it is newer than the one in use (shared mode: replicas
    /// learn of a new key ahead of the gateway refusing theirs). Returns whether it did.
    pub async fn refresh(&self) -> bool {
        let shared = &self.shared;
        let Some(published) = shared.core.guard.latest().await else {
            return false;
        };
        let current = shared.key.load().as_ref().map_or(0, |k| k.generation);
        if published.generation <= current {
            return false;
        }
        let creds = shared.credentials.load_full();
        let Ok(key) = creds.seal.open(&published.sealed) else {
            return false;
        };
        let Ok(state) = shared.key_state(key, published.generation, creds.signer.clone()) else {
            return false;
        };
        // Under the flight slot, so a renewal finishing meanwhile is not overwritten by an
        // older key.
        let _slot = crate::sync::lock(&shared.flight);
        if shared.key.load().as_ref().map_or(0, |k| k.generation) < published.generation {
            shared.key.store(Some(state));
            tracing::info!(gateway = %shared.core.name(), generation = published.generation,
                "using the session key a peer published");
            return true;
        }
        false
    }

    /// The current key, if any.
    pub fn key(&self) -> Option<KeyInfo> {
        self.shared.key.load().as_ref().map(|k| KeyInfo {
            generation: k.generation,
        })
    }
}

impl<S> Layer<S> for NumberAuthLayer {
    type Service = NumberAuth<S>;

    fn layer(&self, inner: S) -> NumberAuth<S> {
        Middleware::new(inner, Arc::clone(&self.shared))
    }
}

/// The Number middleware; see [`NumberAuthLayer`].
pub type NumberAuth<S> = Middleware<NumberGateway, S>;
