//! payauth keeps payment-gateway credentials out of applications.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod admin;
pub mod body;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod forward;
pub mod guard;
pub mod metrics;
pub mod number;
pub mod proxy;
pub mod secret;
pub mod sidecar;
pub mod simulate;
pub mod telemetry;
pub mod tokens;

pub use error::{Error, ErrorCode};
pub use secret::Secret;
