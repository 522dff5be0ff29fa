//! Unit tests of the Number simulator.

use super::*;

const VECTOR_KEY: &str = "9B9175EF556E4DDA93303132323141303035383339";
const VECTOR_SECRET: &str = "7D55DBB3D691C9E0FDF341E4AB38C3C9";
const VECTOR_HEADER: &str = "9B9175EF556E4DDA93303132323141303035383339_1702565789_123_1BD0C45A1DCBC7F9D0730FDD6222A45E10FCC7D9E84557499B812B138D0B7149";
const SKEW: Duration = Duration::from_secs(300);

#[test]
fn signature_vector_from_the_vendor_is_accepted() {
    let key = verify_signature(VECTOR_HEADER, VECTOR_SECRET, 123, 1_702_565_789, SKEW);
    assert_eq!(key, Some(VECTOR_KEY));
    // Lowercase hex too, and anywhere inside the skew window.
    let lower = VECTOR_HEADER
        .to_ascii_lowercase()
        .replace(&VECTOR_KEY.to_ascii_lowercase(), VECTOR_KEY);
    assert_eq!(
        verify_signature(&lower, VECTOR_SECRET, 123, 1_702_565_789 + 300, SKEW),
        Some(VECTOR_KEY)
    );
}

#[test]
fn signature_rejections() {
    let now = 1_702_565_789;
    // Stale and future epochs.
    assert_eq!(
        verify_signature(VECTOR_HEADER, VECTOR_SECRET, 123, now + 301, SKEW),
        None
    );
    assert_eq!(
        verify_signature(VECTOR_HEADER, VECTOR_SECRET, 123, now - 301, SKEW),
        None
    );
    // Another user.
    assert_eq!(
        verify_signature(VECTOR_HEADER, VECTOR_SECRET, 124, now, SKEW),
        None
    );
    // Another secret.
    assert_eq!(
        verify_signature(
            VECTOR_HEADER,
            "7D55DBB3D691C9E0FDF341E4AB38C3C8",
            123,
            now,
            SKEW
        ),
        None
    );
    // The hex-decoded secret as key is the classic mistake: must not verify.
    let mut mac = Hmac::<Sha256>::new_from_slice(&decode_hex_any(VECTOR_SECRET)).unwrap();
    mac.update(format!("{VECTOR_KEY}_{now}_123").as_bytes());
    let wrong = format!(
        "{VECTOR_KEY}_{now}_123_{}",
        hex_upper(&mac.finalize().into_bytes())
    );
    assert_eq!(
        verify_signature(&wrong, VECTOR_SECRET, 123, now, SKEW),
        None
    );
    // Tampered key, truncated hash, bare key, garbage.
    let tampered = VECTOR_HEADER.replacen("9B91", "9B92", 1);
    assert_eq!(
        verify_signature(&tampered, VECTOR_SECRET, 123, now, SKEW),
        None
    );
    let truncated = &VECTOR_HEADER[..VECTOR_HEADER.len() - 2];
    assert_eq!(
        verify_signature(truncated, VECTOR_SECRET, 123, now, SKEW),
        None
    );
    assert_eq!(
        verify_signature(VECTOR_KEY, VECTOR_SECRET, 123, now, SKEW),
        None
    );
    assert_eq!(verify_signature("___", VECTOR_SECRET, 123, now, SKEW), None);
    let signed_epoch = format!(
        "{VECTOR_KEY}_+1702565789_123_{}",
        &VECTOR_HEADER[VECTOR_HEADER.len() - 64..]
    );
    assert_eq!(
        verify_signature(&signed_epoch, VECTOR_SECRET, 123, now, SKEW),
        None
    );
}

fn decode_hex_any(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

#[test]
fn session_keys_look_like_the_vendors() {
    let key = new_session_key(20, 2547);
    assert_eq!(key.len(), 42);
    assert!(key
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)));
    // The tail is the hex of "00020A002547", as in the vendor's example keys.
    assert!(key.ends_with("303030323041303032353437"), "{key}");
    assert_ne!(new_session_key(20, 2547), key);
}

#[test]
fn vendor_date_format() {
    let t = UNIX_EPOCH + Duration::from_secs(1_555_572_587);
    assert_eq!(format_vendor_date(t), "4/18/2019 7:29:47 AM");
    let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 13 * 3600 + 5); // 2000-02-29 13:00:05
    assert_eq!(format_vendor_date(t), "2/29/2000 1:00:05 PM");
    assert_eq!(format_vendor_date(UNIX_EPOCH), "1/1/1970 12:00:00 AM");
    let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599); // 2024-12-31 23:59:59
    assert_eq!(format_vendor_date(t), "12/31/2024 11:59:59 PM");
}

fn state_with_keys(n: u64) -> (NumberSimCore, Vec<String>) {
    let shared = NumberSimCore::new(NumberSimConfig {
        key_lifetime: Duration::from_secs(60),
        ..NumberSimConfig::default()
    });
    let mut keys = Vec::new();
    for _ in 0..n {
        match shared.authenticate(Ok(("EP9116875", "2148B239CF6846BDA5D141BF4A4CFBE8"))) {
            AuthAnswer::Success { key, .. } => keys.push(key),
            other => panic!("{other:?}"),
        }
    }
    (shared, keys)
}

#[tokio::test(start_paused = true)]
async fn key_lifetime_expiry_and_ip_change() {
    let (shared, keys) = state_with_keys(1);
    let verdict = |k: &str| shared.lock().judge_key(k, Instant::now(), &shared.config);
    assert_eq!(verdict(&keys[0]), KeyVerdict::Valid);
    assert_eq!(verdict("0000"), KeyVerdict::Unknown);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(
        verdict(&keys[0]),
        KeyVerdict::Valid,
        "exactly the lifetime is still valid"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(verdict(&keys[0]), KeyVerdict::Expired);

    let (shared, keys) = state_with_keys(2);
    shared.change_ip();
    let later = shared.authenticate(Ok(("EP9116875", "2148B239CF6846BDA5D141BF4A4CFBE8")));
    let AuthAnswer::Success { key: fresh, .. } = later else {
        panic!("{later:?}")
    };
    let verdict = |k: &str| shared.lock().judge_key(k, Instant::now(), &shared.config);
    assert_eq!(verdict(&keys[0]), KeyVerdict::IpChanged);
    assert_eq!(verdict(&keys[1]), KeyVerdict::IpChanged);
    assert_eq!(verdict(&fresh), KeyVerdict::Valid);
    shared.expire_keys();
    assert_eq!(
        verdict(&keys[0]),
        KeyVerdict::Expired,
        "expiry wins over an IP change"
    );
    assert_eq!(verdict(&fresh), KeyVerdict::Expired);
}

#[test]
fn six_rejections_lock_the_ip() {
    let (shared, _) = state_with_keys(0);
    for i in 1..=5 {
        assert_eq!(
            shared.authenticate(Ok(("EP9116875", "wrong"))),
            AuthAnswer::Rejected {
                resp_msg: REJECTED_CREDENTIALS
            }
        );
        assert_eq!(shared.lock().stats.consecutive_rejections, i);
        assert!(!shared.lock().stats.ip_locked);
    }
    // Malformed requests neither count nor reset.
    assert!(matches!(
        shared.authenticate(Err("x".into())),
        AuthAnswer::Malformed { .. }
    ));
    assert_eq!(shared.lock().stats.consecutive_rejections, 5);
    shared.authenticate(Ok(("EP0000000", "2148B239CF6846BDA5D141BF4A4CFBE8")));
    assert!(shared.lock().stats.ip_locked);
    assert_eq!(
        shared.authenticate(Ok(("EP9116875", "2148B239CF6846BDA5D141BF4A4CFBE8"))),
        AuthAnswer::Rejected {
            resp_msg: REJECTED_IP_LOCKED
        }
    );
    let stats = shared.lock().stats.clone();
    assert_eq!(
        (stats.auth_attempts, stats.auth_rejected, stats.auth_success),
        (8, 7, 0)
    );
    assert_eq!(stats.consecutive_rejections, 7);
    shared.unlock_ip();
    assert!(matches!(
        shared.authenticate(Ok(("EP9116875", "2148B239CF6846BDA5D141BF4A4CFBE8"))),
        AuthAnswer::Success { .. }
    ));
    let stats = shared.lock().stats.clone();
    assert!(!stats.ip_locked);
    assert_eq!((stats.consecutive_rejections, stats.keys_issued), (0, 1));
}

#[test]
fn soap_parsing_is_lenient_on_prefixes_and_whitespace() {
    let body = br#"<?xml version="1.0" encoding="utf-8"?>
    <soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:tem="http://tempuri.org/">
      <soapenv:Header/>
      <soapenv:Body>
        <tem:CreditCardSale_Manual>
          <tem:sessKey> ABC </tem:sessKey>
          <tem:amount>1.00</tem:amount>
          <tem:card><tem:nested>x</tem:nested></tem:card>
          <tem:note>a &amp; b</tem:note>
          <tem:empty/>
        </tem:CreditCardSale_Manual>
      </soapenv:Body>
    </soapenv:Envelope>"#;
    let req = parse_soap(body).unwrap();
    assert_eq!(req.operation, "CreditCardSale_Manual");
    assert_eq!(req.operation_ns, "http://tempuri.org/");
    let names: Vec<&str> = req.params.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["sessKey", "amount", "card", "note", "empty"]);
    assert_eq!(req.param("sessKey"), Some("ABC"));
    assert_eq!(req.param("note"), Some("a & b"));
    assert_eq!(req.param("empty"), Some(""));

    let default_ns = br#"<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body><Authenticate xmlns="http://tempuri.org/"><acctCode>A</acctCode><token>T</token></Authenticate></Body></Envelope>"#;
    let req = parse_soap(default_ns).unwrap();
    assert_eq!(req.operation, "Authenticate");
    assert_eq!(req.param("acctCode"), Some("A"));
    assert_eq!(req.param("token"), Some("T"));
}

#[test]
fn soap_parsing_rejects_what_wcf_would() {
    let soap12 = br#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><Authenticate xmlns="http://tempuri.org/"/></s:Body></s:Envelope>"#;
    assert!(parse_soap(soap12).is_err());
    assert!(parse_soap(b"<not xml").is_err());
    assert!(parse_soap(b"").is_err());
    let mismatched = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><A></B></s:Body></s:Envelope>"#;
    assert!(parse_soap(mismatched).is_err());
    let empty_body = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body/></s:Envelope>"#;
    assert!(parse_soap(empty_body).is_err());
    let unknown_prefix = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><x:Op/></s:Body></s:Envelope>"#;
    assert!(parse_soap(unknown_prefix).is_err());
}

#[test]
fn soap_action_shape() {
    assert_eq!(
        soap_action("http://tempuri.org/", "Authenticate"),
        "http://tempuri.org/ICardProcess/Authenticate"
    );
    assert_eq!(soap_action("urn:x", "Op"), "urn:x/ICardProcess/Op");
}

#[test]
fn debug_output_hides_secrets() {
    let cfg = NumberSimConfig {
        hmac_secret: Some(VECTOR_SECRET.to_owned()),
        ..NumberSimConfig::default()
    };
    let shown = format!("{cfg:?}");
    assert!(!shown.contains(&cfg.token));
    assert!(!shown.contains(VECTOR_SECRET));
    let call = SeenCall {
        protocol: "rest",
        method: "CreditCardSale_Manual".into(),
        body: Bytes::from_static(b"{\"CardNum\":\"4111111111111111\"}"),
        sess_key_header: Some(VECTOR_KEY.into()),
        outcome: "ok",
    };
    let shown = format!("{call:?}");
    assert!(!shown.contains("4111111111111111"));
    assert!(!shown.contains(VECTOR_KEY));
}

/// With `bind_keys_to_caller`, a key answers only the address that authenticated (5050 from
/// any other), as Number binds a SessKey to the caller's IP.
#[tokio::test]
async fn keys_bound_to_the_caller_answer_5050_elsewhere() {
    let ip = |last: u8| std::net::IpAddr::from([127, 0, 0, last]);
    let shared = Arc::new(NumberSimCore::new(NumberSimConfig {
        bind_keys_to_caller: true,
        ..NumberSimConfig::default()
    }));
    let auth = Arc::clone(&shared);
    let answer = crate::server::as_caller(ip(2), async move {
        auth.authenticate(Ok(("EP9116875", "2148B239CF6846BDA5D141BF4A4CFBE8")))
    })
    .await;
    let AuthAnswer::Success { key, .. } = answer else {
        panic!("{answer:?}")
    };
    for (caller, expected) in [(ip(2), KeyVerdict::Valid), (ip(3), KeyVerdict::IpChanged)] {
        let (shared, key) = (Arc::clone(&shared), key.clone());
        let verdict = crate::server::as_caller(caller, async move {
            shared
                .lock()
                .judge_key(&key, Instant::now(), &shared.config)
        })
        .await;
        assert_eq!(verdict, expected, "{caller}");
    }
    let verdict = shared
        .lock()
        .judge_key(&key, Instant::now(), &shared.config);
    assert_eq!(verdict, KeyVerdict::IpChanged, "no caller is no match");
}
