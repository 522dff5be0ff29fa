//! payauth's upstream client against a raw HTTP/1.1 peer on 127.0.0.1 that counts what reaches
//! it: connections are reused only after an answer was read to the end, a request is never
//! written twice, and a failure says whether anything was sent.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use payauth::UpstreamClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

/// How the peer treats each request it reads.
#[derive(Clone, Copy)]
enum Peer {
    /// Answers with a keep-alive answer of `len` bytes.
    Answer { len: usize },
    /// Answers, then closes the connection (without saying so in the answer).
    AnswerThenClose,
    /// Reads the request and closes without answering.
    Vanish,
}

#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: AtomicUsize,
}

async fn peer(behaviour: Peer) -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let counts = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counts.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, behaviour, Arc::clone(&counts)));
        }
    });
    (url, seen)
}

async fn serve(mut stream: TcpStream, behaviour: Peer, seen: Arc<Seen>) {
    let mut buffer = Vec::new();
    loop {
        // One request: a head, then its Content-Length's worth of body.
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        buffer.drain(..head_end + length);
        seen.requests.fetch_add(1, Ordering::SeqCst);
        assert!(
            head.contains("\r\nhost: 127.0.0.1:"),
            "no Host header: {head}"
        );
        assert!(
            head.starts_with("post /pay?x=1 http/1.1"),
            "not origin-form: {head}"
        );
        let len = match behaviour {
            Peer::Vanish => return,
            Peer::Answer { len } => len,
            Peer::AnswerThenClose => 2,
        };
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n{}",
            "x".repeat(len)
        );
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        if matches!(behaviour, Peer::AnswerThenClose) {
            return;
        }
    }
}

fn sale(url: &str) -> Request<Full<Bytes>> {
    Request::post(format!("{url}/pay?x=1"))
        .body(Full::new(Bytes::from_static(b"{\"Amount\":1}")))
        .unwrap()
}

fn client() -> UpstreamClient {
    UpstreamClient::new(&payauth::TlsFiles::default(), Duration::from_secs(2)).unwrap()
}

async fn call_and_read(client: &UpstreamClient, url: &str) -> Bytes {
    let response = client.clone().oneshot(sale(url)).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap().to_bytes()
}

/// Waits (bounded) until the peer has seen `n` requests.
async fn requests_reach(seen: &Seen, n: usize) {
    for _ in 0..400 {
        if seen.requests.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "the peer saw {} requests, not {n}",
        seen.requests.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn answers_read_to_the_end_leave_their_connection_for_the_next_call() {
    let (url, seen) = peer(Peer::Answer { len: 300 }).await;
    let client = client();
    for _ in 0..5 {
        assert_eq!(call_and_read(&client, &url).await.len(), 300);
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 5);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_fork_has_connections_of_its_own() {
    let (url, seen) = peer(Peer::Answer { len: 3 }).await;
    let client = client();
    let fork = client.fork();
    call_and_read(&client, &url).await;
    call_and_read(&fork, &url).await;
    call_and_read(&client, &url).await;
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_answer_dropped_half_read_takes_its_connection_with_it() {
    // Larger than one read, so that dropping the response leaves body bytes on the wire.
    let (url, seen) = peer(Peer::Answer { len: 200_000 }).await;
    let client = client();
    let response = client.clone().oneshot(sale(&url)).await.unwrap();
    drop(response);
    assert_eq!(call_and_read(&client, &url).await.len(), 200_000);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_the_peer_closed_is_not_written_to() {
    let (url, seen) = peer(Peer::AnswerThenClose).await;
    let client = client();
    call_and_read(&client, &url).await;
    // The peer's close reaches the client's connection task before the next call.
    tokio::time::sleep(Duration::from_millis(50)).await;
    call_and_read(&client, &url).await;
    assert_eq!(seen.requests.load(Ordering::SeqCst), 2);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_idle_past_its_timeout_is_not_reused() {
    let (url, seen) = peer(Peer::Answer { len: 3 }).await;
    let client = client();
    call_and_read(&client, &url).await;
    tokio::time::pause();
    tokio::time::advance(payauth::proxy::pool::IDLE_TIMEOUT + Duration::from_secs(1)).await;
    tokio::time::resume();
    call_and_read(&client, &url).await;
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
    // Within the timeout it is.
    call_and_read(&client, &url).await;
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error_nothing_sent() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let error = client().oneshot(sale(&url)).await.unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    assert_eq!(
        payauth::forward::classify(&error),
        payauth::forward::Failure::NotSent
    );
}

#[tokio::test]
async fn a_peer_that_vanishes_after_the_request_is_an_unknown_outcome_and_no_retry() {
    let (url, seen) = peer(Peer::Vanish).await;
    let error = client().oneshot(sale(&url)).await.unwrap_err();
    assert!(!error.is_connect(), "{error:?}");
    assert_eq!(
        payauth::forward::classify(&error),
        payauth::forward::Failure::Unknown
    );
    requests_reach(&seen, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(seen.requests.load(Ordering::SeqCst), 1);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_idle_list_is_bounded() {
    // More calls at once than the bound: afterwards at most MAX_IDLE connections are reused.
    let (url, seen) = peer(Peer::Answer { len: 3 }).await;
    let client = client();
    let extra = 8;
    let burst = payauth::proxy::pool::MAX_IDLE + extra;
    let calls: Vec<_> = (0..burst)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let response = client.oneshot(sale(&url)).await.unwrap();
                // Held until every call has its answer, so that none reuses another's connection.
                response
            })
        })
        .collect();
    let mut responses = Vec::new();
    for call in calls {
        responses.push(call.await.unwrap());
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), burst);
    for response in responses {
        response.into_body().collect().await.unwrap();
    }
    let again: Vec<_> = (0..burst)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { client.oneshot(sale(&url)).await.unwrap() })
        })
        .collect();
    for call in again {
        call.await.unwrap();
    }
    // The second burst found MAX_IDLE connections idle and opened the rest.
    assert_eq!(seen.connections.load(Ordering::SeqCst), burst + extra);
}
