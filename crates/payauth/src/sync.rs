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

/// Waits until `done()` holds, looking again each time `changed` is notified (the notifier
/// calls `notify_waiters` after every change that can make it hold), for at most `limit`.
/// Returns whether it holds. No polling: a stop waits on the event, not on a timer.
pub(crate) async fn wait_until(
    changed: &tokio::sync::Notify,
    limit: std::time::Duration,
    done: impl Fn() -> bool,
) -> bool {
    let waited = tokio::time::timeout(limit, async {
        loop {
            // Registered before looking, so a change between the look and the wait is not lost.
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done() {
                return;
            }
            notified.await;
        }
    });
    waited.await.is_ok()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::wait_until;

    #[tokio::test(start_paused = true)]
    async fn wait_until_wakes_on_the_change_and_gives_up_at_the_limit() {
        let (changed, count) = (Arc::new(Notify::new()), Arc::new(AtomicU32::new(2)));
        let (c, n) = (Arc::clone(&changed), Arc::clone(&count));
        tokio::spawn(async move {
            for _ in 0..2 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                n.fetch_sub(1, Ordering::AcqRel);
                c.notify_waiters();
            }
        });
        let started = tokio::time::Instant::now();
        let idle = || count.load(Ordering::Acquire) == 0;
        assert!(wait_until(&changed, Duration::from_secs(10), idle).await);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(2),
            "woken by the second change"
        );

        count.store(1, Ordering::Release);
        let started = tokio::time::Instant::now();
        let idle = || count.load(Ordering::Acquire) == 0;
        assert!(!wait_until(&changed, Duration::from_secs(3), idle).await);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(3),
            "gave up at the limit"
        );
    }
}
