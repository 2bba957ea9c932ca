//! A poll loop's doorbell: how another thread wakes a loop that sleeps.
//!
//! An idle loop sleeps in `ppoll` on its sockets, which wake it when a
//! frame arrives. Frames another loop hands it, a request from the control
//! socket and a new plan arrive elsewhere: without a doorbell the loop
//! would have to wake every few hundred microseconds to look, and on a
//! shared core each such wake is time the kernel's receive work for the
//! loop's interfaces waits (it runs at idle priority while the loop holds
//! it), which is what the fast path's latency was made of. With one, a
//! quiet loop sleeps until its next timer is due.
//!
//! The protocol, with no lock: the sleeper says it is asleep, then looks
//! for work once more before it sleeps; a waker puts its work where the
//! loop looks, then rings, which writes to the eventfd only if the loop
//! said it was asleep (once per sleep). Both sides fence between their
//! write and their read, so at least one of them sees the other: either
//! the sleeper finds the work, or the waker finds it asleep and wakes it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering, fence};

use crate::port::xdp::sys;

#[derive(Debug)]
pub struct Doorbell {
    /// `None` when no eventfd could be made: then the loop does not sleep
    /// longer than it did without one.
    fd: Option<OwnedFd>,
    asleep: AtomicBool,
}

impl Default for Doorbell {
    fn default() -> Doorbell {
        Doorbell::new()
    }
}

impl Doorbell {
    pub fn new() -> Doorbell {
        let fd =
            sys::eventfd().map_err(|e| tracing::warn!("no doorbell for a poll loop ({e}): it wakes every 200 us to look for work")).ok();
        Doorbell { fd, asleep: AtomicBool::new(false) }
    }

    /// Whether the doorbell works (an eventfd could be made).
    pub fn works(&self) -> bool {
        self.fd.is_some()
    }

    /// The sleeper, before it looks for work a last time: from here on a
    /// ring wakes it.
    pub fn going_to_sleep(&self) {
        self.asleep.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// The descriptor to wait on with the sockets (`POLLIN` when rung).
    pub fn poll_fd(&self) -> Option<libc::pollfd> {
        self.fd.as_ref().map(|fd| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 })
    }

    /// The sleeper, awake (rung or not): `rung` is what the wait said of
    /// [`Doorbell::poll_fd`]'s descriptor; a ring is read back.
    pub fn awake(&self, rung: Option<&libc::pollfd>) {
        self.asleep.store(false, Ordering::Relaxed);
        if let (Some(fd), Some(p)) = (&self.fd, rung)
            && p.revents & libc::POLLIN != 0
        {
            sys::eventfd_drain(fd);
        }
    }

    /// A waker, after putting its work where the loop looks: wakes the
    /// loop if it sleeps. Costs a fence, and a system call once per sleep.
    pub fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.asleep.load(Ordering::Relaxed)
            && self.asleep.swap(false, Ordering::AcqRel)
            && let Some(fd) = &self.fd
        {
            sys::eventfd_ring(fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    /// Sleeps as a loop does: asleep, a last look at `work`, then a wait of
    /// at most `limit`. How long it slept, and whether it found work.
    fn nap(bell: &Doorbell, work: &AtomicUsize, limit: Duration) -> (Duration, bool) {
        let t = Instant::now();
        bell.going_to_sleep();
        let mut fds: Vec<libc::pollfd> = bell.poll_fd().into_iter().collect();
        if work.load(Ordering::Relaxed) == 0 {
            sys::wait_for_frames(&mut fds, limit);
        }
        bell.awake(fds.first());
        (t.elapsed(), work.swap(0, Ordering::Relaxed) > 0)
    }

    #[test]
    fn a_ring_wakes_a_sleeper_at_once_and_is_read_back() {
        let bell = Arc::new(Doorbell::new());
        assert!(bell.works());
        let work = Arc::new(AtomicUsize::new(0));
        let (b, w) = (Arc::clone(&bell), Arc::clone(&work));
        let waker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            w.fetch_add(1, Ordering::Relaxed);
            b.ring();
        });
        let (slept, found) = nap(&bell, &work, Duration::from_secs(10));
        waker.join().expect("waker");
        assert!(found);
        assert!(slept < Duration::from_secs(5), "the ring did not wake the sleeper: {slept:?}");
        // Read back: the next sleep lasts its whole limit.
        let (slept, found) = nap(&bell, &work, Duration::from_millis(100));
        assert!(!found);
        assert!(slept >= Duration::from_millis(90), "a ring was left unread: woke after {slept:?}");
    }

    #[test]
    fn a_ring_while_awake_writes_nothing() {
        let bell = Doorbell::new();
        bell.ring();
        bell.ring();
        let work = AtomicUsize::new(0);
        let (slept, _) = nap(&bell, &work, Duration::from_millis(100));
        assert!(slept >= Duration::from_millis(90), "rings while awake woke a later sleep: {slept:?}");
    }

    #[test]
    fn no_work_is_left_waiting_for_the_whole_sleep() {
        // Wakers and a sleeper race: every piece of work is found within
        // far less than the sleep's limit, whichever side goes first.
        let bell = Arc::new(Doorbell::new());
        let work = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (b, w, d) = (Arc::clone(&bell), Arc::clone(&work), Arc::clone(&done));
        let waker = std::thread::spawn(move || {
            for i in 0..2000u32 {
                w.fetch_add(1, Ordering::Relaxed);
                b.ring();
                // Now and then let the sleeper reach its wait.
                if i % 3 == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                }
                let t = Instant::now();
                while w.load(Ordering::Relaxed) > 0 {
                    if t.elapsed() > Duration::from_secs(1) {
                        d.store(true, Ordering::Relaxed);
                        return Some(i);
                    }
                    std::hint::spin_loop();
                }
            }
            d.store(true, Ordering::Relaxed);
            b.ring();
            None
        });
        while !done.load(Ordering::Relaxed) {
            nap(&bell, &work, Duration::from_secs(2));
        }
        let lost = waker.join().expect("waker");
        assert_eq!(lost, None, "work {lost:?} waited a second and more: its ring was lost");
    }
}
