//! A gateway as the sidecar runs it ([`Running`]: one type for both kinds, its handle with
//! where its credentials come from), and the rule for those credentials.
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
use std::sync::Arc;
use std::time::Duration;

use crate::config::{CreditGuardSettings, NumberSettings};
use crate::creditguard::{CreditGuardCredentials, CreditGuardHandle};
use crate::files::read_secret;
use crate::gateway::SharedState;
use crate::guard::Fingerprint;
use crate::metrics::GatewayMetrics;
use crate::number::{NumberCredentials, NumberHandle, Signing};
use crate::tokens::PortalToken;

/// A running gateway: its handle, and where its credentials come from.
#[derive(Debug, Clone)]
pub enum Running {
    /// A Number gateway.
    Number {
        /// Its handle.
        handle: NumberHandle,
        /// Its secret files and renewed token.
        source: Arc<NumberSource>,
    },
    /// A CreditGuard gateway.
    CreditGuard {
        /// Its handle.
        handle: CreditGuardHandle,
        /// Its settings (user and password file).
        settings: Arc<CreditGuardSettings>,
    },
}

impl Running {
    /// The kind's name in `/status`: `number` or `creditguard`.
    pub fn kind(&self) -> &'static str {
        match self {
            Running::Number { .. } => "number",
            Running::CreditGuard { .. } => "creditguard",
        }
    }

    /// The gateway's name.
    pub fn name(&self) -> &str {
        match self {
            Running::Number { handle, .. } => handle.name(),
            Running::CreditGuard { handle, .. } => handle.name(),
        }
    }

    /// Its lockout guard.
    pub fn guard(&self) -> &SharedState {
        match self {
            Running::Number { handle, .. } => handle.guard(),
            Running::CreditGuard { handle, .. } => handle.guard(),
        }
    }

    /// Stops its background credential work and resolves once the authentications in flight
    /// have ended (or after `limit`), so that a stopping process records their real outcome.
    pub async fn stop(&self, limit: Duration) {
        match self {
            Running::Number { handle, .. } => handle.wait_idle(limit).await,
            Running::CreditGuard { handle, .. } => {
                handle.stop_within(limit).await;
            }
        }
    }

    /// A digest of the credentials its files put in force now (to notice a change without
    /// keeping a second copy of the secrets).
    pub(crate) fn digest(&self) -> io::Result<Fingerprint> {
        Ok(match self {
            Running::Number { source, .. } => source.load()?.digest(),
            Running::CreditGuard { settings, .. } => {
                digest_creditguard(&creditguard_files(settings)?)
            }
        })
    }

    /// Re-reads the credential files and, when what they put in force differs from `last` (the
    /// digest of what was last put in force), swaps it in and updates `last`. Unreadable files or
    /// unusable credentials keep the current ones (logged).
    pub(crate) fn refresh(&self, last: &mut Option<Fingerprint>, metrics: &GatewayMetrics) {
        let name = self.name();
        let changed = match self {
            Running::Number { handle, source } => source.load().map(|now| {
                let digest = now.digest();
                (*last != Some(digest)).then(|| {
                    let swapped = handle.update_credentials(now.credentials);
                    if swapped.is_ok() {
                        // 0 when the token in force has no known expiry (the contract's
                        // "unknown").
                        metrics.set_token_expiry(now.expires_at.unwrap_or(0) as f64);
                    }
                    (digest, swapped.map_err(|e| e.to_string()))
                })
            }),
            Running::CreditGuard { handle, settings } => creditguard_files(settings).map(|now| {
                let digest = digest_creditguard(&now);
                (*last != Some(digest)).then(|| {
                    handle.update_credentials(now);
                    (digest, Ok(()))
                })
            }),
        };
        match changed {
            Err(e) => {
                tracing::debug!(gateway = %name, error = %e, "secret file unreadable; keeping the current credentials");
            }
            Ok(None) => {}
            Ok(Some((digest, Ok(())))) => {
                tracing::info!(gateway = %name, "credentials changed (secret files, or a token renewed through the admin API); new credentials in use");
                *last = Some(digest);
            }
            Ok(Some((_, Err(e)))) => {
                tracing::error!(gateway = %name, error = %e, "new credentials unusable; keeping the old ones");
            }
        }
    }
}

/// Number credentials as they apply now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberInForce {
    /// The credentials in force.
    pub credentials: NumberCredentials,
    /// When the token in force expires (Unix seconds), if known.
    pub expires_at: Option<i64>,
    /// The portal's `TokenID` when the token in force was renewed through the admin API.
    pub renewed: Option<String>,
}

impl NumberInForce {
    fn digest(&self) -> Fingerprint {
        let c = &self.credentials;
        let (secret, user_id) = c
            .signing
            .as_ref()
            .map_or((&b""[..], 0), |s| (s.secret.expose().as_bytes(), s.user_id));
        Fingerprint::of(&[
            b"number-in-force",
            c.account_code.as_bytes(),
            c.token.expose().as_bytes(),
            secret,
            &user_id.to_be_bytes(),
            &self.expires_at.unwrap_or(0).to_be_bytes(),
        ])
    }
}

fn digest_creditguard(credentials: &CreditGuardCredentials) -> Fingerprint {
    Fingerprint::of(&[
        b"creditguard-in-force",
        credentials.user.as_bytes(),
        credentials.password.expose().as_bytes(),
    ])
}

/// One Number gateway's credential source: its files and the persisted renewed token.
#[derive(Debug, Clone)]
pub struct NumberSource {
    gateway: String,
    state_dir: PathBuf,
    settings: NumberSettings,
}

impl NumberSource {
    /// The source of the Number gateway `gateway`, with renewed tokens kept under `state_dir`.
    pub fn new(gateway: &str, settings: &NumberSettings, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            gateway: gateway.to_owned(),
            state_dir: state_dir.into(),
            settings: settings.clone(),
        }
    }

    /// The credentials in force: the files', with a renewed token in force while `token_file`
    /// is unchanged since it was renewed.
    pub fn load(&self) -> io::Result<NumberInForce> {
        let settings = &self.settings;
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
        Ok(NumberInForce {
            credentials,
            expires_at,
            renewed,
        })
    }

    /// Persists a token renewed in the portal and returns the credentials it puts in force.
    /// Nothing is persisted when the files cannot be read.
    pub(crate) fn renew_token(
        &self,
        portal: &PortalToken,
    ) -> Result<NumberCredentials, RenewError> {
        let mut credentials = number_files(&self.settings).map_err(RenewError::Files)?;
        crate::tokens::save(
            &self.state_dir,
            &self.gateway,
            &self.settings.account_code,
            portal,
            &credentials.token,
        )
        .map_err(RenewError::Persist)?;
        credentials.token = portal.token.clone();
        Ok(credentials)
    }

    /// The account code a portal token must be for.
    pub fn account_code(&self) -> &str {
        &self.settings.account_code
    }
}

/// Why a renewed token was not put in force.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The secret files cannot be read.
    #[error("the gateway's secret files cannot be read: {0}")]
    Files(io::Error),
    /// The token could not be persisted.
    #[error("the token could not be persisted under the state dir: {0}")]
    Persist(io::Error),
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

/// A CreditGuard gateway's credentials, from its user and password file.
pub(crate) fn creditguard_files(
    settings: &CreditGuardSettings,
) -> io::Result<CreditGuardCredentials> {
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
