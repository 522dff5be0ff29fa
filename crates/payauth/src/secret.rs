//! [`Secret<T>`]: a value that never shows itself.
//!
//! Tokens, passwords, HMAC secrets, session keys and session ids are wrapped in `Secret` as soon
//! as they are read. `Secret` has a redacted `Debug`, no `Display` and no `Serialize`, so a secret
//! can reach a log line, an error message or a metric label only through an explicit
//! [`Secret::expose`], which is easy to audit.

use std::fmt;

/// A value whose `Debug` output is redacted and which has no `Display`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub const fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself. Every call site is a place where the secret leaves its wrapper.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret<String> {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret<String> {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::from("2148B239CF6846BDA5D141BF4A4CFBE8");
        let shown = format!("{s:?} {s:#?}");
        assert!(!shown.contains("2148B239"), "{shown}");
        assert!(shown.contains("redacted"));
        assert_eq!(s.expose(), "2148B239CF6846BDA5D141BF4A4CFBE8");
    }
}

/// Every type that holds a secret, formatted with `{:?}` and `{:#?}`: none shows it.
#[cfg(test)]
mod every_holder {
    use std::sync::Arc;

    use bytes::Bytes;

    use crate::creditguard::form::RelayForm;
    use crate::creditguard::pool::{Lease, SessionToken};
    use crate::creditguard::wire::{parse_get_session, SessionAnswer};
    use crate::creditguard::{CreditGuardConfig, CreditGuardCredentials, CreditGuardSessionLayer};
    use crate::number::{NumberAuthLayer, NumberConfig, NumberCredentials, Signer};

    const TOKEN: &str = "TOKEN2148B239CF6846BDA5D141BF4A4C";
    const HMAC: &str = "7D55DBB3D691C9E0FDF341E4AB38C3C9";
    const PASSWORD: &str = "Pa55word-Secret";
    const SESSION: &str = "3e4cb361-0465-44db-9d46-bd393f0e120d";
    const SESS_KEY: &str = "B9F24903C3BA4770AE303032303541303032353437";
    const CARD: &str = "4580000000000000";

    fn assert_hidden(what: &str, shown: String) {
        for secret in [TOKEN, HMAC, PASSWORD, SESSION, SESS_KEY, CARD] {
            assert!(!shown.contains(secret), "{what} shows a secret: {shown}");
        }
    }

    fn both<T: std::fmt::Debug>(value: &T) -> String {
        format!("{value:?} {value:#?}")
    }

    #[test]
    fn no_debug_output_shows_a_secret() {
        let number = NumberCredentials::new("EP9116875", TOKEN).with_signing(HMAC, 2547);
        assert_hidden("NumberCredentials", both(&number));
        let upstream: http::Uri = "http://127.0.0.1:1".parse().expect("uri");
        let layer = NumberAuthLayer::new(NumberConfig::rest("n", upstream.clone()), number.clone())
            .expect("layer");
        assert_hidden("NumberAuthLayer", both(&layer));
        assert_hidden("NumberHandle", both(&layer.handle()));
        let signer =
            Signer::new(&number.signing.as_ref().expect("signing").secret, 2547).expect("signer");
        assert_hidden("Signer", both(&signer));
        let key = crate::number::session_key::KeyState::new(
            super::Secret::new(SESS_KEY.to_owned()),
            1,
            Some(signer),
            tokio::time::Instant::now(),
        )
        .expect("key");
        assert_hidden("KeyState", both(&key));

        let cg = CreditGuardCredentials::new("merchant", PASSWORD);
        assert_hidden("CreditGuardCredentials", both(&cg));
        let mut config = CreditGuardConfig::new("cg", upstream);
        config.terminals = vec!["0882819014".into()];
        let cg_layer = CreditGuardSessionLayer::new(config, cg).expect("layer");
        assert_hidden("CreditGuardSessionLayer", both(&cg_layer));
        assert_hidden("CreditGuardHandle", both(&cg_layer.handle()));

        let answer = parse_get_session(
            format!(
                "<ashrait><response><command>getSessionId</command><result>000</result>\
                 <getSessionId><sessionId>{SESSION}</sessionId><sessionExpiration>600\
                 </sessionExpiration></getSessionId></response></ashrait>"
            )
            .as_bytes(),
        );
        assert!(matches!(answer, SessionAnswer::Issued { .. }));
        assert_hidden("SessionAnswer", both(&answer));
        let token = Arc::new(SessionToken::new(super::Secret::new(SESSION.to_owned())));
        assert_hidden("SessionToken", both(&token));
        let lease = Lease {
            token,
            reusable: false,
        };
        assert_hidden("Lease", both(&lease));

        let form = RelayForm::parse(Bytes::from(format!(
            "user=merchant&password={PASSWORD}&int_in=%3Cashrait%3E%3CcardNo%3E{CARD}%3C%2FcardNo%3E%3C%2Fashrait%3E"
        )))
        .expect("form");
        assert_hidden("RelayForm", both(&form));
        for field in form.fields() {
            assert_hidden("Field", both(&field));
        }

        let portal = crate::tokens::parse_portal(
            format!(
                r#"{{"Tokens":[{{"TokenID":7,"AccountCode":"EP9116875","Token":"{TOKEN}","ExpirationDate":"2027-05-01T00:00:00"}}]}}"#
            )
            .as_bytes(),
            "EP9116875",
        )
        .expect("portal token");
        assert_hidden("PortalToken", both(&portal));
    }
}
