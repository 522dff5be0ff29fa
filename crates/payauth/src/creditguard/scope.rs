//! Session scopes: which `getSessionId` scope a request needs, as typed values.
//!
//! CreditGuard can restrict a session to one command (`scopeCmd`) and, for `doDeal`, to one
//! `validation` and `transactionType`. The config's [`Scope`] decides how much of that payauth
//! asks for; [`SessionScope`] is what it asks for one request, and part of the pool key.

use std::fmt;
use std::str::FromStr;

use super::int_in::IntIn;

/// How narrowly payauth scopes the sessions it requests (config `scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Scope {
    /// No `<scope>`: a session may be used for any command.
    None,
    /// `scopeCmd` for the commands the gateway accepts as a scope; others get no scope.
    #[default]
    Command,
    /// `scopeCmd`, and for `doDeal` also the request's `validation` and `transactionType`.
    Full,
}

impl Scope {
    /// The config spelling: `none`, `command` or `full`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::None => "none",
            Scope::Command => "command",
            Scope::Full => "full",
        }
    }

    /// The scope to request for a call described by `int_in`.
    pub fn session_scope(self, int_in: &IntIn) -> SessionScope {
        let cmd = match self {
            Scope::None => None,
            Scope::Command | Scope::Full => ScopeCmd::parse(&int_in.command),
        };
        let (validation, transaction_type) = match (self, cmd) {
            (Scope::Full, Some(ScopeCmd::DoDeal)) => (
                int_in.validation.as_deref().and_then(Validation::parse),
                int_in
                    .transaction_type
                    .as_deref()
                    .and_then(TransactionType::parse),
            ),
            _ => (None, None),
        };
        SessionScope {
            cmd,
            validation,
            transaction_type,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `scope` setting that is not `none`, `command` or `full`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scope must be \"none\", \"command\" or \"full\"")]
pub struct ParseScopeError;

impl FromStr for Scope {
    type Err = ParseScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            s if s.eq_ignore_ascii_case("none") => Ok(Scope::None),
            s if s.eq_ignore_ascii_case("command") => Ok(Scope::Command),
            s if s.eq_ignore_ascii_case("full") => Ok(Scope::Full),
            _ => Err(ParseScopeError),
        }
    }
}

macro_rules! vocabulary {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every value, in the vendor's order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The vendor's spelling.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// Reads a value, ignoring case and surrounding whitespace (the vendor's own
            /// examples disagree on case).
            pub fn parse(text: &str) -> Option<Self> {
                let text = text.trim();
                Self::ALL.iter().copied().find(|v| v.as_str().eq_ignore_ascii_case(text))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

vocabulary! {
    /// The commands the gateway accepts as a session's `scopeCmd`.
    ScopeCmd {
        /// `doDeal`.
        DoDeal = "doDeal",
        /// `addCgInvoice`.
        AddCgInvoice = "addCgInvoice",
        /// `cancelDeal`.
        CancelDeal = "cancelDeal",
        /// `inquireInvoice`.
        InquireInvoice = "inquireInvoice",
        /// `refundCgInvoice`.
        RefundCgInvoice = "refundCgInvoice",
        /// `refundDeal`.
        RefundDeal = "refundDeal",
        /// `transmitInquire`.
        TransmitInquire = "transmitInquire",
        /// `transmitTerminal`.
        TransmitTerminal = "transmitTerminal",
    }
}

vocabulary! {
    /// `doDeal`'s `validation` values.
    Validation {
        /// `AutoComm`.
        AutoComm = "AutoComm",
        /// `Verify`.
        Verify = "Verify",
        /// `Normal`.
        Normal = "Normal",
        /// `Token`.
        Token = "Token",
        /// `TxnSetup`.
        TxnSetup = "TxnSetup",
        /// `AutoCommHold`.
        AutoCommHold = "AutoCommHold",
        /// `AutoCommRelease`.
        AutoCommRelease = "AutoCommRelease",
    }
}

vocabulary! {
    /// `doDeal`'s `transactionType` values.
    TransactionType {
        /// `Debit`.
        Debit = "Debit",
        /// `Credit`.
        Credit = "Credit",
        /// `Forced`.
        Forced = "Forced",
        /// `CashBack`.
        CashBack = "CashBack",
        /// `Cash`.
        Cash = "Cash",
        /// `RecurringDebit`.
        RecurringDebit = "RecurringDebit",
        /// `BalanceEnquiry`.
        BalanceEnquiry = "BalanceEnquiry",
        /// `Load`.
        Load = "Load",
        /// `Discharge`.
        Discharge = "Discharge",
    }
}

/// The `<scope>` of one `getSessionId`: what the session may be used for.
///
/// `validation` and `transactionType` are only ever set together with `cmd` (the gateway
/// requires `scopeCmd` with them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct SessionScope {
    /// `scopeCmd`; `None` = no `<scope>` element at all.
    pub cmd: Option<ScopeCmd>,
    /// `validation` (only with `cmd`).
    pub validation: Option<Validation>,
    /// `transactionType` (only with `cmd`).
    pub transaction_type: Option<TransactionType>,
}

impl SessionScope {
    /// No scope: the session is good for any command.
    pub const UNSCOPED: SessionScope = SessionScope {
        cmd: None,
        validation: None,
        transaction_type: None,
    };

    /// Whether a session with this scope may serve a call described by `int_in` (what the
    /// simulator enforces).
    pub fn allows(&self, int_in: &IntIn) -> bool {
        let Some(cmd) = self.cmd else {
            return true;
        };
        if !cmd.as_str().eq_ignore_ascii_case(int_in.command.trim()) {
            return false;
        }
        let matches = |want: Option<&'static str>, got: Option<&str>| match want {
            None => true,
            Some(want) => got.is_some_and(|g| want.eq_ignore_ascii_case(g.trim())),
        };
        matches(
            self.validation.map(Validation::as_str),
            int_in.validation.as_deref(),
        ) && matches(
            self.transaction_type.map(TransactionType::as_str),
            int_in.transaction_type.as_deref(),
        )
    }
}

impl fmt::Display for SessionScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.cmd {
            None => f.write_str("unscoped"),
            Some(cmd) => {
                f.write_str(cmd.as_str())?;
                if let Some(v) = self.validation {
                    write!(f, "/{v}")?;
                }
                if let Some(t) = self.transaction_type {
                    write!(f, "/{t}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int_in(command: &str, validation: Option<&str>, tt: Option<&str>) -> IntIn {
        IntIn {
            command: command.into(),
            terminal: Some("0882819014".into()),
            validation: validation.map(Into::into),
            transaction_type: tt.map(Into::into),
        }
    }

    #[test]
    fn scope_from_config_words() {
        assert_eq!("none".parse(), Ok(Scope::None));
        assert_eq!(" Command ".parse(), Ok(Scope::Command));
        assert_eq!("full".parse(), Ok(Scope::Full));
        assert_eq!("all".parse::<Scope>(), Err(ParseScopeError));
        assert_eq!(Scope::default(), Scope::Command);
    }

    #[test]
    fn scopes_requested_per_setting() {
        let deal = int_in("doDeal", Some("autoComm"), Some("Debit"));
        assert_eq!(Scope::None.session_scope(&deal), SessionScope::UNSCOPED);
        assert_eq!(
            Scope::Command.session_scope(&deal),
            SessionScope {
                cmd: Some(ScopeCmd::DoDeal),
                ..SessionScope::UNSCOPED
            }
        );
        assert_eq!(
            Scope::Full.session_scope(&deal),
            SessionScope {
                cmd: Some(ScopeCmd::DoDeal),
                validation: Some(Validation::AutoComm),
                transaction_type: Some(TransactionType::Debit),
            }
        );
        // A command the gateway does not accept as a scope gets no scope.
        let inquire = int_in("inquireTransactions", None, None);
        assert_eq!(Scope::Full.session_scope(&inquire), SessionScope::UNSCOPED);
        // Unknown values are left out rather than guessed.
        let odd = int_in("doDeal", Some("Sometimes"), None);
        assert_eq!(Scope::Full.session_scope(&odd).validation, None);
    }

    #[test]
    fn scope_allows_only_its_command_and_values() {
        let deal = int_in("doDeal", Some("AutoComm"), Some("Debit"));
        let full = Scope::Full.session_scope(&deal);
        assert!(full.allows(&deal));
        assert!(!full.allows(&int_in("doDeal", Some("Verify"), Some("Debit"))));
        assert!(!full.allows(&int_in("refundDeal", None, None)));
        assert!(SessionScope::UNSCOPED.allows(&int_in("refundDeal", None, None)));
        assert_eq!(full.to_string(), "doDeal/AutoComm/Debit");
    }
}
