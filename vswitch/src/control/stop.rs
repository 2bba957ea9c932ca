//! The switch's stop: set once (a signal, or a start that failed half
//! way), and waited on by the threads that wait for something else too,
//! so that none of them has to wake every so often to look at it.
//!
//! A thread that wakes on a timer to look at a flag costs nothing much on
//! a core of its own, but the switch's other threads share the loops'
//! cores where the process has no other (`taskset`, a cpuset, one core
//! given to the switch), and there each wake is time the kernel's receive
//! work for the loops' interfaces waits: it runs at idle priority while a
//! loop holds it. Looking every 50-100 ms, the main, metrics, control,
//! reload and link threads woke about 90 times a second on an idle switch.
//! Now each sleeps until it has work or the stop comes: the flag for those
//! that look between pieces of work (the loops, with their own doorbells),
//! an eventfd for those in `ppoll`, a `tokio` watch for the endpoints'
//! runtimes.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::port::halt::Halt;

#[derive(Debug)]
pub struct Stop {
    /// The flag and its eventfd (without one, the link watcher looks every
    /// 100 ms).
    halt: Halt,
    watch: tokio::sync::watch::Sender<bool>,
}

impl Default for Stop {
    fn default() -> Stop {
        Stop::new()
    }
}

impl Stop {
    pub fn new() -> Stop {
        Stop { halt: Halt::new("the stop", Duration::from_millis(100)), watch: tokio::sync::watch::Sender::new(false) }
    }

    /// Sets the stop and wakes every thread waiting on it; once.
    pub fn set(&self) {
        if self.halt.set() {
            self.watch.send_replace(true);
        }
    }

    pub fn is_set(&self) -> bool {
        self.halt.is_set()
    }

    /// The flag itself, for those that look at it between pieces of work.
    pub fn flag(&self) -> &AtomicBool {
        self.halt.flag()
    }

    /// The flag with its eventfd, for those that wait in `ppoll`.
    pub fn halt(&self) -> &Halt {
        &self.halt
    }

    /// Returns once the stop is set.
    pub async fn wait(&self) {
        let mut rx = self.watch.subscribe();
        let _ = rx.wait_for(|set| *set).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::xdp::sys;

    #[test]
    fn setting_the_stop_wakes_its_flag_its_descriptor_and_its_waiters() {
        let stop = std::sync::Arc::new(Stop::new());
        let waiter = {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
                rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(5), stop.wait()).await.is_ok() })
            })
        };
        let readable = |s: &Stop| {
            let fd = s.halt().fd().expect("an eventfd");
            let mut p = [libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&fd), events: libc::POLLIN, revents: 0 }];
            sys::wait_for_frames(&mut p, std::time::Duration::ZERO);
            p[0].revents & libc::POLLIN != 0
        };
        assert!(!stop.is_set());
        assert!(!readable(&stop), "not readable before the stop");
        std::thread::sleep(std::time::Duration::from_millis(50));
        stop.set();
        stop.set();
        assert!(stop.is_set() && stop.flag().load(std::sync::atomic::Ordering::Relaxed));
        assert!(readable(&stop), "readable once set");
        assert!(waiter.join().expect("waiter"), "the waiter returned at the stop, not at its timeout");
        // A waiter that comes after the stop returns at once.
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        assert!(rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(1), stop.wait()).await.is_ok() }));
    }
}
