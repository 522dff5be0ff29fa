//! The sidecar: config → gateways (layers around upstream clients) → listeners served by the
//! worker threads ([`crate::proxy::workers`]), plus, on the runtime that starts it, the admin
//! listener, the file poller (secrets and certificates), the shared-store poller, CreditGuard's
//! session filler and graceful shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::Layer;

use crate::admin::{self, AdminGateway};
use crate::config::{Config, GatewayConfig, GatewayKind};
use crate::credentials::{warn_if_expiring, NumberSource, Running};
use crate::creditguard::CreditGuardSessionLayer;
use crate::files::read_secret;
use crate::gateway::{LayerBuilder, SharedState};
use crate::guard::{FileGuardStore, GuardLimits, GuardStore};
use crate::metrics::{GatewayMetrics, Metrics};
use crate::number::{NumberAuthLayer, Protocol};
use crate::proxy::client::UpstreamClient;
use crate::proxy::reload::TlsWatch;
pub use crate::proxy::workers::WorkerHooks;
use crate::proxy::workers::{self, WorkerJob, Workers};
use crate::proxy::{self, FrontLayer, FrontLimits, GatewayFront};
use crate::shared::RedisStore;

/// One gateway as the sidecar runs it.
#[derive(Clone, Debug)]
pub struct Gateway {
    /// Its config.
    pub config: GatewayConfig,
    /// Its handle (name, guard, stop, credentials) and where its credentials come from.
    pub running: Running,
    /// Its metrics.
    pub metrics: GatewayMetrics,
    /// Its upstream client (reloaded, with each worker's fork of it, when certificate files
    /// change). Used off the request path, such as by CreditGuard's session filler.
    pub client: UpstreamClient,
}

impl Gateway {
    fn admin(&self) -> AdminGateway {
        AdminGateway {
            running: self.running.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    admin_addr: SocketAddr,
    gateway_addrs: Vec<(String, SocketAddr)>,
    stop: watch::Sender<bool>,
    /// The file and shared-store pollers.
    tasks: JoinSet<()>,
    workers: Workers,
    /// The admin listener stops last: `/ready` answers 503 while the gateways drain.
    admin_stop: watch::Sender<bool>,
    admin_task: JoinSet<()>,
    gateways: Arc<Vec<Gateway>>,
    registry: Registry,
    draining: Arc<AtomicBool>,
    /// `[proxy] shutdown_grace_secs`: the whole stop's bound.
    grace: Duration,
}

/// What a stop may take past its grace, at most, to end the worker threads (their last log
/// lines) and to let a lockout record being written reach the disk.
const STOP_FLUSH: Duration = Duration::from_millis(250);

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// A gateway built and bound, not serving yet.
struct Bound {
    gateway: Gateway,
    /// One listener per worker.
    listeners: Vec<std::net::TcpListener>,
    front: FrontLayer,
    make: MakeService,
    warm_up: Option<WarmUp>,
}

impl Sidecar {
    /// Starts everything the config describes (listen addresses with port 0 get a free port).
    /// Nothing is sent to a gateway until every listener is bound.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        Self::start_with(config, &WorkerHooks::default()).await
    }

    /// [`Sidecar::start`], with code of the caller's run by the worker threads.
    pub async fn start_with(config: Config, hooks: &WorkerHooks) -> Result<Self, StartError> {
        let (registry, bound) = bind_gateways(&config).await?;
        let admin_listener = proxy::bind("admin", config.admin.listen)
            .await
            .map_err(|e| StartError(e.to_string()))?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|e| StartError(e.to_string()))?;
        let (stop, stop_rx) = watch::channel(false);
        let grace = config.proxy.shutdown_grace;
        let Assigned {
            jobs,
            gateways,
            gateway_addrs,
            warm_ups,
        } = assign(bound, config.proxy.workers);
        let workers = Workers::start(jobs, &stop_rx, grace, hooks)
            .map_err(|e| StartError(format!("cannot start the worker threads: {e}")))?;
        // Every listener is bound and served: nothing can fail the start any more.
        for warm_up in warm_ups {
            warm_up();
        }
        let mut tasks = JoinSet::new();
        let gateways = Arc::new(gateways);
        let draining = Arc::new(AtomicBool::new(false));
        let admin_state = admin::AdminState {
            registry: registry.clone(),
            gateways: Arc::new(gateways.iter().map(Gateway::admin).collect()),
            admin_token_file: config.admin.token_file.clone(),
            ready_requires_unlocked: config.admin.ready_requires_unlocked,
            draining: Arc::clone(&draining),
        };
        tracing::info!(%admin_addr, "admin listening");
        let (admin_stop, admin_stop_rx) = watch::channel(false);
        let mut admin_task = JoinSet::new();
        admin_task.spawn(proxy::serve(
            admin_listener,
            hyper_util::service::TowerToHyperService::new(admin::router(admin_state)),
            admin_stop_rx,
            grace,
        ));
        if let Some(shared) = &config.shared {
            for gateway in gateways.iter() {
                tasks.spawn(poll_shared(
                    gateway.clone(),
                    shared.key_poll,
                    stop_rx.clone(),
                ));
            }
        }
        tasks.spawn(poll_files(
            Arc::clone(&gateways),
            config.proxy.secret_poll_interval,
            stop_rx,
        ));
        Ok(Self {
            admin_addr,
            gateway_addrs,
            stop,
            tasks,
            workers,
            admin_stop,
            admin_task,
            gateways,
            registry,
            draining,
            grace,
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
        &self.gateways
    }

    /// The metrics registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Begins shutdown: `/ready` turns 503, listeners stop accepting, in-flight calls go on.
    pub fn begin_shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let _ = self.stop.send(true);
    }

    /// Shuts down within `[proxy] shutdown_grace_secs` from the call: stops accepting, lets the
    /// calls in flight finish, then waits for the authentications in flight, all before one
    /// deadline. What is still running then is dropped, as a SIGKILL would: an authentication
    /// still in flight stays on record as an unknown outcome (it was recorded before it was
    /// sent), and the log says so. Ending the worker threads and the admin listener takes at
    /// most [`STOP_FLUSH`] more each.
    pub async fn shutdown(mut self) {
        let started = tokio::time::Instant::now();
        let deadline = started + self.grace;
        self.begin_shutdown();
        let Self { tasks, workers, .. } = &mut self;
        let drained = tokio::time::timeout_at(deadline, async {
            tokio::join!(
                async { while tasks.join_next().await.is_some() {} },
                workers.served()
            )
        })
        .await;
        self.tasks.abort_all();
        if drained.is_ok() {
            tracing::debug!("shutdown: listeners closed, connections done");
        } else {
            tracing::warn!(
                grace_secs = self.grace.as_secs_f64(),
                "shutdown grace over with calls still in flight; their connections are closed"
            );
        }
        // Every gateway's credential work stops at once, all of it within the one deadline.
        let mut stops = JoinSet::new();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        for gateway in self.gateways.iter() {
            let running = gateway.running.clone();
            stops.spawn(async move { running.stop(left).await });
        }
        while stops.join_next().await.is_some() {}
        for gateway in self.gateways.iter() {
            let in_flight = gateway.running.guard().status().in_flight;
            if in_flight > 0 {
                tracing::warn!(gateway = %gateway.running.name(), in_flight,
                    "shutdown grace over with authentications in flight: they stay on record as \
                     unknown outcomes (as after a crash); the next start reports them");
            }
        }
        tracing::debug!("shutdown: credential work stopped");
        self.workers.release(STOP_FLUSH).await;
        tracing::debug!("shutdown: worker threads ended");
        let _ = self.admin_stop.send(true);
        let admin = async { while self.admin_task.join_next().await.is_some() {} };
        if tokio::time::timeout(STOP_FLUSH, admin).await.is_err() {
            self.admin_task.abort_all();
        }
        tracing::info!(took_ms = started.elapsed().as_millis() as u64, "stopped");
    }
}

/// Checks the secrets and the state dir, opens the guard stores and the metrics, and builds and
/// binds every gateway: nothing is served yet, nothing has been sent.
async fn bind_gateways(config: &Config) -> Result<(Registry, Vec<Bound>), StartError> {
    config
        .check_secrets()
        .map_err(|e| StartError(format!("configuration problems:\n{e}")))?;
    let state =
        |e: std::io::Error| StartError(format!("state dir {}: {e}", config.state_dir.display()));
    std::fs::create_dir_all(&config.state_dir).map_err(state)?;
    let store = Guards {
        local: Arc::new(FileGuardStore::new(&config.state_dir).map_err(state)?),
        shared: shared_store(config)?,
    };
    let registry = Registry::new();
    let metrics = Metrics::new(&registry).map_err(|e| StartError(format!("metrics: {e}")))?;
    crate::metrics::register_process(&registry).map_err(|e| StartError(format!("metrics: {e}")))?;
    let mut bound = Vec::new();
    for gateway in &config.gateways {
        let metrics = metrics.gateway(gateway.name());
        bound.push(
            bind_gateway(gateway, config, &store, metrics)
                .await
                .map_err(|e| StartError(format!("gateway {:?}: {e}", gateway.name())))?,
        );
    }
    Ok((registry, bound))
}

/// The bound gateways dealt out to the worker threads.
struct Assigned {
    jobs: Vec<WorkerJob>,
    gateways: Vec<Gateway>,
    gateway_addrs: Vec<(String, SocketAddr)>,
    warm_ups: Vec<WarmUp>,
}

/// Gives each of `workers` threads one listener of every gateway, with a front of its own.
fn assign(bound: Vec<Bound>, workers: usize) -> Assigned {
    let mut assigned = Assigned {
        jobs: (0..workers).map(|_| Vec::new()).collect(),
        gateways: Vec::new(),
        gateway_addrs: Vec::new(),
        warm_ups: Vec::new(),
    };
    for Bound {
        gateway,
        listeners,
        front,
        make,
        warm_up,
    } in bound
    {
        if let Some(addr) = listeners.first().and_then(|l| l.local_addr().ok()) {
            tracing::info!(gateway = %gateway.config.name(), %addr, upstream = %gateway.config.settings().upstream,
                workers = listeners.len(), "listening");
            assigned
                .gateway_addrs
                .push((gateway.config.name().to_owned(), addr));
        }
        // Each worker calls the gateway through a connection pool of its own.
        for (job, listener) in assigned.jobs.iter_mut().zip(listeners) {
            job.push((listener, make(&front, gateway.client.fork())));
        }
        assigned.warm_ups.extend(warm_up);
        assigned.gateways.push(gateway);
    }
    assigned
}

/// Starts a gateway's background credential work (the CreditGuard session pool).
type WarmUp = Box<dyn FnOnce() + Send>;

/// Makes a gateway's front (around its layer, which shares the gateway's credential state) with
/// an upstream client: each worker's own.
type MakeService = Box<dyn Fn(&FrontLayer, UpstreamClient) -> GatewayFront + Send>;

/// Builds a gateway's layer and binds its listeners, one per worker.
async fn bind_gateway(
    gateway: &GatewayConfig,
    config: &Config,
    store: &Guards,
    metrics: GatewayMetrics,
) -> Result<Bound, String> {
    let client = UpstreamClient::with_source(
        &gateway.tls,
        gateway.connect_timeout,
        gateway.source_address,
    )?;
    let (make, running, warm_up) =
        build_layer(gateway, config, client.clone(), store, metrics.clone())?;
    let what = format!("gateway {:?}", gateway.name());
    let listeners = workers::bind_group(&what, gateway.listen, config.proxy.workers)
        .map_err(|e| e.to_string())?;
    let soap_errors =
        matches!(&gateway.kind, GatewayKind::Number(n) if n.layer.protocol == Protocol::Soap);
    let settings = gateway.settings();
    let front = FrontLayer::new(
        &settings.name,
        settings.upstream.clone(),
        FrontLimits {
            max_concurrency: gateway.max_concurrency,
            max_request_bytes: settings.max_request_bytes,
            body_timeout: settings.request_timeout,
            soap_errors,
        },
        metrics.clone(),
    );
    Ok(Bound {
        gateway: Gateway {
            config: gateway.clone(),
            running,
            metrics,
            client,
        },
        listeners,
        front,
        make,
        warm_up,
    })
}

type Built = (MakeService, Running, Option<WarmUp>);

/// Where the gateways' credential state lives: the state dir, and the shared store if any.
struct Guards {
    local: Arc<dyn GuardStore>,
    shared: Option<Arc<RedisStore>>,
}

impl Guards {
    /// The gateway's state in the shared store (with the local record as its lower bound).
    fn shared_state(
        &self,
        gateway: &GatewayConfig,
        proven_concurrency: u32,
        fingerprint: crate::guard::Fingerprint,
        metrics: &GatewayMetrics,
    ) -> std::io::Result<Option<SharedState>> {
        let Some(store) = self.shared.as_ref() else {
            return Ok(None);
        };
        let settings = gateway.settings();
        let limits = GuardLimits {
            budget: settings.auth_failure_budget,
            proven_concurrency,
        };
        // An attempt may take the request timeout; past that (and a margin) its holder is
        // taken for gone and the attempt for unknown.
        let lease = settings.request_timeout + Duration::from_secs(5);
        let state: SharedState = store.state(
            &settings.name,
            limits,
            fingerprint,
            Arc::clone(&self.local),
            lease,
            metrics.clone(),
        )?;
        Ok(Some(state))
    }

    /// `builder` on the gateway's state: the shared store's if there is one, else the local
    /// guard store's.
    fn apply<C, K>(
        &self,
        builder: LayerBuilder<C, K>,
        gateway: &GatewayConfig,
        proven_concurrency: u32,
        fingerprint: crate::guard::Fingerprint,
        metrics: &GatewayMetrics,
    ) -> std::io::Result<LayerBuilder<C, K>> {
        let builder = builder.metrics(metrics.clone());
        Ok(
            match self.shared_state(gateway, proven_concurrency, fingerprint, metrics)? {
                Some(state) => builder.credential_state(state),
                None => builder.guard_store(Arc::clone(&self.local)),
            },
        )
    }
}

/// The shared store the config names, if any (its password read from its file).
fn shared_store(config: &Config) -> Result<Option<Arc<RedisStore>>, StartError> {
    let Some(shared) = &config.shared else {
        return Ok(None);
    };
    let password = match &shared.password_file {
        Some(path) => {
            Some(read_secret(path).map_err(|e| StartError(format!("shared.password_file: {e}")))?)
        }
        None => None,
    };
    let store = RedisStore::new(shared, password).map_err(|e| StartError(e.to_string()))?;
    tracing::info!(egress_id = %shared.egress_id,
        "shared mode: replicas behind this egress share session keys and lockout budgets");
    Ok(Some(Arc::new(store)))
}

fn build_layer(
    gateway: &GatewayConfig,
    config: &Config,
    client: UpstreamClient,
    store: &Guards,
    metrics: GatewayMetrics,
) -> Result<Built, String> {
    match &gateway.kind {
        GatewayKind::Number(settings) => {
            let source = Arc::new(NumberSource::new(
                gateway.name(),
                settings,
                &config.state_dir,
            ));
            let in_force = source.load().map_err(|e| e.to_string())?;
            if let Some(token_id) = in_force.renewed {
                tracing::info!(gateway = %gateway.name(), token_id,
                    "using the token renewed through the admin API (token_file unchanged since)");
            }
            if let Some(at) = in_force.expires_at {
                metrics.set_token_expiry(at as f64);
                warn_if_expiring(gateway.name(), at);
            }
            let credentials = in_force.credentials;
            let fingerprint = credentials.fingerprint();
            let builder = NumberAuthLayer::builder(settings.layer.clone(), credentials);
            let layer = store
                .apply(builder, gateway, 1, fingerprint, &metrics)
                .map_err(|e| e.to_string())?
                .build()
                .map_err(|e| e.to_string())?;
            let handle = layer.handle();
            drop(client);
            let make: MakeService =
                Box::new(move |front, client| front.shared(layer.layer(client)));
            Ok((make, Running::Number { handle, source }, None))
        }
        GatewayKind::CreditGuard(settings) => {
            let credentials =
                crate::credentials::creditguard_files(settings).map_err(|e| e.to_string())?;
            let concurrency = settings.layer.session_fetch_concurrency;
            let fingerprint = credentials.fingerprint();
            let builder = CreditGuardSessionLayer::builder(settings.layer.clone(), credentials);
            let layer = store
                .apply(builder, gateway, concurrency, fingerprint, &metrics)
                .map_err(|e| e.to_string())?
                .build()
                .map_err(|e| e.to_string())?;
            let handle = layer.handle();
            let service = layer.layer(client);
            // Sessions are fetched ahead of the first call, off the request path, but only once
            // every listener is bound: a start that fails must not have sent a getSessionId.
            let warm_up: WarmUp = Box::new(move || service.warm_up());
            let make: MakeService =
                Box::new(move |front, client| front.shared(layer.layer(client)));
            let settings = Arc::new(settings.clone());
            Ok((
                make,
                Running::CreditGuard { handle, settings },
                Some(warm_up),
            ))
        }
    }
}

/// Shared mode: every `interval`, looks at the gateway's shared record (so that a lock or an
/// unlock made through another replica shows here, in `/ready` too) and, for Number, takes a
/// key a peer published, so that replicas move to it ahead of the gateway refusing theirs.
async fn poll_shared(gateway: Gateway, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = proxy::stopped(&mut stop) => return,
        }
        match &gateway.running {
            Running::Number { handle, .. } => {
                handle.refresh().await;
            }
            Running::CreditGuard { handle, .. } => {
                handle.guard().latest().await;
            }
        }
    }
}

/// How often the token expiry is looked at again (it is also checked at start and on renewal).
const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(6 * 3600);

/// One gateway's files as the poller last saw them.
struct Polled {
    gateway: Gateway,
    /// A digest of the credentials last put in force (`None`: unreadable at start).
    credentials: Option<crate::guard::Fingerprint>,
    tls: Option<TlsWatch>,
}

/// The one file poller: every `interval` it re-reads each gateway's secret files (swapping in
/// credentials that changed) and certificate files (rebuilding its client), and now and then
/// warns of a token about to expire. Kubernetes updates mounted Secrets by swapping a symlink,
/// which file-change notifications report unreliably; polling a few small files every couple of
/// seconds is both simpler and dependable.
async fn poll_files(
    gateways: Arc<Vec<Gateway>>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut polled: Vec<Polled> = gateways
        .iter()
        .map(|g| Polled {
            credentials: g.running.digest().ok(),
            tls: TlsWatch::new(g.config.name(), &g.config.tls, &g.client, g.running.guard()),
            gateway: g.clone(),
        })
        .collect();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_expiry_check = tokio::time::Instant::now() + EXPIRY_CHECK_EVERY;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = proxy::stopped(&mut stop) => return,
        }
        let check_expiry = tokio::time::Instant::now() >= next_expiry_check;
        if check_expiry {
            next_expiry_check += EXPIRY_CHECK_EVERY;
        }
        for p in &mut polled {
            p.gateway
                .running
                .refresh(&mut p.credentials, &p.gateway.metrics);
            if let Some(tls) = &mut p.tls {
                tls.poll();
            }
            if let (true, Some(at)) = (check_expiry, p.gateway.metrics.token_expiry()) {
                warn_if_expiring(p.gateway.config.name(), at);
            }
        }
    }
}

/// Runs the sidecar until SIGTERM or SIGINT, then drains.
pub async fn run(config: Config) -> Result<(), StartError> {
    run_with(config, &WorkerHooks::default()).await
}

/// [`run`], with code of the caller's run by the worker threads.
pub async fn run_with(config: Config, hooks: &WorkerHooks) -> Result<(), StartError> {
    let sidecar = Sidecar::start_with(config, hooks).await?;
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
