//! Hostile relay forms against payauth's CreditGuard gateway: disguised field names, a second
//! `int_in`, XML that reads differently once percent-decoded, other body types, query strings
//! and odd spellings of the relay path.
//!
//! The upstream is a tiny fake gateway written here, not payauth's simulator (which reads forms
//! with payauth's own parser and so cannot catch its mistakes). The fake reads every form the
//! way a Java servlet does and records it; the assertions are about that servlet view, i.e.
//! about what the gateway would act on. Every request either gets refused (400 `bad_request`,
//! or 403 `terminal_not_allowed` for a foreign terminal) and reaches nobody, or reaches the fake
//! with exactly one `sessionId` (one payauth got from the fake), no `user`, no `password`, and
//! exactly one `int_in` naming only the allowed terminal.

// `Mutex::lock` is disallowed in favour of payauth's crate-private helper; a test may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use payauth::config::Config;
use payauth::sidecar::Sidecar;
use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use quick_xml::events::Event;
use tokio::net::TcpListener;

const ALLOWED: &str = "0882819014";
const FOREIGN: &str = "9999999999";
const RELAY: &str = "/xpo/Relay";
const FORM: &str = "application/x-www-form-urlencoded";

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// The deal, with `terminal` as the whole `terminalNumber` element (or whatever replaces it).
fn deal_with(terminal: &str) -> String {
    format!(
        "<ashrait><request><version>2000</version><language>Eng</language><command>doDeal</command>\
         <doDeal>{terminal}<cardNo>4580000000000000</cardNo><total>100</total>\
         <transactionType>Debit</transactionType><validation>AutoComm</validation></doDeal>\
         </request></ashrait>"
    )
}

/// The deal for terminal `t`.
fn deal(t: &str) -> String {
    deal_with(&format!("<terminalNumber>{t}</terminalNumber>"))
}

/// URL-encodes a value (everything but letters, digits and `*-._`).
fn enc(value: &str) -> String {
    const SET: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'*')
        .remove(b'-')
        .remove(b'.')
        .remove(b'_');
    utf8_percent_encode(value, SET).to_string()
}

// ---------------------------------------------------------------------------------------------
// The servlet's view of a form
// ---------------------------------------------------------------------------------------------

/// A form as a Java servlet container reads it: cut at every `&`, the name is what comes
/// before the first `=` (the whole piece, with an empty value, if none), names and values
/// percent-decoded with `+` as a space (a malformed escape kept as it is).
fn servlet_params(body: &[u8]) -> Vec<(String, String)> {
    body.split(|&b| b == b'&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| match piece.iter().position(|&b| b == b'=') {
            Some(eq) => (
                servlet_decode(&piece[..eq]),
                servlet_decode(&piece[eq + 1..]),
            ),
            None => (servlet_decode(piece), String::new()),
        })
        .collect()
}

fn servlet_decode(raw: &[u8]) -> String {
    let plus: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    let decoded: Vec<u8> = percent_decode(&plus).collect();
    String::from_utf8_lossy(&decoded).into_owned()
}

/// The values of every parameter named `name`, ignoring ASCII case and the blanks and control
/// characters Java's `String.trim` removes (stricter than a servlet, which compares exactly).
fn values<'a>(params: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    params
        .iter()
        .filter(|(n, _)| {
            n.trim_matches(|c: char| c <= ' ')
                .eq_ignore_ascii_case(name)
        })
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The texts of every `terminalNumber` element (any prefix), trimmed; an error when the
/// document is not well-formed XML.
fn terminal_numbers(xml: &str) -> Result<Vec<String>, String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut depth = 0usize;
    let mut text = String::new();
    let mut found = Vec::new();
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) if e.local_name().as_ref() == b"terminalNumber" => {
                depth += 1;
                text.clear();
            }
            Event::End(e) if e.local_name().as_ref() == b"terminalNumber" => {
                depth = depth.saturating_sub(1);
                found.push(text.trim().to_owned());
            }
            Event::Empty(e) if e.local_name().as_ref() == b"terminalNumber" => {
                found.push(String::new());
            }
            Event::Text(t) if depth > 0 => text.push_str(&t.unescape().map_err(|e| e.to_string())?),
            Event::CData(c) if depth > 0 => text.push_str(&String::from_utf8_lossy(&c)),
            Event::Eof => return Ok(found),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fake gateway
// ---------------------------------------------------------------------------------------------

/// A deal as the fake gateway received it.
#[derive(Debug, Clone)]
struct Deal {
    path: String,
    body: Bytes,
    params: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct Seen {
    /// Session ids handed out, in order.
    issued: Vec<String>,
    deals: Vec<Deal>,
}

/// A CreditGuard relay on 127.0.0.1:0: answers `getSessionId` with a fresh single-use session
/// (`SID-1`, `SID-2`, ...) and anything else with a permitted `doDeal`, which it records.
#[derive(Clone)]
struct FakeGateway {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl FakeGateway {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let seen = Arc::clone(&seen);
                        async move { Ok::<_, Infallible>(relay(&seen, request).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn deals(&self) -> Vec<Deal> {
        self.seen.lock().expect("lock").deals.clone()
    }

    fn issued(&self) -> Vec<String> {
        self.seen.lock().expect("lock").issued.clone()
    }
}

async fn relay(seen: &Mutex<Seen>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let params = servlet_params(&body);
    let session_call = values(&params, "int_in")
        .first()
        .is_some_and(|xml| xml.contains("getSessionId"));
    let xml = {
        let mut seen = seen.lock().expect("lock");
        if session_call {
            let id = format!("SID-{}", seen.issued.len() + 1);
            seen.issued.push(id.clone());
            format!(
                "<ashrait><response><command>getSessionId</command><result>000</result>\
                 <message>ok</message><getSessionId><sessionId>{id}</sessionId>\
                 <sessionExpiration>600</sessionExpiration><sessionReUse>0</sessionReUse>\
                 </getSessionId></response></ashrait>"
            )
        } else {
            seen.deals.push(Deal { path, body, params });
            format!(
                "<ashrait><response><command>doDeal</command><result>000</result>\
                 <message>Permitted transaction</message><doDeal><status>000</status>\
                 <terminalNumber>{ALLOWED}</terminalNumber></doDeal></response></ashrait>"
            )
        }
    };
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/xml")
        .body(Full::new(Bytes::from(xml)))
        .expect("response")
}

/// What is wrong with a deal the fake received, as the servlet sees it; empty when nothing.
/// `used` are the sessions earlier deals carried (a session is single-use).
fn deal_problems(deal: &Deal, issued: &[String], used: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    if deal.path != RELAY {
        problems.push(format!("the gateway saw path {:?}, not {RELAY}", deal.path));
    }
    let sessions = values(&deal.params, "sessionId");
    match sessions.as_slice() {
        [one] if !issued.iter().any(|i| i == one) => {
            problems.push(format!("sessionId {one:?} is not one the gateway issued"))
        }
        [one] if used.iter().any(|u| u == one) => {
            problems.push(format!("single-use sessionId {one:?} was used again"))
        }
        [_] => {}
        many => problems.push(format!("{} sessionId fields: {many:?}", many.len())),
    }
    for credential in ["user", "password"] {
        let found = values(&deal.params, credential);
        if !found.is_empty() {
            problems.push(format!("{credential} reached the gateway: {found:?}"));
        }
    }
    match values(&deal.params, "int_in").as_slice() {
        [xml] => {
            match terminal_numbers(xml) {
                Ok(terminals)
                    if !terminals.is_empty() && terminals.iter().all(|t| t == ALLOWED) => {}
                Ok(terminals) => problems.push(format!("int_in names terminals {terminals:?}")),
                Err(e) => problems.push(format!("int_in is not XML to the gateway: {e}")),
            }
            if xml.contains(FOREIGN) {
                problems.push("the foreign terminal is in the int_in the gateway read".into());
            }
        }
        many => problems.push(format!("{} int_in fields", many.len())),
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// payauth and the cases
// ---------------------------------------------------------------------------------------------

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// What a case must lead to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Relayed with only payauth's session.
    Forwarded,
    /// Refused with one of these error codes, and not relayed.
    Refused(&'static [&'static str]),
    /// Either of the above.
    ForwardedOrRefused(&'static [&'static str]),
}

const BAD: &[&str] = &["bad_request"];
const BAD_OR_FOREIGN: &[&str] = &["bad_request", "terminal_not_allowed"];

/// One request to payauth.
struct Case {
    name: String,
    method: Method,
    path: String,
    content_type: Option<String>,
    body: String,
    expect: Expect,
}

impl Case {
    /// A form POSTed to the relay path.
    fn form(name: &str, body: impl Into<String>, expect: Expect) -> Self {
        Self {
            name: name.to_owned(),
            method: Method::POST,
            path: RELAY.to_owned(),
            content_type: Some(FORM.to_owned()),
            body: body.into(),
            expect,
        }
    }

    fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    fn content_type(mut self, content_type: Option<&str>) -> Self {
        self.content_type = content_type.map(str::to_owned);
        self
    }
}

/// A fake gateway, payauth in front of it, and the record of one test's cases.
struct Bench {
    fake: FakeGateway,
    sidecar: Sidecar,
    base: String,
    client: HttpClient,
    _dir: tempfile::TempDir,
    /// Deals the cases expected to reach the fake (counted as they did).
    forwarded: usize,
    failures: Vec<String>,
}

impl Bench {
    async fn start() -> Self {
        let fake = FakeGateway::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("password"), "merchant-password").expect("password");
        std::fs::write(dir.path().join("admin"), "admin-token").expect("admin");
        let config = format!(
            r#"
[admin]
listen = "127.0.0.1:0"
token_file = "{admin}"
[state]
dir = "{state}"
[[gateway]]
name = "creditguard"
kind = "creditguard"
listen = "127.0.0.1:0"
upstream = "{upstream}"
user = "merchant-user"
password_file = "{password}"
terminals = ["{ALLOWED}"]
scope = "command"
max_request_bytes = 65536
"#,
            admin = dir.path().join("admin").display(),
            state = dir.path().join("state").display(),
            password = dir.path().join("password").display(),
            upstream = fake.url(),
        );
        let sidecar = Sidecar::start(Config::parse(&config).expect("config"))
            .await
            .expect("payauth starts");
        let base = format!(
            "http://{}",
            sidecar.gateway_addr("creditguard").expect("listener")
        );
        Self {
            fake,
            sidecar,
            base,
            client: Client::builder(TokioExecutor::new()).build_http(),
            _dir: dir,
            forwarded: 0,
            failures: Vec::new(),
        }
    }

    /// Sends one case and records every way its outcome breaks the promise.
    async fn run(&mut self, case: Case) {
        let before = self.fake.deals().len();
        let mut request = Request::builder()
            .method(case.method.clone())
            .uri(format!("{}{}", self.base, case.path));
        if let Some(content_type) = &case.content_type {
            request = request.header("content-type", content_type);
        }
        let request = request
            .body(Full::new(Bytes::from(case.body.clone())))
            .expect("request");
        let (status, headers, text) = self.send(request).await;
        let error = headers
            .get("x-payauth-error")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let deals = self.fake.deals();
        let new = &deals[before.min(deals.len())..];
        let mut problems = Vec::new();
        if status == StatusCode::OK {
            if matches!(case.expect, Expect::Refused(_)) {
                problems.push("expected a refusal, got 200".to_owned());
            }
            if !text.contains("<result>000</result>") {
                problems.push(format!("the 200 answer is not the gateway's: {text}"));
            }
            match new {
                [deal] => {
                    let used: Vec<String> = deals[..before]
                        .iter()
                        .flat_map(|d| values(&d.params, "sessionId"))
                        .map(str::to_owned)
                        .collect();
                    problems.extend(deal_problems(deal, &self.fake.issued(), &used));
                    if !problems.is_empty() {
                        problems.push(format!(
                            "the gateway received {:?}",
                            String::from_utf8_lossy(&deal.body)
                        ));
                    }
                }
                _ => problems.push(format!("the fake received {} deals for it", new.len())),
            }
            self.forwarded += 1;
        } else {
            let allowed = match case.expect {
                Expect::Forwarded => &[][..],
                Expect::Refused(codes) | Expect::ForwardedOrRefused(codes) => codes,
            };
            let code_status = |code: &str| match code {
                "terminal_not_allowed" => StatusCode::FORBIDDEN,
                _ => StatusCode::BAD_REQUEST,
            };
            let fits = error
                .as_deref()
                .is_some_and(|e| allowed.contains(&e) && status == code_status(e));
            if !fits {
                problems.push(format!(
                    "expected {:?}, got {status} x-payauth-error {error:?}: {text}",
                    case.expect
                ));
            }
            if !new.is_empty() {
                problems.push(format!(
                    "refused with {status} but the gateway received {:?}",
                    new.iter()
                        .map(|d| String::from_utf8_lossy(&d.body).into_owned())
                        .collect::<Vec<_>>()
                ));
            }
        }
        if !problems.is_empty() {
            self.failures.push(format!(
                "{}\n    request: {} {} content-type {:?}\n    body: {}\n    - {}",
                case.name,
                case.method,
                case.path,
                case.content_type,
                case.body,
                problems.join("\n    - ")
            ));
        }
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, String) {
        let response = self
            .client
            .request(request)
            .await
            .expect("payauth answered");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    /// Checks that the fake received exactly the deals counted as forwarded, stops payauth and
    /// fails the test with every problem found.
    async fn finish(mut self) {
        let deals = self.fake.deals();
        if deals.len() != self.forwarded {
            self.failures.push(format!(
                "the fake received {} deals, the cases forwarded {}",
                deals.len(),
                self.forwarded
            ));
        }
        self.sidecar.shutdown().await;
        assert!(
            self.failures.is_empty(),
            "{} case(s) broke the promise:\n{}",
            self.failures.len(),
            self.failures.join("\n\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_plain_form_reaches_the_gateway_with_only_payauths_session() {
    let mut bench = Bench::start().await;
    let encoded = enc(&deal(ALLOWED));
    let raw = deal(ALLOWED);
    bench
        .run(Case::form(
            "plain form, URL-encoded int_in",
            format!("user=u&password=p&int_in={encoded}"),
            Expect::Forwarded,
        ))
        .await;
    bench
        .run(Case::form(
            "plain form, raw int_in",
            format!("user=u&password=p&int_in={raw}"),
            Expect::Forwarded,
        ))
        .await;
    bench
        .run(Case::form(
            "int_in alone",
            format!("int_in={encoded}"),
            Expect::Forwarded,
        ))
        .await;
    assert!(bench.forwarded > 0, "the control cases reached the fake");
    bench.finish().await;
}

#[tokio::test]
async fn disguised_credentials_never_reach_the_gateway() {
    let mut bench = Bench::start().await;
    let encoded = enc(&deal(ALLOWED));
    let raw = deal(ALLOWED);
    for (name, body, expect) in [
        (
            "escaped letters in user and password",
            format!("us%65r=me&p%61ssword=pw&int_in={encoded}"),
            Expect::Forwarded,
        ),
        (
            "escaped letters in user and password, raw int_in",
            format!("us%65r=me&p%61ssword=pw&int_in={raw}"),
            Expect::Forwarded,
        ),
        (
            "upper-case USER and PASSWORD",
            format!("USER=me&PASSWORD=pw&int_in={encoded}"),
            Expect::Forwarded,
        ),
        (
            "blank-padded user and password names",
            format!("+user+=me&%09password=pw&int_in={encoded}"),
            Expect::Forwarded,
        ),
        (
            "escaped letter in sessionId",
            format!("session%49d=attacker&int_in={encoded}"),
            Expect::ForwardedOrRefused(BAD),
        ),
        (
            "lower-case sessionid",
            format!("sessionid=attacker&int_in={encoded}"),
            Expect::ForwardedOrRefused(BAD),
        ),
        (
            "sessionId spelled exactly, after a raw int_in",
            format!("int_in={raw}&sessionId=attacker"),
            Expect::ForwardedOrRefused(BAD),
        ),
    ] {
        bench.run(Case::form(name, body, expect)).await;
    }
    bench.finish().await;
}

#[tokio::test]
async fn a_relay_field_named_twice_is_refused() {
    let mut bench = Bench::start().await;
    let (allowed, foreign) = (enc(&deal(ALLOWED)), enc(&deal(FOREIGN)));
    let (raw_allowed, raw_foreign) = (deal(ALLOWED), deal(FOREIGN));
    for (name, body) in [
        (
            "int%5Fin before int_in",
            format!("int%5Fin={foreign}&int_in={allowed}"),
        ),
        (
            "int_in before int%5Fin",
            format!("int_in={allowed}&int%5Fin={foreign}"),
        ),
        (
            "int%5Fin before int_in, raw",
            format!("int%5Fin={raw_foreign}&int_in={raw_allowed}"),
        ),
        (
            "int_in before int%5Fin, raw",
            format!("int_in={raw_allowed}&int%5Fin={raw_foreign}"),
        ),
        (
            "INT_IN before int_in",
            format!("INT_IN={foreign}&int_in={allowed}"),
        ),
        ("user twice", format!("user=a&user=b&int_in={allowed}")),
        (
            "user and us%65r",
            format!("user=a&us%65r=b&int_in={allowed}"),
        ),
        (
            "password and PASSWORD",
            format!("password=a&PASSWORD=b&int_in={allowed}"),
        ),
    ] {
        bench
            .run(Case::form(name, body, Expect::Refused(BAD)))
            .await;
    }
    bench.finish().await;
}

#[tokio::test]
async fn xml_the_gateway_would_read_differently_is_refused() {
    let mut bench = Bench::start().await;
    let allowed_element = format!("<terminalNumber>{ALLOWED}</terminalNumber>");
    let foreign_element = format!("<terminalNumber>{FOREIGN}</terminalNumber>");
    // A reader of the raw bytes sees a comment around the foreign terminal; the gateway,
    // which percent-decodes, sees the comment end at `--%3E` and the foreign terminal after it.
    let shown_when_decoded = deal_with(&format!(
        "{allowed_element}<!-- --%3E{foreign_element}<!-- -->"
    ));
    // A reader of the raw bytes sees only the allowed terminal; decoded, the allowed one is
    // inside a comment and the foreign one is an element.
    let swapped_when_decoded = deal_with(&format!(
        "%3C!--{allowed_element}--%3E%3CterminalNumber%3E{FOREIGN}%3C/terminalNumber%3E"
    ));
    // Raw: two terminals; decoded: the allowed one commented out.
    let commented_when_decoded =
        deal_with(&format!("{foreign_element}%3C!--{allowed_element}--%3E"));
    let padded = deal_with(&format!(
        "<terminalNumber>{FOREIGN}<!--x-->{}<!--x-->{ALLOWED}</terminalNumber>",
        " ".repeat(300)
    ));
    let two_terminals = deal_with(&format!("{allowed_element}{foreign_element}"));
    let two_terminals_apart =
        deal(ALLOWED).replace("<total>", &format!("<x>{foreign_element}</x><total>"));
    let entity = deal(ALLOWED).replace("4580000000000000", "&foo;");
    let doctype = format!(
        "<!DOCTYPE ashrait [<!ENTITY t \"{ALLOWED}\">]>{}",
        deal_with("<terminalNumber>&t;</terminalNumber>")
    );
    let plain_doctype = format!("<!DOCTYPE ashrait>{}", deal(ALLOWED));
    for (name, body, expect) in [
        (
            "raw int_in, comment ended by --%3E shows a foreign terminal",
            format!("user=u&password=p&int_in={shown_when_decoded}"),
            Expect::Refused(BAD_OR_FOREIGN),
        ),
        (
            "raw int_in, %3C!-- hides the allowed terminal and shows a foreign one",
            format!("user=u&password=p&int_in={swapped_when_decoded}"),
            Expect::Refused(BAD_OR_FOREIGN),
        ),
        (
            "raw int_in, foreign terminal then %3C!-- around the allowed one",
            format!("user=u&password=p&int_in={commented_when_decoded}"),
            Expect::Refused(BAD_OR_FOREIGN),
        ),
        (
            "terminalNumber foreign, comment, 300 spaces, comment, allowed",
            format!("int_in={}", enc(&padded)),
            Expect::Refused(BAD),
        ),
        (
            "terminalNumber foreign, comment, 300 spaces, comment, allowed, raw",
            format!("int_in={padded}"),
            Expect::Refused(BAD),
        ),
        (
            "two different terminalNumbers side by side",
            format!("int_in={}", enc(&two_terminals)),
            Expect::Refused(BAD_OR_FOREIGN),
        ),
        (
            "two different terminalNumbers, one nested",
            format!("int_in={}", enc(&two_terminals_apart)),
            Expect::Refused(BAD_OR_FOREIGN),
        ),
        (
            "undefined entity &foo; in cardNo",
            format!("int_in={}", enc(&entity)),
            Expect::Refused(BAD),
        ),
        (
            "DOCTYPE defining the terminal as an entity",
            format!("int_in={}", enc(&doctype)),
            Expect::Refused(BAD),
        ),
        (
            "plain DOCTYPE",
            format!("int_in={}", enc(&plain_doctype)),
            Expect::Refused(BAD),
        ),
    ] {
        bench.run(Case::form(name, body, expect)).await;
    }
    bench.finish().await;
}

#[tokio::test]
async fn bad_percent_escapes_are_refused() {
    let mut bench = Bench::start().await;
    let encoded = enc(&deal(ALLOWED));
    for (name, body) in [
        (
            "%zz in a field name",
            format!("us%zzer=me&int_in={encoded}"),
        ),
        (
            "a field name that is only %zz",
            format!("%zz=1&int_in={encoded}"),
        ),
        (
            "%zz in a URL-encoded int_in",
            format!(
                "int_in={}",
                encoded.replace("4580000000000000", "4580%zz000000000000")
            ),
        ),
        ("a cut escape ending int_in", format!("int_in={encoded}%4")),
        (
            "%zz in a raw int_in",
            format!(
                "int_in={}",
                deal(ALLOWED).replace("4580000000000000", "4580%zz000000000000")
            ),
        ),
    ] {
        bench
            .run(Case::form(name, body, Expect::Refused(BAD)))
            .await;
    }
    bench.finish().await;
}

#[tokio::test]
async fn only_url_encoded_form_bodies_are_relayed() {
    let mut bench = Bench::start().await;
    let raw = deal(ALLOWED);
    let multipart = format!(
        "--XyZ\r\nContent-Disposition: form-data; name=\"user\"\r\n\r\nu\r\n\
         --XyZ\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\np\r\n\
         --XyZ\r\nContent-Disposition: form-data; name=\"int_in\"\r\n\r\n{raw}\r\n--XyZ--\r\n"
    );
    let form = format!("user=u&password=p&int_in={}", enc(&raw));
    bench
        .run(
            Case::form("multipart/form-data", multipart, Expect::Refused(BAD))
                .content_type(Some("multipart/form-data; boundary=XyZ")),
        )
        .await;
    bench
        .run(Case::form("no Content-Type", form.clone(), Expect::Refused(BAD)).content_type(None))
        .await;
    bench
        .run(Case::form("text/plain", form, Expect::Refused(BAD)).content_type(Some("text/plain")))
        .await;
    bench.finish().await;
}

#[tokio::test]
async fn relay_fields_in_the_query_string_are_refused() {
    let mut bench = Bench::start().await;
    let body = format!("user=u&password=p&int_in={}", enc(&deal(ALLOWED)));
    for (name, query) in [
        (
            "int%5Fin in the query",
            format!("int%5Fin={}", enc(&deal(FOREIGN))),
        ),
        ("us%65r in the query", "us%65r=x".to_owned()),
        (
            "INT_IN in the query",
            format!("INT_IN={}", enc(&deal(FOREIGN))),
        ),
        ("sessionId in the query", "sessionId=attacker".to_owned()),
    ] {
        bench
            .run(
                Case::form(name, body.clone(), Expect::Refused(BAD))
                    .path(format!("{RELAY}?{query}")),
            )
            .await;
    }
    bench.finish().await;
}

#[tokio::test]
async fn relay_path_spellings_reach_the_configured_path() {
    let mut bench = Bench::start().await;
    let body = format!("user=u&password=p&int_in={}", enc(&deal(ALLOWED)));
    for path in ["/xpo//Relay", "/xpo/./Relay", "/XPO/relay"] {
        bench
            .run(Case::form(path, body.clone(), Expect::Forwarded).path(path))
            .await;
    }
    bench
        .run(Case::form("/xpo/Relay%2F", body, Expect::Refused(BAD)).path("/xpo/Relay%2F"))
        .await;
    bench.finish().await;
}
