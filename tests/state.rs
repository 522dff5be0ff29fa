//! A credential state written outside payauth: `CredentialState` and `Ledger` implemented here,
//! from scratch (attempts made with `Attempt::new`), drive a Number layer against the simulator.

// `Mutex::lock` is disallowed in favour of payauth's crate-private helper; a test may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use payauth::gateway::state::{Begun, CredentialState, Ledger, StateFuture};
use payauth::guard::{Attempt, AttemptOutcome, Fingerprint, GuardRecord, GuardStatus, Refusal};
use payauth::number::{NumberAuthLayer, NumberConfig, NumberCredentials};
use payauth_sim::number::NumberSimConfig;
use tower::{Layer, ServiceExt};

/// What the store saw, in order, and what it holds.
#[derive(Debug, Default)]
struct Book {
    events: Vec<String>,
    fingerprint: Option<Fingerprint>,
    generation: u64,
    locked: bool,
    in_flight: u32,
}

/// The ledger attempts settle in: the same book.
#[derive(Debug)]
struct BookLedger(Arc<Mutex<Book>>);

impl Ledger for BookLedger {
    fn gateway(&self) -> &str {
        "number"
    }

    fn settle(&self, _fingerprint: Fingerprint, outcome: AttemptOutcome) -> StateFuture<'_, ()> {
        let mut book = self.0.lock().unwrap();
        book.in_flight -= 1;
        book.events.push(format!("settle {outcome:?}"));
        // This store's own rule: one rejection locks.
        if outcome == AttemptOutcome::Rejected {
            book.locked = true;
        }
        Box::pin(async {})
    }

    fn abandon(&self, _fingerprint: Fingerprint) {
        let mut book = self.0.lock().unwrap();
        book.in_flight -= 1;
        book.events.push("abandon".into());
    }
}

#[derive(Debug)]
struct BookState {
    book: Arc<Mutex<Book>>,
    ledger: Arc<BookLedger>,
}

impl BookState {
    fn new() -> Arc<Self> {
        let book = Arc::new(Mutex::new(Book::default()));
        Arc::new(Self {
            ledger: Arc::new(BookLedger(Arc::clone(&book))),
            book,
        })
    }

    fn events(&self) -> Vec<String> {
        self.book.lock().unwrap().events.clone()
    }
}

impl CredentialState for BookState {
    fn gateway(&self) -> &str {
        "number"
    }

    fn begin(&self, _seen: Option<u64>) -> StateFuture<'_, Result<Begun, Refusal>> {
        let mut book = self.book.lock().unwrap();
        let result = if book.locked {
            book.events.push("refused".into());
            Err(Refusal::Locked("locked by the test's store".into()))
        } else {
            book.in_flight += 1;
            book.events.push("begin".into());
            let fingerprint = book
                .fingerprint
                .expect("credentials set before any attempt");
            let ledger: Arc<dyn Ledger> = self.ledger.clone();
            Ok(Begun::Attempt(Attempt::new(ledger, fingerprint)))
        };
        Box::pin(async move { result })
    }

    fn publish(&self, sealed: Vec<u8>) -> StateFuture<'_, std::io::Result<u64>> {
        let mut book = self.book.lock().unwrap();
        assert!(!sealed.is_empty(), "a sealed key is published");
        book.generation += 1;
        let generation = book.generation;
        book.events.push(format!("publish {generation}"));
        Box::pin(async move { Ok(generation) })
    }

    fn change_credentials(&self, fingerprint: Fingerprint) {
        let mut book = self.book.lock().unwrap();
        book.fingerprint = Some(fingerprint);
        book.events.push("credentials".into());
    }

    fn unlock(&self) -> StateFuture<'_, std::io::Result<()>> {
        self.book.lock().unwrap().locked = false;
        Box::pin(async { Ok(()) })
    }

    fn clear_backoff(&self) {}

    fn is_locked(&self) -> bool {
        self.book.lock().unwrap().locked
    }

    fn status(&self) -> GuardStatus {
        let book = self.book.lock().unwrap();
        GuardStatus {
            record: GuardRecord {
                locked: book.locked,
                ..GuardRecord::default()
            },
            in_flight: book.in_flight,
            backoff: None,
        }
    }

    fn wait_idle(&self, _limit: Duration) -> StateFuture<'_, ()> {
        Box::pin(async {})
    }
}

fn sale(base: &str) -> Request<Full<Bytes>> {
    Request::post(format!("{base}{REST}/CreditCardSale_Manual"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            r#"{{"Amount": 1.00, "CardNum": "{CARD}", "CVV": "123"}}"#
        ))))
        .expect("request")
}

#[tokio::test]
async fn a_state_of_the_users_own_records_and_settles_every_attempt() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let state = BookState::new();
    let config = NumberConfig::rest("number", sim.url().parse().expect("uri"));
    let layer = NumberAuthLayer::builder(config, NumberCredentials::new("EP9116875", TOKEN))
        .credential_state(state.clone())
        .build()
        .expect("layer");
    let number = layer.layer(common::client());
    for _ in 0..2 {
        let answer = number
            .clone()
            .oneshot(sale(&sim.url()))
            .await
            .expect("answer");
        assert_eq!(answer.status(), StatusCode::OK);
    }
    // Switched to the credentials on build, one attempt reserved, its key published, settled.
    assert_eq!(
        state.events(),
        ["credentials", "begin", "publish 1", "settle Success"]
    );
    assert_eq!(layer.handle().key().map(|k| k.generation), Some(1));
    assert_eq!(sim.stats().auth_attempts, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_state_of_the_users_own_that_locks_stops_every_authentication() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let state = BookState::new();
    let config = NumberConfig::rest("number", sim.url().parse().expect("uri"));
    let wrong = NumberCredentials::new("EP9116875", "0000000000000000000000000000000F");
    let layer = NumberAuthLayer::builder(config, wrong)
        .credential_state(state.clone())
        .build()
        .expect("layer");
    let number = layer.layer(common::client());
    let first = number.clone().oneshot(sale(&sim.url())).await;
    assert_eq!(first.expect_err("rejected").code().as_str(), "auth_locked");
    let second = number.clone().oneshot(sale(&sim.url())).await;
    assert_eq!(second.expect_err("locked").code().as_str(), "auth_locked");
    assert_eq!(
        state.events(),
        ["credentials", "begin", "settle Rejected", "refused"]
    );
    assert_eq!(sim.stats().auth_attempts, 1, "nothing sent once locked");
    assert_eq!(sim.stats().calls_ok, 0);
    sim.shutdown().await;
}
