//! payauth keeps payment-gateway credentials out of applications.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
pub mod config;
pub mod error;
pub mod forward;
pub mod guard;
pub mod metrics;
pub mod number;
pub mod proxy;
pub mod secret;
pub mod simulate;

pub use error::{Error, ErrorCode};
pub use secret::Secret;
