//! The simulators' HTTP/1.1 server: the accept loop (plain or TLS), keep-alive connections and
//! a graceful shutdown that gives in-flight requests [`SHUTDOWN_GRACE`] before closing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Any error a connection task can end with.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An answer of a simulator.
pub(crate) type Resp = Response<Full<Bytes>>;

/// Largest request body a simulator reads; bigger ones get 413.
pub(crate) const MAX_BODY: usize = 4 * 1024 * 1024;

/// Reads a request body, at most [`MAX_BODY`] (413 above, 400 when it cannot be read).
pub(crate) async fn read_body(body: Incoming) -> Result<Bytes, Resp> {
    use http_body_util::{BodyExt, LengthLimitError, Limited};
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(text(
            http::StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        )),
        Err(_) => Err(text(
            http::StatusCode::BAD_REQUEST,
            "could not read request body",
        )),
    }
}

/// A plain-text answer.
pub(crate) fn text(status: http::StatusCode, msg: &'static str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from_static(msg.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Locks a simulator's state. A poisoned lock is taken anyway: the state is consistent between
/// statements, and one panicked handler must not fail every later call.
#[allow(clippy::disallowed_methods)]
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How long in-flight requests may take once a simulator is told to stop.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Serves `handler` on `listener` until `shutdown` changes. With `tls`, each connection's
/// handshake runs in its own task (a slow client holds up no one) and a failed one calls
/// `on_handshake_failure`.
pub(crate) async fn accept_loop<H, F, E>(
    listener: TcpListener,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    on_handshake_failure: Arc<dyn Fn() + Send + Sync>,
    name: &'static str,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let (handler, shutdown) = (handler.clone(), shutdown.clone());
                    let caller = peer.ip();
                    match tls.clone() {
                        None => {
                            conns.spawn(CALLER.scope(caller, serve_connection(stream, handler, shutdown, name)));
                        }
                        Some(acceptor) => {
                            let on_failure = Arc::clone(&on_handshake_failure);
                            conns.spawn(CALLER.scope(caller, async move {
                                match super::tls::accept(&acceptor, stream).await {
                                    Ok(stream) => serve_connection(stream, handler, shutdown, name).await,
                                    Err(err) => {
                                        on_failure();
                                        tracing::debug!(%err, "{name}: tls handshake failed");
                                    }
                                }
                            }));
                        }
                    }
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::debug!(%err, "{name}: accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

tokio::task_local! {
    /// The IP address of the peer whose connection is being served.
    static CALLER: std::net::IpAddr;
}

/// Runs `future` as if served on a connection from `ip` (for tests of the judges).
#[cfg(test)]
pub(crate) async fn as_caller<F: Future>(ip: std::net::IpAddr, future: F) -> F::Output {
    CALLER.scope(ip, future).await
}

/// The IP address the current call came from (`None` outside a served connection).
pub(crate) fn caller() -> Option<std::net::IpAddr> {
    CALLER.try_with(|ip| *ip).ok()
}

async fn serve_connection<S, H, F, E>(
    stream: S,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
    name: &'static str,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    let service = service_fn(handler);
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(err) = res {
                tracing::debug!(%err, "{name}: connection closed");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A running simulator server: where it listens, and how to stop it. Dropping it stops it too
/// (the accept loop winds down on its own).
#[derive(Debug)]
pub(crate) struct SimServer {
    addr: std::net::SocketAddr,
    tls: bool,
    shutdown_tx: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimServer {
    /// Binds `addr` (`127.0.0.1:0` picks a free port) and serves `handler` on the current tokio
    /// runtime, over TLS when `tls` is given.
    pub(crate) async fn start<H, F, E>(
        addr: std::net::SocketAddr,
        tls: Option<&super::tls::SimTls>,
        handler: H,
        on_handshake_failure: Arc<dyn Fn() + Send + Sync>,
        name: &'static str,
    ) -> std::io::Result<Self>
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Result<Response<Full<Bytes>>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let acceptor = match tls {
            Some(tls) => Some(tls.acceptor().map_err(std::io::Error::other)?),
            None => None,
        };
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            listener,
            handler,
            shutdown_rx,
            acceptor,
            on_handshake_failure,
            name,
        ));
        Ok(Self {
            addr,
            tls: tls.is_some(),
            shutdown_tx,
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub(crate) fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// `http://ADDR` or `https://ADDR`.
    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops accepting, lets in-flight requests finish (for up to [`SHUTDOWN_GRACE`]) and
    /// closes every connection.
    pub(crate) async fn stop(&mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
    }
}
