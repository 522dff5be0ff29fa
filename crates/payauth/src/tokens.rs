//! Number token renewal: the Client Admin Portal's "POST JSON" of new tokens, persisted in the
//! state dir so a restart keeps them.
//!
//! The portal posts `{"Tokens": [{"TokenID", "AccountCode", "Token", "AccountName",
//! "ExpirationDate"}]}`. payauth takes the token of the gateway's account code (the latest
//! expiring one if there are several), swaps it in, and writes it (mode 0600) to
//! `{state.dir}/token-{gateway}.json` with a fingerprint of the `token_file` contents at that
//! moment. On start, the persisted token is used as long as `token_file` still holds what it held
//! then; once the file changes (a rotated Kubernetes Secret), the file wins again: the most
//! recent change is the one in force.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::guard::Fingerprint;
use crate::secret::Secret;

/// A token received from the portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortalToken {
    /// The token.
    pub(crate) token: Secret<String>,
    /// The portal's `TokenID`, as text.
    pub(crate) token_id: Option<String>,
    /// `ExpirationDate` in Unix seconds, if it could be read.
    pub(crate) expires_at: Option<i64>,
}

// No Debug: the posted tokens are plain strings until they are wrapped in `Secret`.
#[derive(Deserialize)]
struct Posted {
    #[serde(rename = "Tokens")]
    tokens: Vec<PostedToken>,
}

#[derive(Deserialize)]
struct PostedToken {
    #[serde(rename = "TokenID", default)]
    token_id: Option<serde_json::Value>,
    #[serde(rename = "AccountCode")]
    account_code: String,
    #[serde(rename = "Token")]
    token: String,
    #[serde(rename = "ExpirationDate", default)]
    expiration_date: Option<serde_json::Value>,
}

/// Reads the portal's JSON and picks the token of `account_code`. The error text never quotes
/// the body.
pub(crate) fn parse_portal(body: &[u8], account_code: &str) -> Result<PortalToken, String> {
    let posted: Posted = serde_json::from_slice(body).map_err(|e| {
        format!(
            "not the portal's token JSON (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let chosen = posted
        .tokens
        .into_iter()
        .filter(|t| t.account_code.trim().eq_ignore_ascii_case(account_code))
        .map(|t| {
            let expires_at = t.expiration_date.as_ref().and_then(parse_expiration);
            (t, expires_at)
        })
        .max_by_key(|(_, expires_at)| expires_at.unwrap_or(i64::MIN))
        .ok_or_else(|| format!("no token for account {account_code} in the post"))?;
    let (token, expires_at) = chosen;
    let value = token.token.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token for this account is empty or not printable ASCII".into());
    }
    Ok(PortalToken {
        token: Secret::new(value.to_owned()),
        token_id: token.token_id.map(|v| match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        }),
        expires_at,
    })
}

/// Reads an `ExpirationDate`: ISO 8601 (`2027-05-01T00:00:00`, as the portal sends it: without
/// an offset it is read as UTC, see [`crate::date::parse_timestamp`]), WCF's
/// `/Date(ms[+hhmm])/`, US `M/D/YYYY [h:mm[:ss] AM|PM]` (UTC too), or Unix seconds.
pub(crate) fn parse_expiration(value: &serde_json::Value) -> Option<i64> {
    if let Some(n) = value.as_i64() {
        return Some(n);
    }
    let s = value.as_str()?.trim();
    if let Some(wcf) = s.strip_prefix("/Date(").and_then(|r| r.strip_suffix(")/")) {
        // Milliseconds since the epoch (UTC); the optional offset after them is informational.
        let sign = usize::from(wcf.starts_with('-'));
        let end = sign
            + wcf[sign..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(wcf.len() - sign);
        return wcf[..end].parse::<i64>().ok().map(|ms| ms.div_euclid(1000));
    }
    crate::date::parse_timestamp(s).or_else(|| parse_us_date(s))
}

/// `12/14/2023`, `12/14/2023 2:56:29 PM`, `12/14/2023 14:56`, read as UTC.
fn parse_us_date(s: &str) -> Option<i64> {
    use time::format_description::parse_borrowed;
    use time::{Date, PrimitiveDateTime};
    const DAY: &str = "[month padding:none]/[day padding:none]/[year]";
    const TIMES: [&str; 4] = [
        "[hour repr:12 padding:none]:[minute]:[second] [period case_sensitive:false]",
        "[hour repr:12 padding:none]:[minute] [period case_sensitive:false]",
        "[hour padding:none]:[minute]:[second]",
        "[hour padding:none]:[minute]",
    ];
    let at = TIMES.iter().find_map(|time| {
        let format = format!("{DAY} {time}");
        PrimitiveDateTime::parse(s, &parse_borrowed::<2>(&format).ok()?).ok()
    });
    let at = match at {
        Some(at) => at,
        None => Date::parse(s, &parse_borrowed::<2>(DAY).ok()?)
            .ok()?
            .midnight(),
    };
    Some(at.assume_utc().unix_timestamp())
}

#[derive(Serialize, Deserialize)]
struct PersistedToken {
    account_code: String,
    token: String,
    token_id: Option<String>,
    expires_at: Option<i64>,
    /// Fingerprint of the `token_file` contents when this token arrived.
    file_fingerprint: String,
}

/// Where the persisted token of `gateway` lives.
pub(crate) fn path(state_dir: &Path, gateway: &str) -> PathBuf {
    state_dir.join(format!("token-{gateway}.json"))
}

fn file_fingerprint(file_token: &Secret<String>) -> String {
    Fingerprint::of(&[b"token-file", file_token.expose().as_bytes()]).to_hex()
}

/// Persists `token` (mode 0600), noting what `token_file` held at the time.
pub(crate) fn save(
    state_dir: &Path,
    gateway: &str,
    account_code: &str,
    token: &PortalToken,
    file_token: &Secret<String>,
) -> std::io::Result<()> {
    let record = PersistedToken {
        account_code: account_code.to_owned(),
        token: token.token.expose().clone(),
        token_id: token.token_id.clone(),
        expires_at: token.expires_at,
        file_fingerprint: file_fingerprint(file_token),
    };
    let bytes = serde_json::to_vec_pretty(&record)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    crate::files::write_atomically(&path(state_dir, gateway), &bytes)
}

/// The persisted token of `gateway`, if there is one for `account_code` and `token_file` has not
/// changed since it arrived. An error when the file is there but cannot be read: the caller must
/// not take that for "no renewed token" and go back to the file's (possibly revoked) one.
pub(crate) fn load(
    state_dir: &Path,
    gateway: &str,
    account_code: &str,
    file_token: &Secret<String>,
) -> std::io::Result<Option<PortalToken>> {
    let path = path(state_dir, gateway);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("cannot read the renewed token {}: {e}", path.display()),
            ))
        }
    };
    // The message names the file and the position only: the content is a token.
    let record: PersistedToken = serde_json::from_slice(&bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the renewed token {} is corrupt (line {}, column {})",
                path.display(),
                e.line(),
                e.column()
            ),
        )
    })?;
    if !record.account_code.eq_ignore_ascii_case(account_code)
        || record.file_fingerprint != file_fingerprint(file_token)
    {
        return Ok(None);
    }
    Ok(Some(PortalToken {
        token: Secret::new(record.token),
        token_id: record.token_id,
        expires_at: record.expires_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_accounts_latest_token() {
        let body = br#"{"Tokens": [
            {"TokenID": 1, "AccountCode": "OTHER", "Token": "AAAA", "AccountName": "x", "ExpirationDate": "2030-01-01T00:00:00"},
            {"TokenID": 2, "AccountCode": "EP9116875", "Token": "OLDER", "AccountName": "x", "ExpirationDate": "2027-01-01T00:00:00"},
            {"TokenID": 3, "AccountCode": "ep9116875", "Token": "NEWER", "AccountName": "x", "ExpirationDate": "/Date(1830297600000)/"}
        ]}"#;
        let token = parse_portal(body, "EP9116875").expect("token");
        assert_eq!(token.token.expose(), "NEWER");
        assert_eq!(token.token_id.as_deref(), Some("3"));
        assert_eq!(token.expires_at, Some(1_830_297_600));
        assert!(parse_portal(body, "NOPE").is_err());
        assert!(parse_portal(b"{\"Tokens\": 5}", "EP9116875").is_err());
        let err = parse_portal(b"not json SECRETTOKEN", "EP9116875").expect_err("bad");
        assert!(!err.contains("SECRETTOKEN"));
    }

    #[test]
    fn expiration_formats() {
        let v = |s: &str| parse_expiration(&serde_json::Value::String(s.into()));
        assert_eq!(v("2023-12-14T14:56:29Z"), Some(1_702_565_789));
        assert_eq!(v("12/14/2023 2:56:29 PM"), Some(1_702_565_789));
        assert_eq!(v("12/14/2023"), Some(1_702_512_000));
        assert_eq!(v("12/14/2023 14:56"), Some(1_702_565_760));
        assert_eq!(v("2/31/2027"), None);
        assert_eq!(v("/Date(1702565789000)/"), Some(1_702_565_789));
        assert_eq!(v("/Date(1702565789000-0500)/"), Some(1_702_565_789));
        assert_eq!(v("/Date(1702565789000+0200)/"), Some(1_702_565_789));
        assert_eq!(v("soon"), None);
        // The portal's own form: no offset, read as UTC.
        assert_eq!(v("2027-05-01T00:00:00"), Some(1_809_129_600));
        assert_eq!(v("2026-01-01T00:00:00+02:00"), Some(1_767_218_400));
        assert_eq!(v("2026-01-01T00:00:00-05:00"), Some(1_767_243_600));
    }

    #[test]
    fn persisted_token_yields_to_a_changed_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = PortalToken {
            token: Secret::from("NEW"),
            token_id: None,
            expires_at: Some(1),
        };
        let file = Secret::from("FROM-FILE");
        save(dir.path(), "number", "EP1", &token, &file).expect("save");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path(dir.path(), "number"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let load = |account: &str, file: &Secret<String>| {
            load(dir.path(), "number", account, file).expect("readable")
        };
        assert_eq!(load("EP1", &file), Some(token));
        assert_eq!(load("EP1", &Secret::from("ROTATED")), None);
        assert_eq!(load("OTHER", &file), None);
        assert_eq!(
            super::load(dir.path(), "absent", "EP1", &file).expect("no file"),
            None
        );

        // A file that cannot be read is an error, not "no renewed token": the caller keeps the
        // credentials in force rather than go back to the file's token. Its message holds no
        // token.
        std::fs::write(
            path(dir.path(), "number"),
            b"{\"token\": \"SECRET-TOKEN\", broken",
        )
        .expect("write");
        let error = super::load(dir.path(), "number", "EP1", &file).expect_err("corrupt");
        assert!(!error.to_string().contains("SECRET-TOKEN"), "{error}");
    }
}
