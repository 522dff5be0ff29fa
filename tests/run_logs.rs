//! `payauth run` as a process, its stderr a pipe: no colour codes in the text logs, the request
//! ids of two runs never collide, a W3C trace id reaches the access line, and the workers'
//! gathered lines are written when a worker goes idle and, all of them, when payauth stops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::process::Running;
use common::*;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
use payauth_sim::number::NumberSimConfig;

/// Runs `payauth run` against `upstream`, makes `calls` sales, stops it; returns the request
/// ids the answers carried and everything it wrote to stderr.
async fn run_once(upstream: &str, calls: usize) -> (Vec<String>, Vec<u8>) {
    let mut running = Running::start(upstream).await;
    let addr = running.addr;
    let client = client();
    let mut ids = Vec::new();
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
    let mut lines = running.read();
    lines.extend(running.stop_and_read());
    let mut log = lines.join("\n").into_bytes();
    log.push(b'\n');
    (ids, log)
}

/// The access line's request id.
fn request_id_of(line: &str) -> Option<&str> {
    let rest = &line[line.find(" request_id=\"")? + " request_id=\"".len()..];
    rest.split('"').next()
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

/// The workers gather their log lines and write them when they go idle: a quiet worker's line
/// is there at once, while payauth still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_workers_access_line_is_written_at_once() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let mut running = Running::start(&sim.url()).await;
    let client = client();
    for _ in 0..3 {
        let reply = sale(&client, running.addr).await;
        assert!(approved(&reply, "CreditCardSale_Manual"));
        let id = reply.headers["x-request-id"]
            .to_str()
            .expect("text id")
            .to_owned();
        let mut seen = Vec::new();
        let written = eventually(Duration::from_secs(5), || {
            seen.extend(running.read());
            seen.iter()
                .any(|l| l.contains("payauth::access") && request_id_of(l) == Some(&id))
        })
        .await;
        assert!(
            written,
            "the access line of {id} was not written while payauth ran idle:\n{}",
            seen.join("\n")
        );
        assert!(
            running.child.try_wait().expect("status").is_none(),
            "still running"
        );
    }
    running.stop_and_read();
    sim.shutdown().await;
}

/// Many calls at once, so that the workers write their lines in batches: after SIGTERM every
/// call has its one access line, whole (lines of the two workers never run into each other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_run_has_written_one_whole_access_line_per_call() {
    const CALLS: usize = 600;
    let sim = number_sim(NumberSimConfig::default()).await;
    let mut running = Running::start(&sim.url()).await;
    let client = client();
    let addr = running.addr;
    let mut calls = tokio::task::JoinSet::new();
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(48));
    for _ in 0..CALLS {
        let (client, permits) = (client.clone(), std::sync::Arc::clone(&permits));
        calls.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("permits");
            let reply = sale(&client, addr).await;
            assert!(
                approved(&reply, "CreditCardSale_Manual"),
                "{}",
                reply.text()
            );
            reply.headers["x-request-id"]
                .to_str()
                .expect("text id")
                .to_owned()
        });
    }
    let mut ids = HashSet::new();
    while let Some(id) = calls.join_next().await {
        ids.insert(id.expect("a call"));
    }
    assert_eq!(ids.len(), CALLS, "distinct request ids");
    let mut lines = running.read();
    lines.extend(running.stop_and_read());
    let access: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("payauth::access"))
        .collect();
    for line in &access {
        // A whole line: one timestamp at its start, one of each field, nothing after the last.
        assert_eq!(line.matches("payauth::access").count(), 1, "{line}");
        assert_eq!(line.matches(" request_id=").count(), 1, "{line}");
        assert!(
            line.starts_with("20"),
            "a line that does not start with its time: {line}"
        );
        assert!(line.ends_with('"'), "a line cut short: {line}");
    }
    let logged: HashSet<&str> = access.iter().filter_map(|l| request_id_of(l)).collect();
    assert_eq!(access.len(), CALLS, "one access line per call");
    assert_eq!(logged.len(), CALLS);
    assert!(
        ids.iter().all(|id| logged.contains(id.as_str())),
        "every call's id is in the log"
    );
    assert!(
        lines.iter().any(|l| l.contains("stopped")),
        "the stop is logged after the calls:\n{}",
        lines[lines.len().saturating_sub(5)..].join("\n")
    );
    sim.shutdown().await;
}
