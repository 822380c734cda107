//! A listener's drain signal to its connections.
//!
//! What a `watch::channel(false)` did before, with one difference that matters per idle
//! connection: waiting for it needs no future. `watch::Receiver::changed()` is a future with
//! an intrusive waiter node, and a connection's supervisor awaits it for the connection's
//! whole life, so it sat inside the task of every idle connection (issue 23, memory; see
//! `server::tests::connection_future_size`). Here a connection's receiver keeps a slot number
//! in a shared table of wakers instead, polled with [`DrainRx::poll_drain`].
//!
//! Dropping the [`DrainTx`] counts as draining (as a closed watch channel did).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A receiver's slot when it has none.
const NO_SLOT: u32 = u32::MAX;

struct Shared {
    draining: AtomicBool,
    waiters: Mutex<Waiters>,
}

/// The wakers of the receivers waiting for the drain, by slot; freed slots are reused.
#[derive(Default)]
struct Waiters {
    wakers: Vec<Option<Waker>>,
    free: Vec<u32>,
}

impl Shared {
    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        // A panic while holding this lock leaves the table consistent (every step is one
        // assignment), so a poisoned lock is used as is.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The listener's side: [`DrainTx::drain`] (or dropping it) wakes every waiting receiver.
pub struct DrainTx {
    shared: Arc<Shared>,
}

/// A connection's side. A clone is a new receiver (it has not registered yet).
pub struct DrainRx {
    shared: Arc<Shared>,
    slot: u32,
}

/// A new drain signal, not draining.
pub fn channel() -> (DrainTx, DrainRx) {
    let shared = Arc::new(Shared {
        draining: AtomicBool::new(false),
        waiters: Mutex::new(Waiters::default()),
    });
    (
        DrainTx {
            shared: shared.clone(),
        },
        DrainRx {
            shared,
            slot: NO_SLOT,
        },
    )
}

impl DrainTx {
    /// Starts the drain: every receiver sees [`DrainRx::is_draining`] and is woken.
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::Release);
        // Taken under the lock, woken outside it (a waker may run code that polls again).
        let woken: Vec<Waker> = {
            let mut w = self.shared.waiters();
            w.wakers.iter_mut().filter_map(Option::take).collect()
        };
        for waker in woken {
            waker.wake();
        }
    }
}

impl Drop for DrainTx {
    fn drop(&mut self) {
        self.drain();
    }
}

impl DrainRx {
    /// Whether the drain has begun.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// Ready once the drain has begun; until then the task is woken when it does.
    pub fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_draining() {
            return Poll::Ready(());
        }
        let mut w = self.shared.waiters();
        // Checked again under the lock: `drain` sets the flag before it takes the wakers.
        if self.is_draining() {
            return Poll::Ready(());
        }
        if self.slot == NO_SLOT {
            let waker = Some(cx.waker().clone());
            self.slot = match w.free.pop() {
                Some(slot) => {
                    w.wakers[slot as usize] = waker;
                    slot
                }
                None => {
                    let slot = u32::try_from(w.wakers.len()).unwrap_or(NO_SLOT);
                    if slot == NO_SLOT {
                        // 4 billion receivers: not reachable with file descriptors; not
                        // registered, so this one learns of the drain from `is_draining`.
                        return Poll::Pending;
                    }
                    w.wakers.push(waker);
                    slot
                }
            };
        } else {
            match &mut w.wakers[self.slot as usize] {
                Some(old) if old.will_wake(cx.waker()) => {}
                entry => *entry = Some(cx.waker().clone()),
            }
        }
        Poll::Pending
    }
}

impl Clone for DrainRx {
    fn clone(&self) -> Self {
        DrainRx {
            shared: self.shared.clone(),
            slot: NO_SLOT,
        }
    }
}

/// Above this many slots, a table whose receivers all left is given back (a burst of
/// connections does not keep its table for the listener's life); below it, it is kept for the
/// next connections.
const KEEP_SLOTS: usize = 1024;

impl Drop for DrainRx {
    fn drop(&mut self) {
        if self.slot != NO_SLOT {
            let mut w = self.shared.waiters();
            w.wakers[self.slot as usize] = None;
            w.free.push(self.slot);
            if w.free.len() == w.wakers.len() && w.wakers.len() > KEEP_SLOTS {
                *w = Waiters::default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;

    #[tokio::test]
    async fn waiting_receivers_wake_on_drain() {
        let (tx, rx) = channel();
        let mut waiting = Vec::new();
        for _ in 0..3 {
            let mut rx = rx.clone();
            waiting.push(tokio::spawn(async move {
                poll_fn(|cx| rx.poll_drain(cx)).await;
                rx.is_draining()
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!rx.is_draining());
        assert_eq!(
            tx.shared.waiters().wakers.len(),
            3,
            "each waiter registered once"
        );
        tx.drain();
        for w in waiting {
            let seen = tokio::time::timeout(Duration::from_secs(5), w).await;
            assert!(seen.expect("woken").expect("task"));
        }
        // A receiver made after the drain is ready at once.
        let mut late = rx.clone();
        assert!(poll_fn(|cx| Poll::Ready(late.poll_drain(cx)))
            .await
            .is_ready());
    }

    #[tokio::test]
    async fn dropping_the_sender_drains() {
        let (tx, mut rx) = channel();
        let waiter = tokio::spawn(async move { poll_fn(|cx| rx.poll_drain(cx)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
    }

    #[tokio::test]
    async fn slots_are_reused_and_not_shared_by_clones() {
        let (tx, rx) = channel();
        let mut a = rx.clone();
        assert!(poll_fn(|cx| Poll::Ready(a.poll_drain(cx)))
            .await
            .is_pending());
        // Polled again with the same waker: the same slot, nothing added.
        assert!(poll_fn(|cx| Poll::Ready(a.poll_drain(cx)))
            .await
            .is_pending());
        assert_eq!(a.slot, 0);
        let b = a.clone();
        assert_eq!(b.slot, NO_SLOT, "a clone registers on its own");
        drop(a);
        assert_eq!(tx.shared.waiters().free, vec![0]);
        let mut c = b.clone();
        assert!(poll_fn(|cx| Poll::Ready(c.poll_drain(cx)))
            .await
            .is_pending());
        assert_eq!(c.slot, 0, "the freed slot is taken again");
        assert_eq!(tx.shared.waiters().wakers.len(), 1);
    }

    #[tokio::test]
    async fn a_burst_gives_its_table_back_once_it_left() {
        let (tx, rx) = channel();
        let mut burst: Vec<DrainRx> = (0..KEEP_SLOTS + 1).map(|_| rx.clone()).collect();
        for r in &mut burst {
            assert!(poll_fn(|cx| Poll::Ready(r.poll_drain(cx)))
                .await
                .is_pending());
        }
        assert_eq!(tx.shared.waiters().wakers.len(), KEEP_SLOTS + 1);
        let last = burst.pop();
        drop(burst);
        assert_eq!(
            tx.shared.waiters().wakers.len(),
            KEEP_SLOTS + 1,
            "one is still there"
        );
        drop(last);
        let w = tx.shared.waiters();
        assert_eq!((w.wakers.capacity(), w.free.capacity()), (0, 0));
    }
}
