//! The README's "By hand" section, as a new user runs it: `payauth simulate`, then `payauth run
//! --config examples/simulators.toml` from the repository's root, then the README's Number sale,
//! CreditGuard deal and `/status`. The config's fixed ports (9001, 9002, 8081, 8082, 9901) must
//! be free; this is the only test that uses them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;

/// Kills the process when the test ends, passed or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str]) -> Running {
    Running(
        Command::new(env!("CARGO_BIN_EXE_payauth"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("payauth starts"),
    )
}

async fn listening(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    eventually(Duration::from_secs(20), || {
        std::net::TcpStream::connect(addr).is_ok()
    })
    .await
}

/// The README's deal, byte for byte.
const DEAL: &str = "user=app&password=dummy&int_in=<ashrait><request><version>2000</version><language>Eng</language><command>doDeal</command><doDeal><terminalNumber>0882819014</terminalNumber><cardNo>4580000000000000</cardNo><cardExpiration>1230</cardExpiration><total>100</total><transactionType>Debit</transactionType><creditType>RegularCredit</creditType><currency>ILS</currency><transactionCode>Phone</transactionCode><validation>AutoComm</validation></doDeal></request></ashrait>";

#[tokio::test]
async fn the_readme_by_hand_commands_make_a_sale_and_a_deal() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    assert!(
        readme.contains(DEAL),
        "the README's deal is the one tested here"
    );
    assert!(readme.contains("cargo run --release -- run --config examples/simulators.toml"));

    for port in [9001, 9002, 8081, 8082, 9901] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} is taken: this test needs the README's ports free"
        );
    }
    let _simulators = start(&["simulate"]);
    assert!(listening(9001).await && listening(9002).await, "simulators");
    let _payauth = start(&["run", "--config", "examples/simulators.toml"]);
    assert!(listening(8081).await && listening(8082).await, "payauth");

    let client = client();
    let number: SocketAddr = ([127, 0, 0, 1], 8081).into();
    let reply = post_with(
        &client,
        number,
        &format!("{REST}/CreditCardSale_Manual"),
        r#"{"Amount": 1.00, "CardNum": "4580000000000000", "CVV": "123"}"#,
        &[],
    )
    .await;
    assert!(
        approved(&reply, "CreditCardSale_Manual"),
        "{}",
        reply.text()
    );

    let request = http::Request::post("http://127.0.0.1:8082/xpo/Relay")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(DEAL.as_bytes())))
        .expect("request");
    let reply = send(&client, request).await;
    let text = reply.text();
    assert!(
        text.contains("<result>000</result>") && text.contains("Permitted transaction"),
        "{text}"
    );

    let request = http::Request::get("http://127.0.0.1:9901/status")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let status = send(&client, request).await.json();
    assert_eq!(status["gateways"][0]["metrics"]["requests_forwarded"], 1);
    assert_eq!(status["gateways"][1]["metrics"]["requests_forwarded"], 1);
    assert_eq!(status["gateways"][0]["locked"], false);
}
