//! Gateway simulators: fake payment gateways that speak the real wire formats.
//!
//! Used by the black-box tests in `tests/`, by `payauth simulate` and by `payauth demo`.
//! They are strict on purpose: a test passes only when payauth speaks to them the way the
//! real gateway expects.

pub mod creditguard;
pub mod number;
mod server;
pub mod tls;
