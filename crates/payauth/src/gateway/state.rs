//! A gateway's credential state: the trait the layers reach it through, and its vocabulary.
//! They live with the lockout guard, their in-process implementation, in [`crate::guard::state`];
//! this module names them where the layers use them.

pub use crate::guard::state::{
    Begun, CredentialState, Ledger, Published, SharedState, StateFuture,
};
