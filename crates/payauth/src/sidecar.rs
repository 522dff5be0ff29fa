//! The sidecar: config → gateways (layers around upstream clients) → listeners, plus the admin
//! listener, the secret-file watcher and graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::util::BoxCloneSyncService;
use tower::Layer;

use crate::config::{Config, CreditGuardSettings, GatewayConfig, GatewayKind, NumberSettings};
use crate::creditguard::{
    CreditGuardConfig, CreditGuardCredentials, CreditGuardHandle, CreditGuardSessionLayer,
    PoolConfig,
};
use crate::files::read_secret;
use crate::guard::{AuthGuard, FileGuardStore, GuardStore};
use crate::metrics::{GatewayMetrics, Metrics};
use crate::number::{NumberAuthLayer, NumberConfig, NumberCredentials, NumberHandle};
use crate::proxy::client::UpstreamClient;
use crate::proxy::{self, Front, GatewayService};

/// Control of one running gateway, for the admin API and the secret watcher.
#[derive(Clone, Debug)]
pub enum Control {
    /// A Number gateway.
    Number(NumberHandle),
    /// A CreditGuard gateway.
    CreditGuard(CreditGuardHandle),
}

impl Control {
    /// The gateway's name.
    pub fn name(&self) -> &str {
        match self {
            Control::Number(h) => h.name(),
            Control::CreditGuard(h) => h.name(),
        }
    }

    /// The gateway's lockout guard.
    pub fn guard(&self) -> &Arc<AuthGuard> {
        match self {
            Control::Number(h) => h.guard(),
            Control::CreditGuard(h) => h.guard(),
        }
    }
}

/// One gateway as the sidecar runs it.
#[derive(Clone, Debug)]
pub struct Gateway {
    /// Its config.
    pub config: GatewayConfig,
    /// Its controls.
    pub control: Control,
    /// Its metrics.
    pub metrics: GatewayMetrics,
    /// Its upstream client (reloaded when certificate files change).
    pub client: UpstreamClient,
}

/// State shared by the admin API.
#[derive(Clone, Debug)]
pub struct Shared {
    /// The metrics registry.
    pub registry: Registry,
    /// The gateways.
    pub gateways: Arc<Vec<Gateway>>,
    /// File holding the admin bearer token.
    pub admin_token_file: Option<PathBuf>,
    /// True once shutdown began: `/ready` answers 503.
    pub draining: Arc<AtomicBool>,
    /// The state directory.
    pub state_dir: PathBuf,
}

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    admin_addr: SocketAddr,
    gateway_addrs: Vec<(String, SocketAddr)>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    admin_task: tokio::task::JoinHandle<()>,
    shared: Shared,
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

impl Sidecar {
    /// Starts everything the config describes (listen addresses with port 0 get a free port).
    pub async fn start(config: Config) -> Result<Self, StartError> {
        config
            .check_secrets()
            .map_err(|e| StartError(format!("configuration problems:\n{e}")))?;
        std::fs::create_dir_all(&config.state_dir)
            .map_err(|e| StartError(format!("state dir {}: {e}", config.state_dir.display())))?;
        let store: Arc<dyn GuardStore> =
            Arc::new(FileGuardStore::new(&config.state_dir).map_err(|e| {
                StartError(format!("state dir {}: {e}", config.state_dir.display()))
            })?);
        let registry = Registry::new();
        let metrics = Metrics::new(&registry).map_err(|e| StartError(format!("metrics: {e}")))?;
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut gateways = Vec::new();
        let mut gateway_addrs = Vec::new();
        let mut warm_ups = Vec::new();
        for gateway in &config.gateways {
            let gw_metrics = metrics.gateway(&gateway.name);
            let client = UpstreamClient::new(&gateway.tls, gateway.connect_timeout)
                .map_err(|e| StartError(format!("gateway {:?}: {e}", gateway.name)))?;
            let (service, control, warm_up) = build_gateway(
                gateway,
                &config.state_dir,
                client.clone(),
                Arc::clone(&store),
                gw_metrics.clone(),
            )
            .map_err(|e| StartError(format!("gateway {:?}: {e}", gateway.name)))?;
            warm_ups.extend(warm_up);
            let listener = proxy::bind(&format!("gateway {:?}", gateway.name), gateway.listen)
                .await
                .map_err(|e| StartError(e.to_string()))?;
            let addr = listener
                .local_addr()
                .map_err(|e| StartError(e.to_string()))?;
            let soap_errors = matches!(&gateway.kind, GatewayKind::Number(n) if n.protocol == crate::number::Protocol::Soap);
            let front = Front::new(
                &gateway.name,
                gateway.upstream.clone(),
                service,
                proxy::FrontLimits {
                    max_concurrency: gateway.max_concurrency,
                    max_request_bytes: gateway.max_request_bytes,
                    body_timeout: gateway.request_timeout,
                    soap_errors,
                },
                gw_metrics.clone(),
            );
            tasks.spawn(proxy::serve(
                listener,
                front,
                stop_rx.clone(),
                config.proxy.shutdown_grace,
            ));
            tracing::info!(gateway = %gateway.name, %addr, upstream = %gateway.upstream, "listening");
            gateway_addrs.push((gateway.name.clone(), addr));
            gateways.push(Gateway {
                config: gateway.clone(),
                control,
                metrics: gw_metrics,
                client,
            });
        }
        let shared = Shared {
            registry,
            gateways: Arc::new(gateways),
            admin_token_file: config.admin.token_file.clone(),
            draining: Arc::new(AtomicBool::new(false)),
            state_dir: config.state_dir.clone(),
        };
        let admin_listener = proxy::bind("admin", config.admin.listen)
            .await
            .map_err(|e| StartError(e.to_string()))?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|e| StartError(e.to_string()))?;
        tracing::info!(%admin_addr, "admin listening");
        // Every listener is bound: nothing can fail the start any more.
        for warm_up in warm_ups {
            warm_up();
        }
        let admin_task = tokio::spawn(crate::admin::serve(admin_listener, shared.clone()));
        let tls_files = shared.gateways.iter().map(|g| {
            (
                g.config.name.as_str(),
                &g.config.tls,
                &g.client,
                g.control.guard(),
            )
        });
        tasks.spawn(proxy::reload::watch_tls(
            tls_files,
            config.proxy.secret_poll_interval,
            stop_rx.clone(),
        ));
        tasks.spawn(watch_secrets(
            shared.clone(),
            config.proxy.secret_poll_interval,
            stop_rx,
        ));
        Ok(Self {
            admin_addr,
            gateway_addrs,
            stop,
            tasks,
            admin_task,
            shared,
        })
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// A gateway listener's address.
    pub fn gateway_addr(&self, name: &str) -> Option<SocketAddr> {
        self.gateway_addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// The running gateways.
    pub fn gateways(&self) -> &[Gateway] {
        &self.shared.gateways
    }

    /// The metrics registry.
    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// Begins shutdown: `/ready` turns 503, listeners stop accepting, in-flight calls go on.
    pub fn begin_shutdown(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
        let _ = self.stop.send(true);
    }

    /// Shuts down gracefully and waits until in-flight calls are done (or the grace is over).
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        while self.tasks.join_next().await.is_some() {}
        for gateway in self.shared.gateways.iter() {
            match &gateway.control {
                Control::CreditGuard(handle) => handle.stop().await,
                Control::Number(handle) => handle.wait_idle(Duration::from_secs(5)).await,
            }
        }
        self.admin_task.abort();
        let _ = self.admin_task.await;
        tracing::info!("stopped");
    }
}

/// Starts a gateway's background credential work (the CreditGuard session pool).
type WarmUp = Box<dyn FnOnce() + Send>;

fn build_gateway(
    gateway: &GatewayConfig,
    state_dir: &std::path::Path,
    client: UpstreamClient,
    store: Arc<dyn GuardStore>,
    metrics: GatewayMetrics,
) -> Result<(GatewayService, Control, Option<WarmUp>), String> {
    match &gateway.kind {
        GatewayKind::Number(settings) => {
            let mut credentials = number_credentials(settings).map_err(|e| e.to_string())?;
            let mut expires_at = settings.token_expires_at;
            if let Some(portal) = crate::tokens::load(
                state_dir,
                &gateway.name,
                &settings.account_code,
                &credentials.token,
            ) {
                tracing::info!(gateway = %gateway.name, token_id = portal.token_id.as_deref().unwrap_or(""),
                    "using the token renewed through the admin API (token_file unchanged since)");
                credentials.token = portal.token;
                expires_at = portal.expires_at.or(expires_at);
            }
            let config = number_config(gateway, settings);
            if let Some(at) = expires_at {
                metrics.set_token_expiry(at as f64);
                warn_if_expiring(&gateway.name, at);
            }
            let layer = NumberAuthLayer::with_state(config, credentials, store, metrics)
                .map_err(|e| e.to_string())?;
            let control = Control::Number(layer.handle());
            let service = layer.layer(client);
            Ok((BoxCloneSyncService::new(service), control, None))
        }
        GatewayKind::CreditGuard(settings) => {
            let credentials = creditguard_credentials(settings).map_err(|e| e.to_string())?;
            let config = CreditGuardConfig {
                gateway: gateway.settings(),
                relay_path: settings.relay_path.clone(),
                terminals: settings.terminals.clone(),
                scope: settings.scope,
                session_fetch_concurrency: settings.session_fetch_concurrency,
                session_wait: settings.session_wait,
                pool: PoolConfig {
                    min: settings.pool_min,
                    max: settings.pool_max,
                    expiry_margin: settings.session_expiry_margin,
                },
            };
            let layer = CreditGuardSessionLayer::with_state(config, credentials, store, metrics)
                .map_err(|e| e.to_string())?;
            let control = Control::CreditGuard(layer.handle());
            let service = layer.layer(client);
            // Sessions are fetched ahead of the first call, off the request path, but only once
            // every listener is bound: a start that fails must not have sent a getSessionId.
            let warm = service.clone();
            let warm_up: WarmUp = Box::new(move || warm.warm_up());
            Ok((BoxCloneSyncService::new(service), control, Some(warm_up)))
        }
    }
}

pub(crate) fn creditguard_credentials(
    settings: &CreditGuardSettings,
) -> std::io::Result<CreditGuardCredentials> {
    Ok(CreditGuardCredentials {
        user: settings.user.clone(),
        password: read_secret(&settings.password_file)?,
    })
}

/// The credentials a gateway's secret files hold.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FileCredentials {
    Number(NumberCredentials),
    CreditGuard(CreditGuardCredentials),
}

fn file_credentials(kind: &GatewayKind) -> std::io::Result<FileCredentials> {
    Ok(match kind {
        GatewayKind::Number(s) => FileCredentials::Number(number_credentials(s)?),
        GatewayKind::CreditGuard(s) => FileCredentials::CreditGuard(creditguard_credentials(s)?),
    })
}

fn number_config(gateway: &GatewayConfig, settings: &NumberSettings) -> NumberConfig {
    NumberConfig {
        gateway: gateway.settings(),
        protocol: settings.protocol,
        auth_path: settings.auth_path.clone(),
        soap: settings.soap.clone(),
        renewal_min_key_age: settings.renewal_min_key_age,
    }
}

/// How often the token expiry is looked at again (it is also checked at start and on renewal).
const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(6 * 3600);

/// Logs a warning when a token expires within 14 days.
pub(crate) fn warn_if_expiring(gateway: &str, expires_at: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let days = (expires_at - now) / 86_400;
    if expires_at <= now {
        tracing::error!(
            gateway,
            "the gateway token has expired: renew it in the vendor's portal"
        );
    } else if days < 14 {
        tracing::warn!(
            gateway,
            days,
            "the gateway token expires soon: renew it in the vendor's portal"
        );
    }
}

pub(crate) fn number_credentials(settings: &NumberSettings) -> std::io::Result<NumberCredentials> {
    let token = read_secret(&settings.token_file)?;
    let mut credentials = NumberCredentials {
        account_code: settings.account_code.clone(),
        token,
        signing: None,
    };
    if let (Some(path), Some(user_id)) = (&settings.hmac_secret_file, settings.user_id) {
        credentials.signing = Some(crate::number::Signing {
            secret: read_secret(path)?,
            user_id,
        });
    }
    Ok(credentials)
}

/// Re-reads every gateway's secret files and swaps in what changed. Kubernetes updates mounted
/// Secrets by swapping a symlink, which file-change notifications report unreliably; polling a
/// few small files every couple of seconds is both simpler and dependable.
async fn watch_secrets(shared: Shared, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut last: Vec<Option<FileCredentials>> = shared
        .gateways
        .iter()
        .map(|g| file_credentials(&g.config.kind).ok())
        .collect();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_expiry_check = tokio::time::Instant::now() + EXPIRY_CHECK_EVERY;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = proxy::stopped(&mut stop) => return,
        }
        if tokio::time::Instant::now() >= next_expiry_check {
            next_expiry_check += EXPIRY_CHECK_EVERY;
            for gateway in shared.gateways.iter() {
                if let Some(at) = gateway.metrics.token_expiry() {
                    warn_if_expiring(&gateway.config.name, at);
                }
            }
        }
        for (gateway, last) in shared.gateways.iter().zip(last.iter_mut()) {
            let name = &gateway.config.name;
            let current = match file_credentials(&gateway.config.kind) {
                Ok(current) => current,
                Err(e) => {
                    tracing::debug!(gateway = %name, error = %e, "secret file unreadable; keeping the current credentials");
                    continue;
                }
            };
            if last.as_ref() == Some(&current) {
                continue;
            }
            tracing::info!(gateway = %name, "secret files changed; new credentials in use");
            let applied = match (&current, &gateway.control, &gateway.config.kind) {
                (
                    FileCredentials::Number(creds),
                    Control::Number(handle),
                    GatewayKind::Number(settings),
                ) => {
                    // A token renewed through the admin API stays in force while token_file
                    // still holds what it held then (only the HMAC secret file changed).
                    let mut effective = creds.clone();
                    if let Some(portal) = crate::tokens::load(
                        &shared.state_dir,
                        name,
                        &settings.account_code,
                        &creds.token,
                    ) {
                        effective.token = portal.token;
                    }
                    handle
                        .update_credentials(effective)
                        .map_err(|e| e.to_string())
                }
                (FileCredentials::CreditGuard(creds), Control::CreditGuard(handle), _) => {
                    handle.update_credentials(creds.clone());
                    Ok(())
                }
                _ => Err("the gateway's kind changed".to_owned()),
            };
            match applied {
                Ok(()) => *last = Some(current),
                Err(e) => {
                    tracing::error!(gateway = %name, error = %e, "new credentials unusable; keeping the old ones")
                }
            }
        }
    }
}

/// Runs the sidecar until SIGTERM or SIGINT, then drains.
pub async fn run(config: Config) -> Result<(), StartError> {
    let sidecar = Sidecar::start(config).await?;
    shutdown_signal().await;
    tracing::info!("shutdown signal received; draining");
    sidecar.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
