//! The config file as serde reads it: one strict type per table, one per gateway kind.
//!
//! Every field is optional here, so any subset of a table's keys deserializes; defaults, required
//! keys and cross-key rules are [`super::validate`]'s. Each type denies unknown fields, which is
//! what makes a key of the other gateway kind an error. Values that have a shape of their own
//! (addresses, URLs, seconds, dates, `protocol`, `scope`) are parsed here, once.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;

use super::source::keys_of;
use crate::creditguard::Scope;

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<Addr>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) ready_requires_unlocked: Option<bool>,
}

/// `[state]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) dir: Option<PathBuf>,
}

/// `[proxy]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    pub(super) shutdown_grace_secs: Option<Seconds>,
    pub(super) secret_poll_secs: Option<Seconds>,
    pub(super) workers: Option<Count<usize>>,
}

/// `[shared]`: the store replicas behind one egress IP share.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShared {
    pub(super) redis_url: Option<RedisUrl>,
    pub(super) username: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) egress_id: Option<String>,
    pub(super) connect_timeout_ms: Option<Count<u64>>,
    pub(super) op_timeout_ms: Option<Count<u64>>,
    pub(super) key_poll_ms: Option<Count<u64>>,
}

/// A Redis URL: `redis://host[:port][/db]` or `rediss://...` (TLS), with no credentials in it.
#[derive(Debug, Clone)]
pub(super) struct RedisUrl(pub(super) String);

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Never echoed back: a misplaced password may be in it.
        const EXPECTED: &str = "expected a URL like redis://host:6379/0 or rediss://host:6380/0, \
            with no user, password, query or fragment";
        let text = String::deserialize(d)?;
        let authority = text.split_once("://").map_or("", |(_, rest)| {
            rest.split(['/', '?', '#']).next().unwrap_or("")
        });
        if authority.contains('@') {
            return Err(de::Error::custom(
                "the URL must not hold a user or password: use username and password_file",
            ));
        }
        let good = text.parse::<Uri>().ok().filter(|uri| {
            let db = uri.path().trim_start_matches('/');
            matches!(uri.scheme_str(), Some("redis" | "rediss"))
                && uri.authority().is_some_and(|a| !a.host().is_empty())
                && uri.query().is_none()
                && !text.contains('#')
                && (db.is_empty() || db.parse::<u16>().is_ok())
        });
        match good {
            Some(_) => Ok(RedisUrl(text)),
            None => Err(de::Error::custom(EXPECTED)),
        }
    }
}

/// The keys every `[[gateway]]` has, whatever its kind.
///
/// serde cannot flatten these into the kind types without losing `deny_unknown_fields`, so a
/// gateway's table is split by key before it is read: these keys here, `kind` and the rest into
/// [`RawKind`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCommon {
    pub(super) name: Option<String>,
    pub(super) listen: Option<Addr>,
    pub(super) upstream: Option<BaseUrl>,
    pub(super) auth_failure_budget: Option<Count<u32>>,
    pub(super) max_request_bytes: Option<Count<usize>>,
    pub(super) inspect_limit_bytes: Option<Count<usize>>,
    pub(super) connect_timeout_secs: Option<Seconds>,
    pub(super) source_address: Option<Ip>,
    pub(super) request_timeout_secs: Option<Seconds>,
    pub(super) max_concurrency: Option<Count<usize>>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) client_cert_file: Option<PathBuf>,
    pub(super) client_key_file: Option<PathBuf>,
}

/// A gateway's kind and the keys only that kind takes.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind")]
pub(super) enum RawKind {
    /// `kind = "number"`.
    #[serde(rename = "number")]
    Number(RawNumber),
    /// `kind = "creditguard"`.
    #[serde(rename = "creditguard")]
    CreditGuard(RawCreditGuard),
}

/// A gateway kind, before its keys are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KindName {
    Number,
    CreditGuard,
}

impl KindName {
    pub(super) const ALL: [KindName; 2] = [KindName::Number, KindName::CreditGuard];

    /// How `kind` spells it (the tag of [`RawKind`]).
    pub(super) fn as_str(self) -> &'static str {
        match self {
            KindName::Number => "number",
            KindName::CreditGuard => "creditguard",
        }
    }

    /// The keys only this kind takes.
    pub(super) fn keys(self) -> &'static [&'static str] {
        match self {
            KindName::Number => keys_of::<RawNumber>(),
            KindName::CreditGuard => keys_of::<RawCreditGuard>(),
        }
    }
}

/// A Number gateway's own keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNumber {
    pub(super) protocol: Option<RawProtocol>,
    pub(super) auth_path: Option<String>,
    pub(super) soap_namespace: Option<String>,
    pub(super) soap_auth_action: Option<String>,
    pub(super) soap_session_element: Option<String>,
    pub(super) account_code: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) hmac_secret_file: Option<PathBuf>,
    pub(super) user_id: Option<UserId>,
    pub(super) token_expires_at: Option<Expiry>,
    pub(super) renewal_min_key_age_secs: Option<Seconds>,
}

/// A CreditGuard gateway's own keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCreditGuard {
    pub(super) relay_path: Option<String>,
    pub(super) user: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) terminals: Option<Vec<String>>,
    pub(super) scope: Option<ScopeSetting>,
    pub(super) pool_min: Option<Count<usize>>,
    pub(super) pool_max: Option<Count<usize>>,
    pub(super) session_expiry_margin_secs: Option<Seconds>,
    pub(super) session_fetch_concurrency: Option<Count<u32>>,
    pub(super) session_wait_secs: Option<Seconds>,
}

/// `protocol`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawProtocol {
    Rest,
    Soap,
}

impl From<RawProtocol> for crate::number::Protocol {
    fn from(p: RawProtocol) -> Self {
        match p {
            RawProtocol::Rest => crate::number::Protocol::Rest,
            RawProtocol::Soap => crate::number::Protocol::Soap,
        }
    }
}

/// Deserializes through `FromStr`, naming what was expected when it fails.
fn from_str<'de, D, T>(deserializer: D, expected: &'static str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
{
    struct Text<T>(&'static str, std::marker::PhantomData<T>);
    impl<T: std::str::FromStr> Visitor<'_> for Text<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            v.parse()
                .map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
        }
    }
    deserializer.deserialize_str(Text(expected, std::marker::PhantomData))
}

/// `scope`: `none`, `command` or `full`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ScopeSetting(pub(super) Scope);

impl<'de> Deserialize<'de> for ScopeSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "\"none\", \"command\" or \"full\"").map(ScopeSetting)
    }
}

/// A socket address such as `127.0.0.1:8081`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Addr(pub(super) SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "an address like 127.0.0.1:8081").map(Addr)
    }
}

/// An IP address (no port).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ip(pub(super) std::net::IpAddr);

impl<'de> Deserialize<'de> for Ip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "an IP address like 10.0.0.7 (no port)").map(Ip)
    }
}

/// A gateway's base URL: `http` or `https`, a host, no path.
#[derive(Debug, Clone)]
pub(super) struct BaseUrl(pub(super) Uri);

impl<'de> Deserialize<'de> for BaseUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "a base URL like https://host[:port] (no path)";
        let text = String::deserialize(d)?;
        match text.parse::<Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http" | "https"))
                    && u.authority().is_some()
                    && matches!(u.path(), "" | "/") =>
            {
                Ok(BaseUrl(u))
            }
            _ => Err(de::Error::invalid_value(Unexpected::Str(&text), &EXPECTED)),
        }
    }
}

/// A whole number, 0 or more (serde's own message would say "expected usize").
#[derive(Debug, Clone, Copy)]
pub(super) struct Count<T>(pub(super) T);

impl<'de, T: TryFrom<u64>> Deserialize<'de> for Count<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<T: TryFrom<u64>> Visitor<'_> for V<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number, 0 or more")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
                T::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
                let n =
                    u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))?;
                self.visit_u64(n)
            }
        }
        d.deserialize_u64(V(std::marker::PhantomData)).map(Count)
    }
}

/// A number of seconds, whole or not, at least zero.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seconds(pub(super) Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // f64 accepts TOML integers too (`shutdown_grace_secs = 25`).
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs)
            .map(Seconds)
            .map_err(|_| de::Error::invalid_value(Unexpected::Float(secs), &"seconds, 0 or more"))
    }
}

/// Number's signing user id: an integer, or a string of digits (as the portal shows it).
#[derive(Debug, Clone, Copy)]
pub(super) struct UserId(pub(super) u64);

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = u64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a user id (a number, or a string of digits)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
                Ok(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
                u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
                v.trim()
                    .parse()
                    .map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V).map(UserId)
    }
}

/// When a token expires, in Unix seconds: a TOML date-time, the same as a string (see
/// [`super::parse_timestamp`]: no offset means UTC), or Unix seconds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Expiry(pub(super) i64);

impl<'de> Deserialize<'de> for Expiry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "a date like 2027-05-01T00:00:00Z or Unix seconds";
        // Through toml's own value type: it is the one that knows how a TOML date-time travels
        // through serde.
        let text = match toml::Value::deserialize(d)? {
            toml::Value::Integer(secs) => return Ok(Expiry(secs)),
            toml::Value::String(s) => s,
            toml::Value::Datetime(dt) => dt.to_string(),
            other => {
                return Err(de::Error::invalid_type(
                    Unexpected::Other(other.type_str()),
                    &EXPECTED,
                ))
            }
        };
        crate::date::parse_timestamp(&text)
            .map(Expiry)
            .ok_or_else(|| de::Error::invalid_value(Unexpected::Str(&text), &EXPECTED))
    }
}
