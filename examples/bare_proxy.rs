//! A bare hyper proxy, the floor `bench/vs-nginx.sh --bare` measures payauth against: the same
//! runtime layout as `payauth run` (one current-thread runtime per worker, `SO_REUSEPORT`
//! listeners, an upstream pool per worker) and nothing else: no layer, no front, no log, no
//! metrics, a static `SessKey` header.
//!
//! `cargo run --release --example bare_proxy -- LISTEN UPSTREAM [WORKERS]`, for example
//! `... -- 127.0.0.1:8090 http://127.0.0.1:9001 2`.
//!
//! To see what one of payauth's non-layer costs adds to the floor, set (any value):
//! `BARE_TIMER` (hyper's 30 s header-read timer, as `payauth run` sets it), `BARE_BUFFER` (both
//! bodies read whole) or `BARE_TIMEOUT` (a 30 s timeout around the upstream call).

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use socket2::{Domain, Protocol, Socket, Type};

/// The switches of the module docs, read once at start (reading the environment per request
/// would take a lock on every call and weigh on the floor).
#[derive(Debug, Clone, Copy)]
struct Switches {
    timer: bool,
    buffer: bool,
    timeout: bool,
}

impl Switches {
    fn from_env() -> Self {
        let on = |name| std::env::var_os(name).is_some();
        Self {
            timer: on("BARE_TIMER"),
            buffer: on("BARE_BUFFER"),
            timeout: on("BARE_TIMEOUT"),
        }
    }
}

fn listener(addr: SocketAddr) -> std::net::TcpListener {
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket.set_reuse_address(true).expect("reuseaddr");
    socket.set_reuse_port(true).expect("reuseport");
    socket.set_nonblocking(true).expect("nonblocking");
    socket.bind(&addr.into()).expect("bind");
    socket.listen(1024).expect("listen");
    socket.into()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen: SocketAddr = args
        .get(1)
        .expect("LISTEN")
        .parse()
        .expect("LISTEN address");
    let upstream: Uri = args
        .get(2)
        .expect("UPSTREAM")
        .parse()
        .expect("UPSTREAM url");
    let workers: usize = args.get(3).map_or(2, |w| w.parse().expect("WORKERS"));
    let switches = Switches::from_env();
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let listener = listener(listen);
            let upstream = upstream.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(serve(listener, upstream, switches));
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
}

async fn serve(listener: std::net::TcpListener, upstream: Uri, switches: Switches) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<
        HttpConnector,
        http_body_util::Either<Incoming, http_body_util::Full<bytes::Bytes>>,
    > = Client::builder(TokioExecutor::new())
        .http1_writev(false)
        .build(connector);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (client, upstream) = (client.clone(), upstream.clone());
                async move {
                    let (mut parts, body) = request.into_parts();
                    let body = if switches.buffer {
                        use http_body_util::BodyExt;
                        let bytes = body.collect().await.expect("body").to_bytes();
                        http_body_util::Either::Right(http_body_util::Full::new(bytes))
                    } else {
                        http_body_util::Either::Left(body)
                    };
                    let mut uri = upstream.into_parts();
                    uri.path_and_query = parts.uri.path_and_query().cloned();
                    parts.uri = Uri::from_parts(uri).expect("uri");
                    parts.headers.remove(http::header::HOST);
                    parts.headers.insert(
                        "SessKey",
                        HeaderValue::from_static("B9F24903C3BA4770AE303032303541303032353437"),
                    );
                    let sent = client.request(Request::from_parts(parts, body));
                    let result = if switches.timeout {
                        tokio::time::timeout(std::time::Duration::from_secs(30), sent)
                            .await
                            .expect("in time")
                    } else {
                        sent.await
                    };
                    let response = match result {
                        Ok(response) if switches.buffer => {
                            use http_body_util::BodyExt;
                            let (head, body) = response.into_parts();
                            let bytes = body.collect().await.expect("answer").to_bytes();
                            Response::from_parts(
                                head,
                                http_body_util::Either::Right(http_body_util::Either::Left(
                                    http_body_util::Full::new(bytes),
                                )),
                            )
                        }
                        Ok(response) => response.map(http_body_util::Either::Left),
                        Err(_) => Response::builder()
                            .status(502)
                            .body(http_body_util::Either::Right(
                                http_body_util::Either::Right(http_body_util::Empty::new()),
                            ))
                            .expect("502"),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.writev(false);
            if switches.timer {
                builder
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(30));
            }
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
