//! Black-box tests of the Number gateway simulator, spoken to over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use payauth_sim::number::{NumberSim, NumberSimConfig, NumberSimStats};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ACCT: &str = "EP9116875";
const TOKEN: &str = "2148B239CF6846BDA5D141BF4A4CFBE8";
const REST: &str = "/APIcardProcREST/v1.0.0";
const SOAP: &str = "/APIcardProcR119/CardProcAPI.svc";
const SECRET: &str = "7D55DBB3D691C9E0FDF341E4AB38C3C9";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn start(config: NumberSimConfig) -> NumberSim {
    NumberSim::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap()
}

struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }
}

async fn send(
    client: &HttpClient,
    method: Method,
    url: String,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Answer, hyper_util::client::legacy::Error> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(body.into())).unwrap())
        .await?;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok(Answer { status, body })
}

async fn rest_auth(client: &HttpClient, sim: &NumberSim, acct: &str, token: &str) -> Value {
    let body = json!({"AcctCode": acct, "Token": token}).to_string();
    let answer = send(
        client,
        Method::POST,
        format!("{}{REST}/Authenticate", sim.url()),
        &[
            ("content-type", "application/json"),
            ("accept", "application/json"),
        ],
        body,
    )
    .await
    .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    answer.json()["AuthenticateResult"].clone()
}

async fn rest_key(client: &HttpClient, sim: &NumberSim) -> String {
    let result = rest_auth(client, sim, ACCT, TOKEN).await;
    assert_eq!(result["AuthSuccess"], true, "{result}");
    result["SessKey"].as_str().unwrap().to_owned()
}

async fn rest_call(
    client: &HttpClient,
    sim: &NumberSim,
    method: &str,
    sess_key: Option<&str>,
    body: &str,
) -> Result<Value, hyper_util::client::legacy::Error> {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(k) = sess_key {
        headers.push(("SessKey", k));
    }
    let answer = send(
        client,
        Method::POST,
        format!("{}{REST}/{method}", sim.url()),
        &headers,
        body.to_owned(),
    )
    .await?;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let mut v = answer.json();
    Ok(v[format!("{method}Result")].take())
}

fn sign(key: &str, secret: &str, epoch: u64, user_id: u64) -> String {
    let signed = format!("{key}_{epoch}_{user_id}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signed.as_bytes());
    let hash: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    format!("{signed}_{hash}")
}

fn now_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn signing_helper_matches_the_vendor_vector() {
    assert_eq!(
        sign(
            "9B9175EF556E4DDA93303132323141303035383339",
            SECRET,
            1_702_565_789,
            123
        ),
        "9B9175EF556E4DDA93303132323141303035383339_1702565789_123_1BD0C45A1DCBC7F9D0730FDD6222A45E10FCC7D9E84557499B812B138D0B7149"
    );
}

#[tokio::test]
async fn rest_authenticate_and_call() {
    let sim = start(NumberSimConfig::default()).await;
    let c = client();
    let result = rest_auth(&c, &sim, ACCT, TOKEN).await;
    assert_eq!(result["AuthSuccess"], true);
    assert_eq!(result["FunctionOk"], true);
    assert_eq!(result["ErrCode"], 0);
    assert_eq!(result["ErrMsg"], "");
    assert_eq!(result["ThisUser"]["ID"], 2547);
    assert_eq!(result["ThisUser"]["AccountCode"], ACCT);
    assert!(result["MerchantList"].as_array().unwrap().len() == 1);
    let resp_msg = result["RespMsg"].as_str().unwrap();
    assert!(resp_msg.starts_with("SessKey Expires|"), "{resp_msg}");
    assert!(
        resp_msg.ends_with(" AM") || resp_msg.ends_with(" PM"),
        "{resp_msg}"
    );
    let key = result["SessKey"].as_str().unwrap().to_owned();
    assert_eq!(key.len(), 42);
    assert!(key
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)));

    let body = r#"{"ccCardInfo":{"AccountNumber":"4111111111111111"},"Amount":1.5}"#;
    let r = rest_call(&c, &sim, "CreditCardSale_Manual", Some(&key), body)
        .await
        .unwrap();
    assert_eq!(r["FunctionOk"], true, "{r}");
    assert_eq!(r["ErrCode"], 0);
    assert_eq!(r["RespMsg"], "Approved");
    assert_eq!(r["Echo"], serde_json::from_str::<Value>(body).unwrap());
    let tx1 = r["TxID"].as_u64().unwrap();

    // Not JSON: still approved, echo null; TxIDs increase.
    let r = rest_call(&c, &sim, "Transaction_Query", Some(&key), "not json")
        .await
        .unwrap();
    assert_eq!(r["FunctionOk"], true);
    assert_eq!(r["Echo"], Value::Null);
    assert_eq!(r["TxID"].as_u64().unwrap(), tx1 + 1);

    // Missing and unknown keys.
    for k in [
        None,
        Some(""),
        Some("B9F24903C3BA4770AE303032303541303032353437"),
    ] {
        let r = rest_call(&c, &sim, "CreditCardSale_Manual", k, "{}")
            .await
            .unwrap();
        assert_eq!(r["FunctionOk"], false);
        assert_eq!(r["ErrCode"], 5010);
        assert_eq!(r["ErrMsg"], "Invalid Session Key");
    }

    assert_eq!(
        sim.stats(),
        NumberSimStats {
            auth_attempts: 1,
            auth_success: 1,
            keys_issued: 1,
            calls: 5,
            calls_ok: 2,
            calls_unauthenticated: 3,
            ..NumberSimStats::default()
        }
    );
    let seen = sim.calls_seen();
    let outcomes: Vec<_> = seen
        .iter()
        .map(|c| (c.method.as_str(), c.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("CreditCardSale_Manual", "ok"),
            ("Transaction_Query", "ok"),
            ("CreditCardSale_Manual", "unauthenticated"),
            ("CreditCardSale_Manual", "unauthenticated"),
            ("CreditCardSale_Manual", "unauthenticated"),
        ]
    );
    assert_eq!(seen[0].protocol, "rest");
    assert_eq!(seen[0].body, Bytes::from(body));
    assert_eq!(seen[0].sess_key_header.as_deref(), Some(key.as_str()));
    assert_eq!(seen[2].sess_key_header, None);
    sim.shutdown().await;
}

#[tokio::test]
async fn rest_authenticate_rejections_and_malformed() {
    let sim = start(NumberSimConfig::default()).await;
    let c = client();
    let r = rest_auth(&c, &sim, ACCT, "00000000000000000000000000000000").await;
    assert_eq!(r["FunctionOk"], true);
    assert_eq!(r["AuthSuccess"], false);
    assert_eq!(r["SessKey"], "");
    assert!(!r["RespMsg"].as_str().unwrap().is_empty());
    let r = rest_auth(&c, &sim, "EP0000000", TOKEN).await;
    assert_eq!(r["AuthSuccess"], false);

    // Malformed JSON, missing fields, wrong content type: FunctionOk false with an ErrCode.
    let url = format!("{}{REST}/Authenticate", sim.url());
    for (ct, body) in [
        ("application/json", "{not json"),
        ("application/json", r#"{"AcctCode":"EP9116875"}"#),
        (
            "text/plain",
            &*json!({"AcctCode": ACCT, "Token": TOKEN}).to_string(),
        ),
    ] {
        let a = send(
            &c,
            Method::POST,
            url.clone(),
            &[("content-type", ct)],
            body.to_owned(),
        )
        .await
        .unwrap();
        assert_eq!(a.status, StatusCode::OK);
        let r = &a.json()["AuthenticateResult"];
        assert_eq!(r["FunctionOk"], false, "{r}");
        assert_eq!(r["AuthSuccess"], false);
        assert_eq!(r["ErrCode"], 5001);
        assert!(!r["ErrMsg"].as_str().unwrap().is_empty());
    }
    // Wrong HTTP method, unknown path.
    let a = send(&c, Method::GET, url, &[], "").await.unwrap();
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    let a = send(&c, Method::POST, format!("{}/nope", sim.url()), &[], "")
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::NOT_FOUND);

    let s = sim.stats();
    assert_eq!(
        (s.auth_attempts, s.auth_rejected, s.auth_success),
        (5, 2, 0)
    );
    assert_eq!(
        s.consecutive_rejections, 2,
        "malformed requests do not count"
    );
    assert_eq!(s.calls, 0);
}

#[tokio::test]
async fn six_rejections_lock_the_ip_until_unlocked() {
    let sim = start(NumberSimConfig::default()).await;
    let c = client();
    // A success in between resets the count.
    for _ in 0..5 {
        assert_eq!(
            rest_auth(&c, &sim, ACCT, "wrong").await["AuthSuccess"],
            false
        );
    }
    assert_eq!(sim.stats().consecutive_rejections, 5);
    rest_key(&c, &sim).await;
    assert_eq!(sim.stats().consecutive_rejections, 0);

    for i in 1..=6 {
        let r = rest_auth(&c, &sim, ACCT, "wrong").await;
        assert_eq!(r["AuthSuccess"], false);
        assert_eq!(sim.stats().ip_locked, i == 6, "after {i} rejections");
    }
    let r = rest_auth(&c, &sim, ACCT, TOKEN).await;
    assert_eq!(r["FunctionOk"], true);
    assert_eq!(r["AuthSuccess"], false);
    assert_eq!(r["SessKey"], "");
    assert!(
        r["RespMsg"].as_str().unwrap().starts_with("IP locked"),
        "{r}"
    );
    let s = sim.stats();
    assert_eq!(
        (s.auth_attempts, s.auth_success, s.auth_rejected),
        (13, 1, 12)
    );
    assert_eq!(s.consecutive_rejections, 7);
    assert!(s.ip_locked);

    sim.unlock_ip();
    let s = sim.stats();
    assert!(!s.ip_locked);
    assert_eq!(s.consecutive_rejections, 0);
    rest_key(&c, &sim).await;
    assert_eq!(sim.stats().auth_success, 2);
}

#[tokio::test]
async fn expire_keys_answers_5030_and_change_ip_5050() {
    let sim = start(NumberSimConfig::default()).await;
    let c = client();
    let k1 = rest_key(&c, &sim).await;
    sim.expire_keys();
    let r = rest_call(&c, &sim, "CreditCardSale_Manual", Some(&k1), "{}")
        .await
        .unwrap();
    assert_eq!(
        r,
        json!({"FunctionOk": false, "ErrCode": 5030, "ErrMsg": "Expired Session Key", "RespMsg": ""})
    );
    let k2 = rest_key(&c, &sim).await;
    assert_ne!(k1, k2);
    let r = rest_call(&c, &sim, "CreditCardSale_Manual", Some(&k2), "{}")
        .await
        .unwrap();
    assert_eq!(r["FunctionOk"], true);

    sim.change_ip();
    let r = rest_call(&c, &sim, "Transaction_Query", Some(&k2), "{}")
        .await
        .unwrap();
    assert_eq!(
        r,
        json!({"FunctionOk": false, "ErrCode": 5050, "ErrMsg": "Unauthorized Session Key", "RespMsg": ""})
    );
    let k3 = rest_key(&c, &sim).await;
    let r = rest_call(&c, &sim, "Transaction_Query", Some(&k3), "{}")
        .await
        .unwrap();
    assert_eq!(r["FunctionOk"], true);
    // Old keys stay dead.
    let r = rest_call(&c, &sim, "Transaction_Query", Some(&k1), "{}")
        .await
        .unwrap();
    assert_eq!(r["ErrCode"], 5030);

    let s = sim.stats();
    assert_eq!(
        (
            s.calls,
            s.calls_ok,
            s.calls_5030,
            s.calls_5050,
            s.keys_issued
        ),
        (5, 2, 2, 1, 3)
    );
}

#[tokio::test]
async fn keys_expire_after_their_lifetime() {
    const LIFETIME: Duration = Duration::from_millis(300);
    let c = client();
    // A key works within its lifetime. `asked` is taken before the key is issued, so a call back
    // within LIFETIME of it was judged within the key's lifetime. A round where this machine was
    // too busy for that proves nothing either way and is tried again, on a fresh simulator.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (sim, key, asked) = loop {
        let sim = start(NumberSimConfig {
            key_lifetime: LIFETIME,
            ..NumberSimConfig::default()
        })
        .await;
        let asked = Instant::now();
        let key = rest_key(&c, &sim).await;
        let r = rest_call(&c, &sim, "Transaction_Query", Some(&key), "{}")
            .await
            .unwrap();
        if asked.elapsed() <= LIFETIME {
            assert_eq!(r["FunctionOk"], true, "{r}");
            break (sim, key, asked);
        }
        assert!(
            Instant::now() < deadline,
            "no call came back within the key's lifetime"
        );
    };
    // Then the lifetime passes on the wall clock: ask until the key is refused, rather than
    // assume it is after a fixed sleep.
    let deadline = Instant::now() + Duration::from_secs(20);
    let r = loop {
        let r = rest_call(&c, &sim, "Transaction_Query", Some(&key), "{}")
            .await
            .unwrap();
        if r["FunctionOk"] != true {
            break r;
        }
        assert!(Instant::now() < deadline, "the key never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(r["ErrCode"], 5030, "{r}");
    // Not before its lifetime: the key was issued after `asked` (a lower bound, which no load can
    // break).
    assert!(asked.elapsed() > LIFETIME, "{:?}", asked.elapsed());
    assert_eq!(sim.stats().calls_5030, 1);
}

#[tokio::test]
async fn hmac_signatures_are_checked() {
    let sim = start(NumberSimConfig {
        hmac_secret: Some(SECRET.to_owned()),
        user_id: 123,
        ..NumberSimConfig::default()
    })
    .await;
    let c = client();
    let result = rest_auth(&c, &sim, ACCT, TOKEN).await;
    assert_eq!(result["ThisUser"]["ID"], 123);
    let key = result["SessKey"].as_str().unwrap().to_owned();

    let good = sign(&key, SECRET, now_epoch(), 123);
    let r = rest_call(&c, &sim, "CreditCardSale_Manual", Some(&good), "{}")
        .await
        .unwrap();
    assert_eq!(r["FunctionOk"], true, "{r}");
    // Lowercase hash is accepted too.
    let (head, hash) = good.rsplit_once('_').unwrap();
    let lower = format!("{head}_{}", hash.to_ascii_lowercase());
    let r = rest_call(&c, &sim, "CreditCardSale_Manual", Some(&lower), "{}")
        .await
        .unwrap();
    assert_eq!(r["FunctionOk"], true, "{r}");

    let bad = [
        key.clone(),                                                      // unsigned
        sign(&key, "7D55DBB3D691C9E0FDF341E4AB38C3C8", now_epoch(), 123), // wrong secret
        sign(&key, SECRET, now_epoch() - 310, 123),                       // stale
        sign(&key, SECRET, now_epoch() + 310, 123),                       // from the future
        sign(&key, SECRET, now_epoch(), 2547),                            // another user
        tamper_last_digit(&good),                                         // tampered hash
    ];
    for header in &bad {
        let r = rest_call(&c, &sim, "CreditCardSale_Manual", Some(header), "{}")
            .await
            .unwrap();
        assert_eq!(r["FunctionOk"], false);
        assert_eq!(r["ErrCode"], 5010);
        assert_eq!(r["ErrMsg"], "Invalid Request Signature");
    }
    // A well-signed unknown key is unauthenticated but not a bad signature.
    let unknown = sign(
        "B9F24903C3BA4770AE303032303541303032353437",
        SECRET,
        now_epoch(),
        123,
    );
    let r = rest_call(&c, &sim, "CreditCardSale_Manual", Some(&unknown), "{}")
        .await
        .unwrap();
    assert_eq!(r["ErrMsg"], "Invalid Session Key");
    // Signed but expired: 5030, as the proxy needs to see.
    sim.expire_keys();
    let r = rest_call(
        &c,
        &sim,
        "CreditCardSale_Manual",
        Some(&sign(&key, SECRET, now_epoch(), 123)),
        "{}",
    )
    .await
    .unwrap();
    assert_eq!(r["ErrCode"], 5030);

    let s = sim.stats();
    assert_eq!(s.calls, 10);
    assert_eq!(s.calls_ok, 2);
    assert_eq!(s.bad_signatures, 6);
    assert_eq!(s.calls_unauthenticated, 7);
    assert_eq!(s.calls_5030, 1);
}

fn soap_envelope(op: &str, params: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:tem="http://tempuri.org/">
  <soapenv:Header/>
  <soapenv:Body>
    <tem:{op}>
      {params}
    </tem:{op}>
  </soapenv:Body>
</soapenv:Envelope>"#
    )
}

async fn soap_post(
    c: &HttpClient,
    sim: &NumberSim,
    action: &str,
    body: String,
) -> Result<Answer, hyper_util::client::legacy::Error> {
    send(
        c,
        Method::POST,
        format!("{}{SOAP}", sim.url()),
        &[
            ("content-type", "text/xml; charset=utf-8"),
            ("SOAPAction", action),
        ],
        body,
    )
    .await
}

/// The text of the first element with this local name (any prefix).
fn xml_text(xml: &str, local: &str) -> Option<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut inside = false;
    loop {
        match reader.read_event().unwrap() {
            quick_xml::events::Event::Start(e) if e.local_name().as_ref() == local.as_bytes() => {
                inside = true
            }
            quick_xml::events::Event::Empty(e) if e.local_name().as_ref() == local.as_bytes() => {
                return Some(String::new())
            }
            quick_xml::events::Event::Text(t) if inside => {
                return Some(t.unescape().unwrap().into_owned())
            }
            quick_xml::events::Event::End(_) if inside => return Some(String::new()),
            quick_xml::events::Event::Eof => return None,
            _ => {}
        }
    }
}

async fn soap_key(c: &HttpClient, sim: &NumberSim) -> String {
    let body = soap_envelope(
        "Authenticate",
        &format!("<tem:acctCode>{ACCT}</tem:acctCode><tem:token>{TOKEN}</tem:token>"),
    );
    let a = soap_post(
        c,
        sim,
        "\"http://tempuri.org/ICardProcess/Authenticate\"",
        body,
    )
    .await
    .unwrap();
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let xml = a.text();
    assert!(
        xml.contains(r#"<AuthenticateResponse xmlns="http://tempuri.org/"><AuthenticateResult>"#),
        "{xml}"
    );
    assert_eq!(xml_text(&xml, "AuthSuccess").as_deref(), Some("true"));
    assert_eq!(xml_text(&xml, "FunctionOk").as_deref(), Some("true"));
    assert_eq!(xml_text(&xml, "ErrCode").as_deref(), Some("0"));
    assert!(xml_text(&xml, "RespMsg")
        .unwrap()
        .starts_with("SessKey Expires|"));
    let key = xml_text(&xml, "SessKey").unwrap();
    assert_eq!(key.len(), 42);
    key
}

#[tokio::test]
async fn soap_authenticate_and_calls() {
    let sim = start(NumberSimConfig::default()).await;
    let c = client();
    let key = soap_key(&c, &sim).await;
    let action = "http://tempuri.org/ICardProcess/CreditCardSale_Manual";

    // Session key as the first parameter: approved.
    let body = soap_envelope(
        "CreditCardSale_Manual",
        &format!("<tem:sessKey>{key}</tem:sessKey><tem:amount>1.00</tem:amount>"),
    );
    let a = soap_post(&c, &sim, action, body.clone()).await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    let xml = a.text();
    assert!(
        xml.contains(r#"<CreditCardSale_ManualResponse xmlns="http://tempuri.org/"><CreditCardSale_ManualResult><FunctionOk>true</FunctionOk><ErrCode>0</ErrCode><ErrMsg/><RespMsg>Approved</RespMsg><TxID>"#),
        "{xml}"
    );

    // Session key present but not first: unauthenticated.
    let misplaced = soap_envelope(
        "CreditCardSale_Manual",
        &format!("<tem:amount>1.00</tem:amount><tem:sessKey>{key}</tem:sessKey>"),
    );
    let xml = soap_post(&c, &sim, action, misplaced).await.unwrap().text();
    assert_eq!(xml_text(&xml, "FunctionOk").as_deref(), Some("false"));
    assert_eq!(xml_text(&xml, "ErrCode").as_deref(), Some("5010"));

    // Expired, then IP changed.
    sim.expire_keys();
    let xml = soap_post(&c, &sim, action, body).await.unwrap().text();
    assert_eq!(xml_text(&xml, "ErrCode").as_deref(), Some("5030"), "{xml}");
    assert_eq!(
        xml_text(&xml, "ErrMsg").as_deref(),
        Some("Expired Session Key")
    );
    let key2 = soap_key(&c, &sim).await;
    sim.change_ip();
    let body2 = soap_envelope(
        "Transaction_Query",
        &format!("<tem:sessKey>{key2}</tem:sessKey>"),
    );
    let xml = soap_post(
        &c,
        &sim,
        "http://tempuri.org/ICardProcess/Transaction_Query",
        body2.clone(),
    )
    .await
    .unwrap()
    .text();
    assert!(xml.contains("<Transaction_QueryResult>"), "{xml}");
    assert_eq!(xml_text(&xml, "ErrCode").as_deref(), Some("5050"));

    // Wrong SOAPAction and wrong content type are refused the way WCF refuses them.
    let a = soap_post(
        &c,
        &sim,
        "http://tempuri.org/ICardProcess/Other",
        body2.clone(),
    )
    .await
    .unwrap();
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(a.text().contains("ActionNotSupported"), "{}", a.text());
    let a = send(
        &c,
        Method::POST,
        format!("{}{SOAP}", sim.url()),
        &[("content-type", "application/json")],
        body2,
    )
    .await
    .unwrap();
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let s = sim.stats();
    assert_eq!((s.auth_attempts, s.auth_success, s.keys_issued), (2, 2, 2));
    assert_eq!(
        (
            s.calls,
            s.calls_ok,
            s.calls_unauthenticated,
            s.calls_5030,
            s.calls_5050
        ),
        (5, 1, 1, 1, 1)
    );
    let seen = sim.calls_seen();
    let outcomes: Vec<_> = seen.iter().map(|c| c.outcome).collect();
    assert_eq!(outcomes, ["ok", "unauthenticated", "5030", "5050", "fault"]);
    assert!(seen.iter().all(|c| c.protocol == "soap"));
    assert_eq!(seen[0].sess_key_header.as_deref(), Some(key.as_str()));
    assert_eq!(seen[0].method, "CreditCardSale_Manual");
}

#[tokio::test]
async fn soap_wrong_credentials_and_signed_session_element() {
    let sim = start(NumberSimConfig {
        hmac_secret: Some(SECRET.to_owned()),
        soap_session_element: "SessionKey".to_owned(),
        ..NumberSimConfig::default()
    })
    .await;
    let c = client();
    let body = soap_envelope(
        "Authenticate",
        &format!("<tem:acctCode>{ACCT}</tem:acctCode><tem:token>nope</tem:token>"),
    );
    let xml = soap_post(
        &c,
        &sim,
        "http://tempuri.org/ICardProcess/Authenticate",
        body,
    )
    .await
    .unwrap()
    .text();
    assert_eq!(xml_text(&xml, "FunctionOk").as_deref(), Some("true"));
    assert_eq!(xml_text(&xml, "AuthSuccess").as_deref(), Some("false"));
    assert_eq!(xml_text(&xml, "SessKey").as_deref(), Some(""));

    let key = soap_key(&c, &sim).await;
    let action = "http://tempuri.org/ICardProcess/Transaction_Query";
    let signed = sign(&key, SECRET, now_epoch(), 2547);
    let body = soap_envelope(
        "Transaction_Query",
        &format!("<tem:SessionKey>{signed}</tem:SessionKey>"),
    );
    let xml = soap_post(&c, &sim, action, body).await.unwrap().text();
    assert_eq!(
        xml_text(&xml, "FunctionOk").as_deref(),
        Some("true"),
        "{xml}"
    );
    let unsigned = soap_envelope(
        "Transaction_Query",
        &format!("<tem:SessionKey>{key}</tem:SessionKey>"),
    );
    let xml = soap_post(&c, &sim, action, unsigned).await.unwrap().text();
    assert_eq!(xml_text(&xml, "ErrCode").as_deref(), Some("5010"));
    let s = sim.stats();
    assert_eq!((s.calls_ok, s.bad_signatures, s.auth_rejected), (1, 1, 1));
}

#[tokio::test]
async fn dropped_calls_get_no_answer() {
    let sim = start(NumberSimConfig::default()).await;
    let c = client();
    let key = rest_key(&c, &sim).await;
    sim.drop_next_calls(1);
    let err = rest_call(&c, &sim, "CreditCardSale_Manual", Some(&key), r#"{"a":1}"#)
        .await
        .expect_err("a dropped call must not produce a response");
    assert!(!err.is_connect(), "the request was sent: {err:?}");
    // The next call is answered normally.
    let r = rest_call(&c, &sim, "CreditCardSale_Manual", Some(&key), "{}")
        .await
        .unwrap();
    assert_eq!(r["FunctionOk"], true);

    // At the socket level: the request goes out in full and the connection closes, no bytes back.
    sim.drop_next_calls(1);
    let mut stream = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    let body = "{\"x\":\"y\"}";
    let req = format!(
        "POST {REST}/Transaction_Query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nSessKey: {key}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got))
        .await
        .expect("the simulator must close the connection")
        .unwrap();
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));

    // SOAP calls can be dropped too; Authenticate never is.
    sim.drop_next_calls(2);
    soap_key(&c, &sim).await;
    let body = soap_envelope(
        "Transaction_Query",
        &format!("<tem:sessKey>{key}</tem:sessKey>"),
    );
    let res = soap_post(
        &c,
        &sim,
        "http://tempuri.org/ICardProcess/Transaction_Query",
        body,
    )
    .await;
    assert!(res.is_err());
    let s = sim.stats();
    assert_eq!((s.calls, s.dropped, s.calls_ok), (4, 3, 1));
    let seen = sim.calls_seen();
    let outcomes: Vec<_> = seen.iter().map(|c| c.outcome).collect();
    assert_eq!(outcomes, ["dropped", "ok", "dropped", "dropped"]);
    assert_eq!(seen[0].body, Bytes::from_static(br#"{"a":1}"#));
    assert_eq!(seen[2].body, Bytes::from_static(br#"{"x":"y"}"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls() {
    let sim = start(NumberSimConfig {
        latency: Duration::from_millis(50),
        ..NumberSimConfig::default()
    })
    .await;
    let c = client();
    let key = rest_key(&c, &sim).await;
    let spawn_call = |i: u64| {
        let (c, key, url) = (c.clone(), key.clone(), sim.url());
        tokio::spawn(async move {
            let body = format!(r#"{{"n":{i}}}"#);
            let a = send(
                &c,
                Method::POST,
                format!("{url}{REST}/CreditCardSale_Manual"),
                &[("content-type", "application/json"), ("SessKey", &key)],
                body,
            )
            .await
            .unwrap();
            let v = a.json();
            let r = &v["CreditCardSale_ManualResult"];
            assert_eq!(r["FunctionOk"], true);
            assert_eq!(r["Echo"]["n"], i);
            r["TxID"].as_u64().unwrap()
        })
    };
    let tasks: Vec<_> = (0..64).map(spawn_call).collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 64);
    let s = sim.stats();
    assert_eq!((s.calls, s.calls_ok), (64, 64));

    // Served concurrently, shown without timing anything: with an hour's latency no call is
    // answered, yet all 64 reach the simulator (it counts a call before its latency). Served one
    // at a time, the second would never be read.
    sim.set_latency(Duration::from_secs(3600));
    let held: Vec<_> = (64..128).map(spawn_call).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sim.stats().calls < 128 {
        assert!(
            Instant::now() < deadline,
            "only {} of 64 calls reached the simulator at once",
            sim.stats().calls - 64
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        held.iter().all(|t| !t.is_finished()),
        "a call held for an hour was answered"
    );
    for t in held {
        t.abort();
    }
}

#[tokio::test]
async fn latency_is_added_before_answers() {
    let sim = start(NumberSimConfig::default()).await;
    let c = client();
    sim.set_latency(Duration::from_millis(250));
    let t = std::time::Instant::now();
    let key = rest_key(&c, &sim).await;
    assert!(t.elapsed() >= Duration::from_millis(250));
    let t = std::time::Instant::now();
    rest_call(&c, &sim, "Transaction_Query", Some(&key), "{}")
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(250));
    // Back to none: with an hour's latency left in place the call could not end within the
    // (generous) bound, which no loaded machine reaches otherwise.
    sim.set_latency(Duration::from_secs(3600));
    sim.set_latency(Duration::ZERO);
    let call = rest_call(&c, &sim, "Transaction_Query", Some(&key), "{}");
    tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("the latency was taken away")
        .unwrap();
}

#[tokio::test]
async fn set_token_changes_the_valid_token() {
    let sim = start(NumberSimConfig::default()).await;
    let c = client();
    sim.set_token("NEWTOKEN");
    assert_eq!(rest_auth(&c, &sim, ACCT, TOKEN).await["AuthSuccess"], false);
    assert_eq!(
        rest_auth(&c, &sim, ACCT, "NEWTOKEN").await["AuthSuccess"],
        true
    );
}

#[tokio::test]
async fn control_plane() {
    let sim = start(NumberSimConfig::default()).await;
    let c = client();
    let ctl = |path: &str| format!("{}/_sim/{path}", sim.url());
    let key = rest_key(&c, &sim).await;

    let a = send(&c, Method::POST, ctl("expire"), &[], "")
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let r = rest_call(&c, &sim, "Transaction_Query", Some(&key), "{}")
        .await
        .unwrap();
    assert_eq!(r["ErrCode"], 5030);

    let key = rest_key(&c, &sim).await;
    send(&c, Method::POST, ctl("change-ip"), &[], "")
        .await
        .unwrap();
    let r = rest_call(&c, &sim, "Transaction_Query", Some(&key), "{}")
        .await
        .unwrap();
    assert_eq!(r["ErrCode"], 5050);

    let a = send(&c, Method::POST, ctl("token"), &[], "T2\n")
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(rest_auth(&c, &sim, ACCT, "T2").await["AuthSuccess"], true);
    let key = rest_key_with(&c, &sim, "T2").await;

    send(&c, Method::POST, ctl("drop?n=1"), &[], "")
        .await
        .unwrap();
    assert!(rest_call(&c, &sim, "Transaction_Query", Some(&key), "{}")
        .await
        .is_err());

    send(&c, Method::POST, ctl("latency?ms=200"), &[], "")
        .await
        .unwrap();
    let t = std::time::Instant::now();
    rest_call(&c, &sim, "Transaction_Query", Some(&key), "{}")
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(200));
    send(&c, Method::POST, ctl("latency?ms=0"), &[], "")
        .await
        .unwrap();

    for _ in 0..6 {
        rest_auth(&c, &sim, ACCT, "wrong").await;
    }
    assert!(sim.stats().ip_locked);
    send(&c, Method::POST, ctl("unlock-ip"), &[], "")
        .await
        .unwrap();
    assert!(!sim.stats().ip_locked);

    let a = send(&c, Method::GET, ctl("stats"), &[], "").await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    let stats = a.json();
    assert_eq!(stats, serde_json::to_value(sim.stats()).unwrap());
    assert_eq!(stats["dropped"], 1);
    assert_eq!(stats["calls"], 4);
    assert_eq!(stats["auth_rejected"], 6);
    assert_eq!(stats["ip_locked"], false);

    // Bad parameters, unknown commands, wrong methods.
    let a = send(&c, Method::POST, ctl("latency?ms=abc"), &[], "")
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = send(&c, Method::POST, ctl("bogus"), &[], "").await.unwrap();
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = send(&c, Method::GET, ctl("expire"), &[], "").await.unwrap();
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    // Control requests are not API calls.
    assert_eq!(sim.stats().calls, 4);
}

async fn rest_key_with(c: &HttpClient, sim: &NumberSim, token: &str) -> String {
    let r = rest_auth(c, sim, ACCT, token).await;
    r["SessKey"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn shutdown_closes_the_listener() {
    let sim = start(NumberSimConfig::default()).await;
    let addr = sim.addr();
    assert_eq!(sim.url(), format!("http://{addr}"));
    tokio::net::TcpStream::connect(addr).await.unwrap();
    sim.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn custom_paths_and_namespace() {
    let sim = start(NumberSimConfig {
        rest_base: "/APIcardProcNumber/v1.0.0".to_owned(),
        soap_path: "/svc".to_owned(),
        soap_namespace: "urn:number".to_owned(),
        ..NumberSimConfig::default()
    })
    .await;
    let c = client();
    let a = send(
        &c,
        Method::POST,
        format!("{}/APIcardProcNumber/v1.0.0/Authenticate", sim.url()),
        &[("content-type", "application/json")],
        json!({"AcctCode": ACCT, "Token": TOKEN}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(a.json()["AuthenticateResult"]["AuthSuccess"], true);
    // The default REST path is gone.
    let a = send(
        &c,
        Method::POST,
        format!("{}{REST}/Authenticate", sim.url()),
        &[("content-type", "application/json")],
        "{}",
    )
    .await
    .unwrap();
    assert_eq!(a.status, StatusCode::NOT_FOUND);

    let body = format!(
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><Authenticate xmlns="urn:number"><acctCode>{ACCT}</acctCode><token>{TOKEN}</token></Authenticate></s:Body></s:Envelope>"#
    );
    let a = send(
        &c,
        Method::POST,
        format!("{}/svc", sim.url()),
        &[
            ("content-type", "text/xml"),
            ("SOAPAction", "urn:number/ICardProcess/Authenticate"),
        ],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert!(a
        .text()
        .contains(r#"<AuthenticateResponse xmlns="urn:number">"#));
    // Right action, operation in the wrong namespace: fault.
    let wrong_ns = body.replace("urn:number", "http://tempuri.org/");
    let a = send(
        &c,
        Method::POST,
        format!("{}/svc", sim.url()),
        &[
            ("content-type", "text/xml"),
            ("SOAPAction", "urn:number/ICardProcess/Authenticate"),
        ],
        wrong_ns,
    )
    .await
    .unwrap();
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(sim.stats().auth_attempts, 3);
    assert_eq!(sim.stats().auth_success, 2);
}

/// `signed` with its last hex digit changed to a different one (a fixed `0` would leave one
/// signature in sixteen unchanged).
fn tamper_last_digit(signed: &str) -> String {
    let (head, last) = signed.split_at(signed.len() - 1);
    format!("{head}{}", if last == "0" { "1" } else { "0" })
}
