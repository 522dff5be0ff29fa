//! `payauth run` as a process, its stderr a pipe: no colour codes in the text logs, the request
//! ids of two runs never collide, and a W3C trace id reaches the access line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
use payauth_sim::number::NumberSimConfig;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs `payauth run` against `upstream`, makes `calls` sales, stops it; returns the request
/// ids the answers carried and everything it wrote to stderr.
async fn run_once(upstream: &str, calls: usize) -> (Vec<String>, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::write(root.join("token"), TOKEN).expect("token");
    let (port, admin) = (free_port(), free_port());
    let config = root.join("payauth.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[state]\ndir = \"{state}\"\n[proxy]\nworkers = 2\n\
             [[gateway]]\nname = \"number\"\nkind = \"number\"\nlisten = \"127.0.0.1:{port}\"\n\
             upstream = \"{upstream}\"\nprotocol = \"rest\"\naccount_code = \"EP9116875\"\n\
             token_file = \"{token}\"\n",
            state = root.join("state").display(),
            token = root.join("token").display(),
        ),
    )
    .expect("config");
    let child = Command::new(env!("CARGO_BIN_EXE_payauth"))
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .env_remove("PAYAUTH_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("payauth runs");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let up = eventually(Duration::from_secs(20), || {
        std::net::TcpStream::connect(addr).is_ok()
    })
    .await;
    let client = client();
    let mut ids = Vec::new();
    if up {
        for _ in 0..calls {
            let reply = sale(&client, addr).await;
            assert!(
                approved(&reply, "CreditCardSale_Manual"),
                "{}",
                reply.text()
            );
            ids.push(
                reply.headers["x-request-id"]
                    .to_str()
                    .expect("text id")
                    .to_owned(),
            );
        }
        // One call traced, one with a malformed traceparent (dropped, not logged).
        for traceparent in [TRACEPARENT, "00-not-a-trace-01"] {
            let reply = post_with(
                &client,
                addr,
                &format!("{REST}/CreditCardSale_Manual"),
                r#"{"Amount": 1.00}"#,
                &[("traceparent", traceparent)],
            )
            .await;
            assert!(
                approved(&reply, "CreditCardSale_Manual"),
                "{}",
                reply.text()
            );
        }
    }
    let mut child = child;
    let _ = child.kill();
    let output = child.wait_with_output().expect("payauth's output");
    assert!(
        up,
        "payauth did not listen; it said:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (ids, output.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_text_logs_have_no_colour_codes_and_two_runs_never_share_a_request_id() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let (first, first_log) = run_once(&sim.url(), 20).await;
    let (second, second_log) = run_once(&sim.url(), 20).await;
    for log in [&first_log, &second_log] {
        let text = String::from_utf8_lossy(log);
        let traced: Vec<&str> = text.lines().filter(|l| l.contains("trace_id=")).collect();
        assert_eq!(traced.len(), 1, "one traced call:\n{text}");
        assert!(
            traced[0].contains("trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\""),
            "{}",
            traced[0]
        );
        assert!(
            text.contains("payauth::access"),
            "the access lines are there:\n{text}"
        );
        assert!(
            !log.contains(&0x1b),
            "an escape character in piped logs:\n{text}"
        );
    }
    let first: HashSet<_> = first.into_iter().collect();
    let second: HashSet<_> = second.into_iter().collect();
    assert_eq!(
        (first.len(), second.len()),
        (20, 20),
        "ids within a run are distinct"
    );
    assert!(
        first.is_disjoint(&second),
        "two runs shared request ids: {:?}",
        first.intersection(&second).collect::<Vec<_>>()
    );
    sim.shutdown().await;
}
