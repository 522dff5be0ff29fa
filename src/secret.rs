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
