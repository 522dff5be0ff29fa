//! The one way payauth takes a `std::sync::Mutex` (clippy's `disallowed-methods` points here).

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, carrying on if a thread panicked while holding it.
///
/// Recovering from poison is sound here because payauth's critical sections are short and
/// synchronous (no `.await` while a guard is held), and keep their data consistent at every point
/// that can panic: a flight slot, a brake, a lockout record or a failure cause is replaced whole,
/// and the session pool's bookkeeping is consistent between its steps.
/// A panic inside one is a bug that has already failed its own request; honouring the poison
/// would turn it into every later request failing (a stuck gateway) while the data the next
/// holder sees is still a state the code could have produced.
#[allow(clippy::disallowed_methods)] // the one place allowed to call `Mutex::lock`
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
