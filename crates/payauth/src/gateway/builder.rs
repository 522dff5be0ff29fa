//! One builder for both kinds' layers: [`crate::number::NumberAuthLayer::builder`] and
//! [`crate::creditguard::CreditGuardSessionLayer::builder`] give a [`LayerBuilder`], whose
//! setters say where the gateway's credential state lives and where its metrics go.

use std::sync::Arc;

use super::{Core, GatewaySettings, SharedState};
use crate::guard::{Fingerprint, GuardStore, MemoryGuardStore};
use crate::metrics::GatewayMetrics;

/// Builds a gateway's layer from its config and credentials. By default the lockout record lives
/// in memory (lost at exit) and the metrics are not exported.
///
/// ```
/// use std::sync::Arc;
/// use payauth::guard::MemoryGuardStore;
/// use payauth::number::{NumberAuthLayer, NumberConfig, NumberCredentials};
///
/// let config = NumberConfig::rest("number", "http://127.0.0.1:9001".parse().unwrap());
/// let credentials = NumberCredentials::new("EP9116875", "2148B239CF6846BDA5D141BF4A4CFBE8");
/// let layer = NumberAuthLayer::builder(config, credentials)
///     .guard_store(Arc::new(MemoryGuardStore::default()))
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[must_use = "a builder does nothing until it is built"]
pub struct LayerBuilder<C, K> {
    pub(crate) config: C,
    pub(crate) credentials: K,
    state: StateChoice,
    metrics: Option<GatewayMetrics>,
}

/// Where the gateway's credential state lives.
enum StateChoice {
    /// A guard whose record lives in memory.
    Memory,
    /// A guard whose record is persisted by a store.
    Store(Arc<dyn GuardStore>),
    /// A credential state of the caller's.
    Given(SharedState),
}

impl<C: std::fmt::Debug, K> std::fmt::Debug for LayerBuilder<C, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The credentials are left out whatever their type: they hold secrets.
        f.debug_struct("LayerBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<C, K> LayerBuilder<C, K> {
    pub(crate) fn new(config: C, credentials: K) -> Self {
        Self {
            config,
            credentials,
            state: StateChoice::Memory,
            metrics: None,
        }
    }

    /// Persists the lockout guard's record in `store` (for example a
    /// [`crate::guard::FileGuardStore`], so that a restart does not forget rejections).
    pub fn guard_store(mut self, store: Arc<dyn GuardStore>) -> Self {
        self.state = StateChoice::Store(store);
        self
    }

    /// Uses a credential state of the caller's, for example one shared by replicas: the lockout
    /// record (and Number's session-key generations) live there; CreditGuard's session pools
    /// stay per layer. The state is switched to this builder's credentials when it is built.
    /// Replaces [`guard_store`](Self::guard_store).
    pub fn credential_state(mut self, state: SharedState) -> Self {
        self.state = StateChoice::Given(state);
        self
    }

    /// Counts into `metrics` (from [`crate::metrics::Metrics::gateway`], registered for export)
    /// instead of unexported ones.
    pub fn metrics(mut self, metrics: GatewayMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The gateway's config, to adjust before building.
    pub fn config_mut(&mut self) -> &mut C {
        &mut self.config
    }

    /// Opens the gateway's core on the chosen state: a guard letting `proven_concurrency`
    /// authentications through at once once the credentials are proven, on the record of
    /// `fingerprint`.
    pub(crate) fn core(
        &mut self,
        settings: &GatewaySettings,
        proven_concurrency: u32,
        fingerprint: Fingerprint,
    ) -> std::io::Result<Core> {
        let metrics = self
            .metrics
            .take()
            .unwrap_or_else(|| GatewayMetrics::unregistered(&settings.name));
        let store = match std::mem::replace(&mut self.state, StateChoice::Memory) {
            StateChoice::Memory => Arc::new(MemoryGuardStore::default()),
            StateChoice::Store(store) => store,
            StateChoice::Given(state) => {
                state.change_credentials(fingerprint);
                return Ok(Core::new(settings, state, metrics));
            }
        };
        Core::open(settings, proven_concurrency, fingerprint, store, metrics)
    }
}
