//! The sidecar's listeners: one per gateway, each a [`front`] stack in front of the gateway's
//! layer, served by the one accept loop, [`serve`] (which also serves the admin router).

pub mod client;
#[cfg(feature = "sidecar")]
pub mod front;
pub mod pool;
#[cfg(feature = "sidecar")]
pub mod reload;
pub mod tls;
#[cfg(feature = "sidecar")]
pub mod workers;

#[cfg(feature = "sidecar")]
pub use front::{Front, FrontLayer, FrontLimits, FrontService, SharedFront};
#[cfg(feature = "sidecar")]
pub use serving::*;

/// The accept loop, the listeners' helpers and the sidecar's service types.
#[cfg(feature = "sidecar")]
mod serving {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::time::Duration;

    use http::{Request, Response};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use hyper_util::server::graceful::GracefulShutdown;
    use tokio::net::TcpListener;
    use tokio::sync::watch;

    use super::pool::UpstreamBody;
    use super::SharedFront;
    use crate::body::ResponseBody;
    use crate::error::BoxError;

    /// The body of every response the sidecar sends.
    pub type ProxyBody = ResponseBody<UpstreamBody>;

    /// A gateway's front as a worker serves it.
    pub type GatewayFront = SharedFront<Incoming, UpstreamBody>;

    /// Serves a gateway's front on `listener` with [`serve`]; its calls take the front by
    /// reference (nothing cloned per request but the gateway service the call needs).
    pub async fn serve_front(
        listener: TcpListener,
        front: GatewayFront,
        shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) {
        let service = hyper::service::service_fn(move |request| front(request));
        serve(listener, service, shutdown, grace).await;
    }

    /// The one accept loop: serves HTTP/1.1 on `listener` with `service` until `shutdown` turns
    /// true, then lets connections finish for up to `grace`. A tower service (the admin router)
    /// goes in wrapped in hyper-util's `TowerToHyperService`.
    pub async fn serve<H, B>(
        listener: TcpListener,
        service: H,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) where
        H: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        H::Future: Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let graceful = GracefulShutdown::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, _peer) = match accepted {
                        Ok(conn) => conn,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        // Head and (small) body copied into one buffer and written with one
                        // write(2): cheaper than writev(2) of several pieces (bench/vs-nginx.sh).
                        .writev(false)
                        .header_read_timeout(Duration::from_secs(30))
                        .serve_connection(TokioIo::new(stream), service.clone());
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                () = stopped(&mut shutdown) => break,
            }
        }
        drop(listener);
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing the remaining connections"),
        }
    }

    /// Resolves once `stop` turns true (or its sender is gone).
    pub async fn stopped(stop: &mut watch::Receiver<bool>) {
        // The borrow guard is dropped at once: it must not live across an await.
        let _ = stop.wait_for(|s| *s).await.map(|_| ());
    }

    /// Binds a listener, with a clear error.
    pub async fn bind(what: &str, addr: SocketAddr) -> std::io::Result<TcpListener> {
        TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("{what}: cannot listen on {addr}: {e}"))
        })
    }
}
