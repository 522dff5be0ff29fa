//! The worker threads that serve the gateways' listeners.
//!
//! Each worker is one thread running a current-thread tokio runtime. Every gateway has one
//! listener per worker, all bound to the gateway's address with `SO_REUSEPORT`, so the kernel
//! spreads incoming connections over the workers. A worker serves the connections it accepted
//! with its own upstream connection pool, so a call's downstream and upstream I/O, its layer's
//! work and its wake-ups stay on one thread: no cross-thread wake-ups or work stealing on the
//! request path. What the workers share (the credential state and its single flight, the guard,
//! the signature cache's source, the concurrency limit and the metrics) is the same shared state
//! a multi-threaded runtime would share.
//!
//! Connections are not moved between workers: a long-lived keep-alive client stays on the worker
//! that accepted it. With many connections (the normal case for a sidecar's app) the kernel's
//! spread evens out; with one connection one worker serves it.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

/// How many connections may wait to be accepted, per listener (as tokio's own `bind`).
const BACKLOG: i32 = 1024;

/// Binds `count` listeners to `addr` (port 0: a free port, the same for all of them), with
/// `SO_REUSEPORT` when there are several. Fails, as a single bind would, when something already
/// listens on the address, even another process with `SO_REUSEPORT` set.
pub fn bind_group(
    what: &str,
    addr: SocketAddr,
    count: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let failed = |e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("{what}: cannot listen on {addr}: {e}"))
    };
    let first = listen(addr, false).map_err(failed)?;
    if count <= 1 {
        return Ok(vec![first]);
    }
    // The first bind, without SO_REUSEPORT, proves nobody listens here and picks the port; the
    // group then takes that port.
    let addr = first.local_addr().map_err(failed)?;
    drop(first);
    (0..count)
        .map(|_| listen(addr, true).map_err(failed))
        .collect()
}

fn listen(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(reuse_port)?;
    #[cfg(not(unix))]
    let _ = reuse_port;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// What one worker serves: a listener and the front of each gateway.
pub type WorkerJob = Vec<(std::net::TcpListener, super::GatewayFront)>;

/// Code of the embedding program's that the worker threads run.
#[derive(Clone, Default)]
pub struct WorkerHooks {
    /// Run on a worker thread when it has no task left to run and is about to wait for I/O or a
    /// timer (tokio's `on_thread_park`). Under load a worker may run many calls between two
    /// idle moments. The sidecar's binary flushes its per-worker log buffer here.
    pub on_idle: Option<std::sync::Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for WorkerHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHooks")
            .field("on_idle", &self.on_idle.is_some())
            .finish()
    }
}

/// The running workers.
#[derive(Debug)]
pub struct Workers {
    served: Vec<oneshot::Receiver<()>>,
    threads: Vec<JoinHandle<()>>,
    /// Set once, to how long each worker's blocking writes may still take.
    release: watch::Sender<Option<Duration>>,
}

impl Workers {
    /// Starts one thread per job. Each serves its listeners until `stop` turns true (or its
    /// sender is gone), lets connections finish for up to `grace`, then keeps its runtime (and
    /// the tasks it runs, such as an authentication in flight) until [`Workers::release`]
    /// drops them.
    /// Dropping `Workers` without releasing ends them at once.
    pub fn start(
        jobs: Vec<WorkerJob>,
        stop: &watch::Receiver<bool>,
        grace: Duration,
        hooks: &WorkerHooks,
    ) -> std::io::Result<Self> {
        let (release, released) = watch::channel(None);
        let mut workers = Self {
            served: Vec::new(),
            threads: Vec::new(),
            release,
        };
        for (index, job) in jobs.into_iter().enumerate() {
            let mut builder = tokio::runtime::Builder::new_current_thread();
            builder.enable_all();
            if let Some(on_idle) = hooks.on_idle.clone() {
                builder.on_thread_park(move || on_idle());
            }
            let runtime = builder.build()?;
            let listeners = {
                // Registered with the worker's own runtime.
                let _entered = runtime.enter();
                job.into_iter()
                    .map(|(listener, front)| Ok((TcpListener::from_std(listener)?, front)))
                    .collect::<std::io::Result<Vec<_>>>()?
            };
            let (served_tx, served_rx) = oneshot::channel();
            let (stop, mut released, mut abandoned) =
                (stop.clone(), released.clone(), released.clone());
            let thread = std::thread::Builder::new()
                .name(format!("payauth-worker-{index}"))
                .spawn(move || {
                    let flush = runtime.block_on(async move {
                        let serve = async {
                            let mut serving = JoinSet::new();
                            for (listener, front) in listeners {
                                serving.spawn(super::serve_front(
                                    listener,
                                    front,
                                    stop.clone(),
                                    grace,
                                ));
                            }
                            while serving.join_next().await.is_some() {}
                            let _ = served_tx.send(());
                            // The runtime goes on (authentications in flight) until released.
                            std::future::pending::<Option<Duration>>().await
                        };
                        tokio::select! {
                            never = serve => never,
                            // Released, even if still serving: the stop's deadline has come.
                            released = released.wait_for(Option::is_some) => {
                                released.ok().and_then(|r| *r)
                            }
                            // The sidecar is gone without shutting down: end now.
                            () = async { while abandoned.changed().await.is_ok() {} } => None,
                        }
                    });
                    // The tasks left (calls past the grace, an authentication in flight) are
                    // dropped here; a blocking write still running (a lockout record) gets
                    // `flush` to reach the disk.
                    runtime.shutdown_timeout(flush.unwrap_or_default());
                })?;
            workers.served.push(served_rx);
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// Waits until every worker has stopped serving (its listeners closed, its connections done
    /// or past the grace period).
    pub async fn served(&mut self) {
        for served in &mut self.served {
            let _ = served.await;
        }
    }

    /// Lets the workers end: what their runtimes still run is dropped, and blocking writes in
    /// flight get up to `flush`. Waits until their threads have ended.
    pub async fn release(self, flush: Duration) {
        let _ = self.release.send(Some(flush));
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}
