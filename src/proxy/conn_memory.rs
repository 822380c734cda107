//! Gives the memory of closed and parked connections back to the kernel once traffic stops
//! (issue 23, bench/README.md "idle memory as berthd ships").
//!
//! berthd's allocator (mimalloc v3, `src/bin/berthd.rs`) returns an emptied page to the
//! kernel only `purge_delay` (1 s by default) after it emptied, and only when the process
//! next frees a page of its own: it has no thread of its own. When a burst of connections
//! goes idle (each one parks and frees hyper's buffers, [`super::server`]) or closes, what was
//! freed in the burst's last second therefore stayed resident for as long as the process
//! stayed quiet: 2-5 KiB per idle connection on top of the ~1.6 KiB the program keeps.
//!
//! The [`Housekeeper`] is that next free. Accepting, parking and closing a connection note
//! activity ([`note_activity`]: one atomic add); the first note starts a task that, every
//! [`TICK`] while notes keep coming and for [`QUIET_TICKS`] ticks after the last one,
//! allocates and frees one block larger than mimalloc's largest size class ([`nudge`]). Such
//! a block has a page of its own, which is freed with it, and freeing a page is when mimalloc
//! gives back the pages whose purge delay has passed (all arenas' expired ones, on whichever
//! thread frees). Then the task ends: an idle process does not wake up for it. No allocator
//! option is set (that would take `unsafe` or an environment variable) and a busy process
//! pays one add per connection plus a few microseconds four times a second.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often the housekeeper nudges the allocator while connections come, park or close.
pub const TICK: Duration = Duration::from_millis(250);

/// Quiet ticks after the last note before the housekeeper stops: 1.5 s, more than mimalloc's
/// 1 s purge delay plus a tick, so the last freed pages are purged before it stops.
pub const QUIET_TICKS: u32 = 6;

/// The nudge's block: above mimalloc's largest size class (512 KiB on 64-bit), so it gets a
/// page of its own, freed (not kept for reuse) when the block is freed. Only its page header
/// is ever written.
const NUDGE_BYTES: usize = 1 << 20;

static PROCESS: Housekeeper = Housekeeper::new(TICK, QUIET_TICKS);

/// Notes that connection memory was (or is about to be) allocated or freed: starts the
/// process's housekeeper if it is not running. Cheap (an atomic add and a load); needs a tokio
/// runtime only to start the housekeeper (without one, it is not started).
pub fn note_activity() {
    PROCESS.note();
}

/// Allocates and frees one block that has an allocator page of its own (see the module
/// documentation). `black_box` keeps the compiler from removing the pair.
fn nudge() {
    let block: Vec<u8> = Vec::with_capacity(NUDGE_BYTES);
    drop(std::hint::black_box(block));
}

/// Runs [`nudge`] every `tick` from the first [`Housekeeper::note`] until `quiet_ticks` ticks
/// passed without one; at most one such task runs at a time.
#[derive(Debug)]
pub struct Housekeeper {
    activity: AtomicU64,
    running: AtomicBool,
    nudges: AtomicU64,
    tick: Duration,
    quiet_ticks: u32,
}

/// Clears `running` if the housekeeper's task is dropped while armed (its runtime shut down),
/// so a later note starts a new one.
struct Running(&'static Housekeeper, bool);

impl Drop for Running {
    fn drop(&mut self) {
        if self.1 {
            self.0.running.store(false, Ordering::SeqCst);
        }
    }
}

impl Housekeeper {
    pub const fn new(tick: Duration, quiet_ticks: u32) -> Self {
        Self {
            activity: AtomicU64::new(0),
            running: AtomicBool::new(false),
            nudges: AtomicU64::new(0),
            tick,
            quiet_ticks,
        }
    }

    /// See [`note_activity`].
    pub fn note(&'static self) {
        // SeqCst on both sides (here: the add, then the load; in `run`: the store, then the
        // load) so that either this note sees the housekeeper stopped, or the housekeeper sees
        // this note and runs on.
        self.activity.fetch_add(1, Ordering::SeqCst);
        if self.running.load(Ordering::SeqCst) || self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        // The guard goes into the task's future: dropped with it, even if never polled.
        let armed = Running(self, true);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            drop(runtime.spawn(self.run(armed)));
        }
    }

    /// Whether the housekeeper's task is running.
    pub fn running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// How many nudges it made so far.
    pub fn nudges(&self) -> u64 {
        self.nudges.load(Ordering::Relaxed)
    }

    async fn run(&'static self, mut armed: Running) {
        let mut seen = self.activity.load(Ordering::SeqCst);
        let mut quiet = 0;
        loop {
            tokio::time::sleep(self.tick).await;
            nudge();
            self.nudges.fetch_add(1, Ordering::Relaxed);
            let now = self.activity.load(Ordering::SeqCst);
            if now != seen {
                seen = now;
                quiet = 0;
                continue;
            }
            quiet += 1;
            if quiet < self.quiet_ticks {
                continue;
            }
            self.running.store(false, Ordering::SeqCst);
            // A note between the last look and the store above saw `running` and started
            // nothing: run on for it, unless a note after the store started a new task.
            if self.activity.load(Ordering::SeqCst) == seen
                || self.running.swap(true, Ordering::SeqCst)
            {
                armed.1 = false;
                return;
            }
            quiet = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn housekeeper() -> &'static Housekeeper {
        Box::leak(Box::new(Housekeeper::new(Duration::from_millis(10), 3)))
    }

    /// Waits (bounded) until `cond` holds.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn runs_while_noted_then_stops_and_restarts() {
        let h = housekeeper();
        assert!(!h.running());
        h.note();
        assert!(h.running(), "the first note starts it");
        // Notes keep it going (or start it again, should this thread stall past the quiet
        // ticks): 20 notes 10 ms apart.
        for _ in 0..20 {
            h.note();
            assert!(h.running(), "a note left it stopped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        until("stops after the quiet ticks", || !h.running()).await;
        let nudged = h.nudges();
        assert!(nudged >= 3, "nudged only {nudged} times");
        // Stopped: no more nudges (an idle process does not wake for it).
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(h.nudges(), nudged, "nudged after it stopped");
        // A later note starts it again.
        h.note();
        assert!(h.running());
        until("nudges again", || h.nudges() > nudged).await;
        until("stops again", || !h.running()).await;
    }

    #[test]
    fn without_a_runtime_a_note_starts_nothing() {
        let h = housekeeper();
        h.note();
        assert!(!h.running());
    }

    #[test]
    fn a_dropped_runtime_lets_the_next_note_start_it_again() {
        let h = housekeeper();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async { h.note() });
        assert!(h.running());
        drop(rt);
        assert!(!h.running(), "the dropped task left `running` set");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            h.note();
            assert!(h.running());
            until("nudges in the new runtime", || h.nudges() > 0).await;
        });
    }
}
