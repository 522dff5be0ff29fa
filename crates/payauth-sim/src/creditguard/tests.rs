//! Unit tests of the simulator's own reading and answers.

use bytes::Bytes;

use super::judge::new_session_id;
use super::wire::{Answer, Form, IntIn, Scope};
use super::*;

#[test]
fn session_ids_look_like_uuids() {
    let id = new_session_id();
    assert_eq!(id.len(), 36);
    assert_eq!(id.matches('-').count(), 4);
    assert_ne!(id, new_session_id());
}

#[test]
fn forms_are_read_as_a_servlet_reads_them() {
    let form = Form::read(&Bytes::from_static(
        b"user=a%20b&password=p+q&user=second&flag&int_in=%3Cx%3E",
    ));
    let names: Vec<_> = form.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["user", "password", "user", "flag", "int_in"]);
    assert_eq!(
        form.value("user"),
        Some(&b"a b"[..]),
        "the first value wins"
    );
    assert_eq!(form.value("password"), Some(&b"p q"[..]));
    assert_eq!(form.value("int_in"), Some(&b"<x>"[..]));
    assert_eq!(form.value("USER"), None, "getParameter is case-sensitive");
}

#[test]
fn a_raw_int_in_keeps_its_ampersands_until_a_relay_field() {
    let body = "sessionId=s1&int_in=<a>x &amp; y&b=1</a>&Password=p";
    let form = Form::read(&Bytes::from(body));
    let int_in = form.field("int_in").expect("int_in");
    assert_eq!(&int_in.raw_value[..], b"<a>x &amp; y&b=1</a>");
    assert!(form.fields.iter().any(|f| f.is_like("password")));
    // An encoded int_in is cut at every `&`, as any form parser would.
    let form = Form::read(&Bytes::from("int_in=%3Ca%3E&b=1"));
    assert_eq!(form.value("int_in"), Some(&b"<a>"[..]));
    assert_eq!(form.value("b"), Some(&b"1"[..]));
}

#[test]
fn int_in_is_read_for_command_terminal_and_deal_fields() {
    let xml = b"<ashrait><request><command> doDeal </command><doDeal>\
        <terminalNumber>0882819014</terminalNumber><validation>AutoComm</validation>\
        <transactionType>Debit</transactionType><cardNo>4580000000000000</cardNo>\
        </doDeal></request></ashrait>";
    let int_in = IntIn::read(xml).expect("readable");
    assert_eq!(int_in.command, "doDeal");
    assert_eq!(int_in.terminal.as_deref(), Some("0882819014"));
    assert_eq!(int_in.validation.as_deref(), Some("AutoComm"));
    assert_eq!(int_in.transaction_type.as_deref(), Some("Debit"));
    for bad in [
        &b"<ashrait><request><command>doDeal</command></request>"[..],
        b"<ashrait><request><command>doDeal</command></request></ashrait><x/>",
        b"<ashrait><request><command>&xxe;</command></request></ashrait>",
        b"<ashrait><request><terminalNumber>1</terminalNumber></request></ashrait>",
        b"not xml",
    ] {
        assert_eq!(IntIn::read(bad), None, "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn scopes_are_read_and_validated() {
    let read = |scope: &str| {
        let xml = format!(
            "<ashrait><request><command>getSessionId</command><getSessionId>\
             <terminalNumber>1</terminalNumber>{scope}</getSessionId></request></ashrait>"
        );
        IntIn::read(xml.as_bytes()).expect("readable").scope
    };
    assert_eq!(read(""), None);
    assert_eq!(read("<scope/>"), Some(ReceivedScope::default()));
    let received =
        read("<scope><scopeCmd>doDeal</scopeCmd><validation>autoComm</validation></scope>")
            .expect("present");
    assert_eq!(received.validation.as_deref(), Some("autoComm"));
    let scope = Scope::check(&received).expect("valid");
    assert_eq!(scope.cmd, Some("doDeal"));
    assert_eq!(scope.validation, Some("AutoComm"));
    let deal = |validation: &str| IntIn {
        command: "doDeal".into(),
        validation: Some(validation.into()),
        ..IntIn::default()
    };
    assert!(scope.allows(&deal("AutoComm")));
    assert!(!scope.allows(&deal("Verify")));
    for bad in [
        "<scope><validation>AutoComm</validation></scope>",
        "<scope><scopeCmd>doNothing</scopeCmd></scope>",
    ] {
        let received = read(bad).expect("present");
        assert!(Scope::check(&received).is_err(), "{bad}");
    }
}

#[test]
fn answers_are_iso_8859_8_with_the_result() {
    let answer = Answer::error(ERR_SESSION_TIMEOUT, "session timeout").render("doDeal");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("<result>456</result>"), "{text}");
    let ok = Answer {
        result: "000".into(),
        message: "Permitted transaction".into(),
        command_body: None,
        tran_id: Some(1),
    }
    .render("doDeal");
    assert!(ok
        .windows(HEBREW_PERMITTED.len())
        .any(|w| w == HEBREW_PERMITTED));
    assert!(std::str::from_utf8(&ok).is_err(), "not UTF-8 on purpose");
}

#[test]
fn debug_output_hides_secrets() {
    let config = CreditGuardSimConfig::default();
    assert!(!format!("{config:?}").contains("s3cret"));
    let call = ReceivedCall {
        kind: ReceivedKind::Call,
        body: Bytes::from_static(b"sessionId=abc&int_in=<cardNo>4580000000000000</cardNo>"),
        field_names: vec!["sessionId".into(), "int_in".into()],
        int_in: Some(Bytes::from_static(b"<cardNo>4580000000000000</cardNo>")),
        session_id: Some("abc-session".into()),
        command: Some("doDeal".into()),
        terminal: None,
        scope: None,
        issued_session: None,
        result: "000".into(),
    };
    let shown = format!("{call:?}");
    assert!(
        !shown.contains("4580") && !shown.contains("abc-session"),
        "{shown}"
    );
}

#[test]
fn hostile_int_in_is_unreadable_not_a_panic() {
    for bad in [
        &b"<![CDATA[x]]>"[..],
        b"<ashrait><request><command>doDeal</command></request></ashrait><![CDATA[x]]>",
        b"<![CDATA[x]]><ashrait><request><command>doDeal</command></request></ashrait>",
        b"text<ashrait/>",
        b"",
    ] {
        assert_eq!(IntIn::read(bad), None, "{}", String::from_utf8_lossy(bad));
    }
    // An empty CDATA is no value, like an empty element.
    let empty =
        IntIn::read(b"<ashrait><request><command><![CDATA[ ]]></command></request></ashrait>");
    assert_eq!(empty, None, "no command");
    // `<scope></scope>` is a scope, as `<scope/>` is.
    let xml = b"<ashrait><request><command>getSessionId</command><getSessionId><scope>\
        </scope></getSessionId></request></ashrait>";
    assert_eq!(
        IntIn::read(xml).expect("readable").scope,
        Some(ReceivedScope::default())
    );
    // Deal fields count under the command's own element only, the first of each.
    let xml = b"<ashrait><request><command>doDeal</command><other><validation>Verify\
        </validation></other><doDeal><validation>AutoComm</validation><validation>Token\
        </validation></doDeal></request></ashrait>";
    assert_eq!(
        IntIn::read(xml).expect("readable").validation.as_deref(),
        Some("AutoComm")
    );
}

#[test]
fn form_names_are_trimmed_as_java_trims_and_debug_shows_no_value() {
    let form = Form::read(&Bytes::from_static(
        b"%01password=p&%C2%A0user=u&int_in=%3Cx%2F%3E",
    ));
    assert!(
        form.fields[0].is_like("password"),
        "bytes up to 0x20 are trimmed"
    );
    assert!(!form.fields[1].is_like("user"), "a no-break space is not");
    let shown = format!("{form:?}");
    assert!(
        !shown.contains("password") && !shown.contains("%3C"),
        "{shown}"
    );
}
