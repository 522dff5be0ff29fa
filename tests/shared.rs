//! The shared mode's tests, against a real `redis-server` each test starts for itself
//! (127.0.0.1, ephemeral port, no persistence). See `common::redis`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::redis::RedisServer;

#[test]
fn the_test_redis_is_real_private_and_forgets_everything() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    assert_eq!(redis.command(&["PING"]), "+PONG\r\n");
    assert_eq!(redis.command(&["SET", "payauth:probe", "1"]), "+OK\r\n");
    assert_eq!(redis.command(&["GET", "payauth:probe"]), "$1\r\n1\r\n");
    // No persistence: nothing is saved, and a restart starts empty.
    let save = redis.command(&["CONFIG", "GET", "save"]);
    assert!(save.ends_with("$0\r\n\r\n"), "{save:?}");
    let aof = redis.command(&["CONFIG", "GET", "appendonly"]);
    assert!(aof.contains("no"), "{aof:?}");
    let bind = redis.command(&["CONFIG", "GET", "bind"]);
    assert!(bind.contains("127.0.0.1"), "{bind:?}");
    let other = RedisServer::start().expect("a second one");
    assert_ne!(other.port(), redis.port(), "each test has its own");
    assert_eq!(other.command(&["GET", "payauth:probe"]), "$-1\r\n");
}

mod layers {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Request, StatusCode};
    use http_body_util::{BodyExt, Full};
    use payauth::config::SharedConfig;
    use payauth::guard::{GuardLimits, MemoryGuardStore};
    use payauth::metrics::GatewayMetrics;
    use payauth::number::{NumberAuthLayer, NumberConfig, NumberCredentials};
    use payauth::shared::RedisStore;
    use payauth_sim::number::{NumberSim, NumberSimConfig};
    use tower::util::BoxCloneSyncService;
    use tower::{Layer, ServiceExt};

    use super::common::redis::RedisServer;
    use super::common::{self, CARD, REST, TOKEN};

    type Number = BoxCloneSyncService<
        Request<Full<Bytes>>,
        http::Response<payauth::body::ResponseBody<hyper::body::Incoming>>,
        payauth::Error,
    >;

    fn shared(redis: &RedisServer) -> SharedConfig {
        SharedConfig {
            redis_url: redis.url(),
            username: None,
            password_file: None,
            ca_file: None,
            egress_id: "egress-test".into(),
            connect_timeout: Duration::from_millis(500),
            op_timeout: Duration::from_millis(250),
            key_poll: Duration::from_secs(1),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn creditguard_rejections_count_in_the_shared_budget() {
        use payauth::creditguard::{
            CreditGuardConfig, CreditGuardCredentials, CreditGuardSessionLayer,
        };
        use payauth_sim::creditguard::{CreditGuardSim, CreditGuardSimConfig};

        let Some(redis) = RedisServer::start() else {
            return;
        };
        let sim =
            CreditGuardSim::start(([127, 0, 0, 1], 0).into(), CreditGuardSimConfig::default())
                .await
                .expect("simulator");
        sim.set_password("the-password-was-changed-at-the-gateway");
        let replica = || {
            let store = Arc::new(RedisStore::new(&shared(&redis), None).expect("store"));
            let credentials = CreditGuardCredentials::new("merchant-user", "s3cret-Passw0rd");
            let mut config = CreditGuardConfig::new("creditguard", sim.url().parse().expect("uri"));
            config.terminals = vec!["0882819014".into()];
            let state = store
                .state(
                    "creditguard",
                    GuardLimits {
                        budget: 1,
                        proven_concurrency: config.session_fetch_concurrency,
                    },
                    credentials.fingerprint(),
                    Arc::new(MemoryGuardStore::default()),
                    Duration::from_secs(35),
                    GatewayMetrics::unregistered("creditguard"),
                )
                .expect("state");
            let layer = CreditGuardSessionLayer::builder(config, credentials)
                .credential_state(state)
                .build()
                .expect("layer");
            (layer.handle(), layer.layer(common::client()))
        };
        let deal = || {
            let xml = "<ashrait><request><version>2000</version><command>doDeal</command><doDeal>\
                <terminalNumber>0882819014</terminalNumber><validation>AutoComm</validation>\
                <transactionType>Debit</transactionType></doDeal></request></ashrait>";
            Request::post(sim.relay_url())
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(format!(
                    "user=app&password=app&int_in={xml}"
                ))))
                .expect("request")
        };
        let replicas: Vec<_> = (0..4).map(|_| replica()).collect();
        for _ in 0..3 {
            for (_, service) in &replicas {
                let answer = service.clone().oneshot(deal()).await;
                let error = answer.expect_err("no session with a rejected password");
                assert!(
                    matches!(
                        error.code(),
                        payauth::ErrorCode::AuthLocked | payauth::ErrorCode::AuthUnavailable
                    ),
                    "{error}"
                );
            }
        }
        assert_eq!(
            sim.stats().get_session_rejected,
            1,
            "one rejection for four replicas: {:?}",
            sim.stats()
        );
        for (handle, _) in &replicas {
            assert!(handle.guard().is_locked());
        }
        sim.shutdown().await;
    }

    /// One replica on a store given by its settings.
    fn replica_on(shared: &SharedConfig, sim: &NumberSim) -> Number {
        let store = Arc::new(RedisStore::new(shared, None).expect("store"));
        let credentials = NumberCredentials::new("EP9116875", TOKEN);
        let state = store
            .state(
                "number",
                GuardLimits::serial(1),
                credentials.fingerprint(),
                Arc::new(MemoryGuardStore::default()),
                Duration::from_secs(35),
                GatewayMetrics::unregistered("number"),
            )
            .expect("state");
        let config = NumberConfig::rest("number", sim.url().parse().expect("uri"));
        let layer = NumberAuthLayer::builder(config, credentials)
            .credential_state(state)
            .build()
            .expect("layer");
        BoxCloneSyncService::new(layer.layer(common::client()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_share_a_key_over_tls_and_refuse_an_untrusted_store() {
        let ca = payauth_sim::tls::SimCa::new("redis test CA").expect("ca");
        let server = ca
            .server_tls(&["localhost", "127.0.0.1"])
            .expect("server certificate");
        let Some(redis) =
            RedisServer::start_tls(&server.cert_chain_pem, &server.key_pem, ca.cert_pem())
        else {
            return;
        };
        let dir = tempfile::tempdir().expect("dir");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).expect("ca file");
        let sim = common::number_sim(NumberSimConfig::default()).await;
        let tls = SharedConfig {
            redis_url: format!("rediss://localhost:{}/0", redis.port()),
            ca_file: Some(ca_file),
            ..shared(&redis)
        };
        let replicas: Vec<Number> = (0..3).map(|_| replica_on(&tls, &sim)).collect();
        let ok = join_all(replicas.iter().map(|r| sale(r, &sim))).await;
        assert!(ok.iter().all(|ok| *ok), "{ok:?}");
        assert_eq!(sim.stats().auth_attempts, 1, "one key for three, over TLS");

        // The same store, not trusted (the system's CAs do not know the test CA): no
        // reservation, so no authentication, and the call fails.
        let untrusted = SharedConfig {
            ca_file: None,
            ..tls.clone()
        };
        let stranger = replica_on(&untrusted, &sim);
        assert!(!sale(&stranger, &sim).await);
        assert_eq!(sim.stats().auth_attempts, 1);
        sim.shutdown().await;
    }

    /// One replica: its own store connection, its own local record, its own client.
    fn replica(redis: &RedisServer, sim: &NumberSim) -> Number {
        replica_with_budget(redis, sim, 1)
    }

    fn replica_with_budget(redis: &RedisServer, sim: &NumberSim, budget: u32) -> Number {
        replica_and_handle(redis, sim, budget).0
    }

    fn replica_and_handle(
        redis: &RedisServer,
        sim: &NumberSim,
        budget: u32,
    ) -> (Number, payauth::number::NumberHandle) {
        let (number, handle, _) = replica_with_metrics(redis, sim, budget);
        (number, handle)
    }

    /// A replica whose metrics are on a registry of its own, handed back.
    fn replica_with_metrics(
        redis: &RedisServer,
        sim: &NumberSim,
        budget: u32,
    ) -> (Number, payauth::number::NumberHandle, prometheus::Registry) {
        let registry = prometheus::Registry::new();
        let metrics = payauth::metrics::Metrics::new(&registry)
            .expect("metrics")
            .gateway("number");
        let store = Arc::new(RedisStore::new(&shared(redis), None).expect("store"));
        let credentials = NumberCredentials::new("EP9116875", TOKEN);
        let state = store
            .state(
                "number",
                GuardLimits::serial(budget),
                credentials.fingerprint(),
                Arc::new(MemoryGuardStore::default()),
                Duration::from_secs(35),
                metrics.clone(),
            )
            .expect("state");
        let mut config = NumberConfig::rest("number", sim.url().parse().expect("uri"));
        config.gateway.auth_failure_budget = budget;
        let layer = NumberAuthLayer::builder(config, credentials)
            .credential_state(state)
            .metrics(metrics)
            .build()
            .expect("layer");
        let handle = layer.handle();
        (
            BoxCloneSyncService::new(layer.layer(common::client())),
            handle,
            registry,
        )
    }

    fn metric(registry: &prometheus::Registry, line_start: &str) -> Option<f64> {
        payauth::metrics::render(registry)
            .lines()
            .find_map(|l| l.strip_prefix(line_start))
            .and_then(|v| v.trim().parse().ok())
    }

    async fn sale(number: &Number, sim: &NumberSim) -> bool {
        let request = Request::post(format!("{}{REST}/CreditCardSale_Manual", sim.url()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(
                r#"{{"Amount": 1.00, "CardNum": "{CARD}", "CVV": "123"}}"#
            ))))
            .expect("request");
        let Ok(response) = number.clone().oneshot(request).await else {
            return false;
        };
        if response.status() != StatusCode::OK {
            return false;
        }
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let answer: serde_json::Value = serde_json::from_slice(&body).expect("json");
        answer["CreditCardSale_ManualResult"]["FunctionOk"] == true
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_sharing_a_store_authenticate_once_and_newcomers_not_at_all() {
        let Some(redis) = RedisServer::start() else {
            return;
        };
        let sim = common::number_sim(NumberSimConfig::default()).await;
        let replicas: Vec<Number> = (0..8).map(|_| replica(&redis, &sim)).collect();
        let sales = replicas.iter().map(|r| sale(r, &sim));
        let ok = join_all(sales).await;
        assert!(ok.iter().all(|ok| *ok), "{ok:?}");
        assert_eq!(sim.stats().auth_attempts, 1, "8 replicas, 1 authentication");

        // Scale-out: 3 more, then 7 more; each loads the current key.
        for n in [3, 7] {
            let newcomers: Vec<Number> = (0..n).map(|_| replica(&redis, &sim)).collect();
            let ok = join_all(newcomers.iter().map(|r| sale(r, &sim))).await;
            assert!(ok.iter().all(|ok| *ok), "{ok:?}");
        }
        assert_eq!(sim.stats().auth_attempts, 1, "newcomers adopt the key");

        // An expiry: the replicas that notice it renew once between them.
        sim.expire_keys();
        let ok = join_all(replicas.iter().map(|r| sale(r, &sim))).await;
        assert!(ok.iter().all(|ok| *ok), "{ok:?}");
        assert_eq!(sim.stats().auth_attempts, 2, "one renewal for all of them");
        // No secret in the store's key names, and the key only sealed.
        let keys = redis.command(&["KEYS", "*"]);
        assert!(keys.contains("payauth:egress-test:number:key"), "{keys}");
        assert!(!keys.contains(TOKEN), "{keys}");
        let stored = redis.command(&["HGETALL", "payauth:egress-test:number:key"]);
        for seen in sim.calls_seen() {
            if let Some(key) = seen.sess_key_header {
                assert!(!stored.contains(&key), "the key is stored sealed");
            }
        }
        sim.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frozen_store_keeps_the_key_in_hand_and_fails_renewals_fast() {
        let Some(redis) = RedisServer::start() else {
            return;
        };
        let sim = common::number_sim(NumberSimConfig::default()).await;
        let number = replica(&redis, &sim);
        assert!(sale(&number, &sim).await);
        assert_eq!(sim.stats().auth_attempts, 1);

        redis.pause();
        assert!(sale(&number, &sim).await, "the key in hand needs no store");
        sim.expire_keys();
        let started = std::time::Instant::now();
        let request = Request::post(format!("{}{REST}/CreditCardSale_Manual", sim.url()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("request");
        let error = number.clone().oneshot(request).await.expect_err("no key");
        let waited = started.elapsed();
        assert_eq!(error.code(), payauth::ErrorCode::AuthUnavailable, "{error}");
        assert!(error.message().contains("shared store"), "{error}");
        // The contract's bound for this case: a fast 503, never a hang.
        assert!(waited < Duration::from_secs(1), "{waited:?}");
        assert_eq!(
            sim.stats().auth_attempts,
            1,
            "no authentication without the store"
        );

        redis.resume();
        assert!(sale(&number, &sim).await, "service resumes");
        assert_eq!(
            sim.stats().auth_attempts,
            2,
            "with exactly one authentication"
        );
        sim.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_that_lost_its_data_fails_closed_until_an_operator_unlocks() {
        let Some(mut redis) = RedisServer::start() else {
            return;
        };
        let sim = common::number_sim(NumberSimConfig::default()).await;
        sim.set_token("A-TOKEN-PAYAUTH-DOES-NOT-HOLD");
        let (number, handle) = replica_and_handle(&redis, &sim, 2);
        assert!(!sale(&number, &sim).await);
        assert_eq!(sim.stats().auth_attempts, 1, "one rejection recorded");

        // The store restarts empty (no persistence). Other replicas may have spent the budget
        // since this one's copy: the record is seeded locked, and nothing is sent.
        redis.restart_empty();
        assert_eq!(redis.command(&["DBSIZE"]), ":0\r\n");
        for _ in 0..3 {
            assert!(!sale(&number, &sim).await);
        }
        assert_eq!(sim.stats().auth_attempts, 1, "{:?}", sim.stats());
        assert!(handle.guard().is_locked());
        let reason = handle.guard().status().record.reason.unwrap_or_default();
        assert!(reason.contains("lost the lockout record"), "{reason}");

        // An operator looks, and unlocks: authentication is allowed again (and refused again,
        // the token being wrong, up to the budget of 2).
        handle.guard().unlock().await.expect("unlock");
        for _ in 0..3 {
            assert!(!sale(&number, &sim).await);
        }
        assert_eq!(sim.stats().auth_attempts, 3, "{:?}", sim.stats());
        assert!(handle.guard().is_locked());
        sim.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unlock_through_one_replica_reaches_the_others() {
        let Some(redis) = RedisServer::start() else {
            return;
        };
        let sim = common::number_sim(NumberSimConfig::default()).await;
        let (a, a_handle, a_metrics) = replica_with_metrics(&redis, &sim, 1);
        let (b, b_handle, b_metrics) = replica_with_metrics(&redis, &sim, 1);
        sim.set_token("ROTATED-AT-THE-VENDOR");
        assert!(!sale(&a, &sim).await && !sale(&b, &sim).await);
        assert_eq!(sim.stats().auth_rejected, 1, "one rejection for both");
        assert!(a_handle.guard().is_locked() && b_handle.guard().is_locked());
        // The lock shows in each replica's metrics (the alert's input), and the one rejected
        // attempt in the metrics of the replica that sent it.
        let locked = "payauth_auth_locked{gateway=\"number\"} ";
        assert_eq!(metric(&a_metrics, locked), Some(1.0));
        assert_eq!(metric(&b_metrics, locked), Some(1.0));
        let rejected = "payauth_auth_attempts_total{gateway=\"number\",result=\"rejected\"} ";
        assert_eq!(metric(&a_metrics, rejected), Some(1.0));

        // The vendor's token is put back; an operator unlocks through replica a.
        sim.set_token(TOKEN);
        a_handle.guard().unlock().await.expect("unlock");
        assert!(b_handle.guard().is_locked(), "b has not looked yet");
        b_handle.refresh().await;
        assert!(!b_handle.guard().is_locked(), "b's poll sees the unlock");
        assert_eq!(metric(&b_metrics, locked), Some(0.0));
        assert!(sale(&b, &sim).await);
        assert_eq!(sim.stats().auth_success, 1);
        sim.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_learns_of_a_peers_new_key_before_the_gateway_refuses_its_own() {
        let Some(redis) = RedisServer::start() else {
            return;
        };
        let sim = common::number_sim(NumberSimConfig::default()).await;
        let (a, _) = replica_and_handle(&redis, &sim, 1);
        let (b, b_handle) = replica_and_handle(&redis, &sim, 1);
        assert!(sale(&a, &sim).await && sale(&b, &sim).await);
        assert!(!b_handle.refresh().await, "nothing newer yet");
        sim.expire_keys();
        assert!(sale(&a, &sim).await, "a renews");
        let refused = sim.stats().calls_5030;
        assert!(b_handle.refresh().await, "b takes a's new key");
        assert_eq!(b_handle.key().map(|k| k.generation), Some(2));
        assert!(sale(&b, &sim).await);
        assert_eq!(
            sim.stats().calls_5030,
            refused,
            "b's call was not refused first"
        );
        assert_eq!(sim.stats().auth_attempts, 2);
        sim.shutdown().await;
    }

    /// Polls every future until all are done (no futures crate needed).
    async fn join_all<F: std::future::Future<Output = bool>>(
        futures: impl IntoIterator<Item = F>,
    ) -> Vec<bool> {
        let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
        let mut results = vec![None; pinned.len()];
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (i, f) in pinned.iter_mut().enumerate() {
                if results[i].is_none() {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => results[i] = Some(v),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        results.into_iter().map(|r| r.unwrap_or(false)).collect()
    }
}

mod processes {
    use std::net::{SocketAddr, TcpListener};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Request, StatusCode};
    use http_body_util::Full;
    use payauth_sim::number::{NumberSim, NumberSimConfig};
    use tokio::task::JoinSet;

    use super::common::redis::RedisServer;
    use super::common::{self, approved, send, CARD, REST, TOKEN};

    /// A `payauth run` process, killed on drop.
    struct Payauth {
        child: Child,
        gateway: SocketAddr,
        admin: SocketAddr,
    }

    impl Drop for Payauth {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_addr() -> SocketAddr {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
    }

    /// Starts one replica: its own state dir, the shared store, the same token.
    async fn replica(dir: &Path, n: usize, redis: &RedisServer, sim: &NumberSim) -> Payauth {
        replica_with(dir, n, redis, sim, "").await
    }

    /// [`replica`], with `more` (TOML lines) added to its gateway.
    async fn replica_with(
        dir: &Path,
        n: usize,
        redis: &RedisServer,
        sim: &NumberSim,
        more: &str,
    ) -> Payauth {
        let (gateway, admin) = (free_addr(), free_addr());
        let state = dir.join(format!("state-{n}"));
        let token = dir.join("token");
        std::fs::write(&token, TOKEN).expect("token");
        let config = dir.join(format!("payauth-{n}.toml"));
        std::fs::write(
            &config,
            format!(
                "[admin]\nlisten = \"{admin}\"\n[state]\ndir = {state:?}\n\
                 [shared]\nredis_url = \"{}\"\negress_id = \"egress-test\"\n\
                 [[gateway]]\nname = \"number\"\nkind = \"number\"\nlisten = \"{gateway}\"\n\
                 upstream = \"{}\"\naccount_code = \"EP9116875\"\ntoken_file = {token:?}\n{more}\n",
                redis.url(),
                sim.url()
            ),
        )
        .expect("config");
        let child = Command::new(env!("CARGO_BIN_EXE_payauth"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("payauth runs");
        let process = Payauth {
            child,
            gateway,
            admin,
        };
        let client = common::client();
        let live = || async {
            let request = Request::get(format!("http://{}/live", process.admin))
                .body(Full::new(Bytes::new()))
                .expect("request");
            client.request(request).await.is_ok()
        };
        assert!(
            common::eventually_async(Duration::from_secs(20), live).await,
            "payauth {n} started"
        );
        process
    }

    fn sale(addr: SocketAddr) -> Request<Full<Bytes>> {
        Request::post(format!("http://{addr}{REST}/CreditCardSale_Manual"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(
                r#"{{"Amount": 1.00, "CardNum": "{CARD}", "CVV": "123"}}"#
            ))))
            .expect("request")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rejected_token_spends_one_budget_across_five_processes_and_restarts() {
        let Some(redis) = RedisServer::start() else {
            return;
        };
        let sim = common::number_sim(NumberSimConfig::default()).await;
        sim.set_token("THE-VENDOR-REVOKED-PAYAUTHS-TOKEN");
        let dir = tempfile::tempdir().expect("dir");
        let client = common::client();
        for round in 0..2 {
            let mut replicas = Vec::new();
            for n in 0..5 {
                replicas.push(replica(dir.path(), n, &redis, &sim).await);
            }
            for _ in 0..3 {
                for p in &replicas {
                    let reply = send(&client, sale(p.gateway)).await;
                    assert_eq!(
                        reply.status,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "{}",
                        reply.text()
                    );
                }
            }
            for (n, p) in replicas.iter().enumerate() {
                let reply = send(&client, sale(p.gateway)).await;
                assert_eq!(
                    reply.error_code().as_deref(),
                    Some("auth_locked"),
                    "round {round}, replica {n}: {}",
                    reply.text()
                );
            }
            // Every process stops (the next round starts them again on the same state dirs).
            drop(replicas);
        }
        assert_eq!(
            sim.stats().auth_rejected,
            1,
            "the budget of 1 is spent once for all processes and restarts"
        );
        sim.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_processes_renew_once_for_300_calls_across_an_expiry() {
        let Some(redis) = RedisServer::start() else {
            return;
        };
        let sim = common::number_sim(NumberSimConfig::default()).await;
        let dir = tempfile::tempdir().expect("dir");
        let mut replicas = Vec::new();
        for n in 0..3 {
            replicas.push(replica(dir.path(), n, &redis, &sim).await);
        }
        let client = common::client();
        for p in &replicas {
            let reply = send(&client, sale(p.gateway)).await;
            assert!(
                approved(&reply, "CreditCardSale_Manual"),
                "{}",
                reply.text()
            );
        }
        assert_eq!(sim.stats().auth_attempts, 1, "three processes, one key");

        sim.expire_keys();
        let mut calls = JoinSet::new();
        for i in 0..300 {
            let (client, addr) = (client.clone(), replicas[i % 3].gateway);
            calls.spawn(async move { send(&client, sale(addr)).await });
        }
        let mut ok = 0;
        while let Some(reply) = calls.join_next().await {
            let reply = reply.expect("task");
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            if approved(&reply, "CreditCardSale_Manual") {
                ok += 1;
            }
        }
        assert_eq!(ok, 300);
        assert_eq!(
            sim.stats().auth_attempts,
            2,
            "one renewal across the three processes"
        );
        for p in &replicas {
            let request = Request::get(format!("http://{}/metrics", p.admin))
                .body(Full::new(Bytes::new()))
                .expect("request");
            let metrics = send(&client, request).await.text();
            assert!(
                metrics.contains("payauth_shared_store_up{gateway=\"number\"} 1"),
                "{metrics}"
            );
        }
        drop(replicas);
        sim.shutdown().await;
    }

    /// Split egress: two replicas share one key through the store but leave through two
    /// addresses (127.0.0.2 and 127.0.0.3), against a gateway that binds each key to the address
    /// that authenticated. Each renewal kills the other's key. Over 10 s of calls to both, the
    /// renewal brake keeps the authentications bounded (2 per replica unbraked, then one per
    /// backoff of 1, 2, 4 s ...: at most 6 each here, 12 in all), and the replicas that saw it
    /// long enough say so: `payauth_split_egress` 1 and `/status`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn split_egress_is_braked_and_reported() {
        let Some(redis) = RedisServer::start() else {
            return;
        };
        let sim = common::number_sim(NumberSimConfig {
            bind_keys_to_caller: true,
            ..NumberSimConfig::default()
        })
        .await;
        let dir = tempfile::tempdir().expect("dir");
        let a = replica_with(
            dir.path(),
            0,
            &redis,
            &sim,
            "source_address = \"127.0.0.2\"",
        )
        .await;
        let b = replica_with(
            dir.path(),
            1,
            &redis,
            &sim,
            "source_address = \"127.0.0.3\"",
        )
        .await;
        let client = common::client();
        let started = tokio::time::Instant::now();
        let (mut ok, mut braked) = (0, 0);
        // Bounded: at most 200 rounds, 10 s.
        for _ in 0..200 {
            if started.elapsed() > Duration::from_secs(10) {
                break;
            }
            for p in [&a, &b] {
                let reply = send(&client, sale(p.gateway)).await;
                if approved(&reply, "CreditCardSale_Manual") {
                    ok += 1;
                } else if reply.error_code().as_deref() == Some("auth_unavailable") {
                    braked += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stats = sim.stats();
        eprintln!(
            "split egress: {ok} approved, {braked} braked, {} authentications, {} refused 5050",
            stats.auth_attempts, stats.calls_5050
        );
        assert!(stats.calls_5050 > 0, "the keys were refused: {stats:?}");
        assert!(
            stats.auth_attempts <= 12,
            "the authentications stay bounded: {stats:?}"
        );
        assert!(ok > 0 && braked > 0, "ok {ok}, braked {braked}");
        let mut reported = 0;
        for p in [&a, &b] {
            let metrics = send(
                &client,
                Request::get(format!("http://{}/metrics", p.admin))
                    .body(Full::new(Bytes::new()))
                    .expect("request"),
            )
            .await
            .text();
            let status = send(
                &client,
                Request::get(format!("http://{}/status", p.admin))
                    .body(Full::new(Bytes::new()))
                    .expect("request"),
            )
            .await
            .json();
            let split = metrics.contains("payauth_split_egress{gateway=\"number\"} 1");
            assert_eq!(
                status["gateways"][0]["split_egress"].as_bool(),
                Some(split),
                "the metric and /status agree"
            );
            reported += usize::from(split);
        }
        assert!(reported >= 1, "split egress reported ({stats:?})");
    }
}
