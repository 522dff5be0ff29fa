//! Where a running gateway's credentials come from, and how new ones reach it.
//!
//! A gateway's credentials are its secret files (Number: `token_file` and `hmac_secret_file`;
//! CreditGuard: `password_file`) and, for Number, a token renewed through the admin API. The
//! rule between the two is written here once and used by the sidecar's start, its secret
//! poller and the admin API alike:
//!
//! **A token renewed through the admin API persists (mode 0600, under the state dir) and stays
//! in force while `token_file` still holds what it held then; once the file changes, the file
//! wins.**

use std::io;
use std::path::PathBuf;

use crate::config::{CreditGuardSettings, GatewayConfig, GatewayKind, NumberSettings};
use crate::creditguard::{CreditGuardCredentials, CreditGuardHandle};
use crate::files::read_secret;
use crate::number::{NumberCredentials, NumberHandle, Signing};
use crate::tokens::PortalToken;

/// Credentials as they apply now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A Number gateway's.
    Number {
        /// The credentials in force.
        credentials: NumberCredentials,
        /// When the token in force expires (Unix seconds), if known.
        expires_at: Option<i64>,
        /// The portal's `TokenID` when the token in force was renewed through the admin API.
        renewed: Option<String>,
    },
    /// A CreditGuard gateway's.
    CreditGuard(CreditGuardCredentials),
}

/// One gateway's credential source: its files and the persisted renewed token.
#[derive(Debug, Clone)]
pub struct CredentialSource {
    gateway: String,
    state_dir: PathBuf,
    kind: GatewayKind,
}

impl CredentialSource {
    /// The source of `gateway`, with renewed tokens kept under `state_dir`.
    pub fn new(gateway: &GatewayConfig, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            gateway: gateway.name().to_owned(),
            state_dir: state_dir.into(),
            kind: gateway.kind.clone(),
        }
    }

    /// The credentials in force: the files', with a renewed token in force while `token_file`
    /// is unchanged since it was renewed.
    pub fn load(&self) -> io::Result<Credentials> {
        match &self.kind {
            GatewayKind::Number(settings) => {
                let mut credentials = number_files(settings)?;
                let mut expires_at = settings.token_expires_at;
                let mut renewed = None;
                if let Some(portal) = crate::tokens::load(
                    &self.state_dir,
                    &self.gateway,
                    &settings.account_code,
                    &credentials.token,
                )? {
                    credentials.token = portal.token;
                    expires_at = portal.expires_at.or(expires_at);
                    renewed = Some(portal.token_id.unwrap_or_else(|| "unknown".to_owned()));
                }
                Ok(Credentials::Number {
                    credentials,
                    expires_at,
                    renewed,
                })
            }
            GatewayKind::CreditGuard(settings) => {
                Ok(Credentials::CreditGuard(creditguard_files(settings)?))
            }
        }
    }

    /// Number only: persists a token renewed in the portal and returns the credentials it puts
    /// in force. Nothing is persisted when the files cannot be read.
    pub(crate) fn renew_token(
        &self,
        portal: &PortalToken,
    ) -> Result<NumberCredentials, RenewError> {
        let GatewayKind::Number(settings) = &self.kind else {
            return Err(RenewError::NotNumber);
        };
        let mut credentials = number_files(settings).map_err(RenewError::Files)?;
        crate::tokens::save(
            &self.state_dir,
            &self.gateway,
            &settings.account_code,
            portal,
            &credentials.token,
        )
        .map_err(RenewError::Persist)?;
        credentials.token = portal.token.clone();
        Ok(credentials)
    }

    /// Number only: the account code a portal token must be for.
    pub fn account_code(&self) -> Option<&str> {
        match &self.kind {
            GatewayKind::Number(settings) => Some(&settings.account_code),
            GatewayKind::CreditGuard(_) => None,
        }
    }
}

/// Why a renewed token was not put in force.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// Not a Number gateway.
    #[error("not a number gateway")]
    NotNumber,
    /// The secret files cannot be read.
    #[error("the gateway's secret files cannot be read: {0}")]
    Files(io::Error),
    /// The token could not be persisted.
    #[error("the token could not be persisted under the state dir: {0}")]
    Persist(io::Error),
}

/// Where new credentials go: the running gateway's handle.
#[derive(Debug, Clone)]
pub enum CredentialTarget {
    /// A Number gateway.
    Number(NumberHandle),
    /// A CreditGuard gateway.
    CreditGuard(CreditGuardHandle),
}

impl CredentialTarget {
    /// Swaps `credentials` in.
    pub fn apply(&self, credentials: &Credentials) -> Result<(), String> {
        match (self, credentials) {
            (CredentialTarget::Number(handle), Credentials::Number { credentials, .. }) => handle
                .update_credentials(credentials.clone())
                .map_err(|e| e.to_string()),
            (CredentialTarget::CreditGuard(handle), Credentials::CreditGuard(credentials)) => {
                handle.update_credentials(credentials.clone());
                Ok(())
            }
            _ => Err("the gateway's kind changed".to_owned()),
        }
    }
}

fn number_files(settings: &NumberSettings) -> io::Result<NumberCredentials> {
    let mut credentials = NumberCredentials {
        account_code: settings.account_code.clone(),
        token: read_secret(&settings.token_file)?,
        signing: None,
    };
    if let (Some(path), Some(user_id)) = (&settings.hmac_secret_file, settings.user_id) {
        credentials.signing = Some(Signing {
            secret: read_secret(path)?,
            user_id,
        });
    }
    Ok(credentials)
}

fn creditguard_files(settings: &CreditGuardSettings) -> io::Result<CreditGuardCredentials> {
    Ok(CreditGuardCredentials {
        user: settings.user.clone(),
        password: read_secret(&settings.password_file)?,
    })
}

/// Logs a warning when a token expires within 14 days (an error once it has expired).
pub fn warn_if_expiring(gateway: &str, expires_at: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let days = (expires_at - now) / 86_400;
    if expires_at <= now {
        tracing::error!(
            gateway,
            "the gateway token has expired: renew it in the vendor's portal"
        );
    } else if days < 14 {
        tracing::warn!(
            gateway,
            days,
            "the gateway token expires soon: renew it in the vendor's portal"
        );
    }
}
