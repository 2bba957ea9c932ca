//! A flag set once, with an eventfd readable from then on: what a thread
//! that sleeps in `ppoll` on something else (a socket, a listener) waits on
//! too, so that it need not wake every so often to look at the flag. The
//! switch's stop (the control layer's `Stop`) and each vhost-user port's
//! control thread use one.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::port::xdp::sys;

#[derive(Debug)]
pub struct Halt {
    flag: AtomicBool,
    /// Readable once the flag is set; `None` where no eventfd could be
    /// made: then waiters look at the flag every `fallback`.
    fd: Option<OwnedFd>,
    fallback: Duration,
}

impl Halt {
    /// A halt for `what`, whose waiters look at it every `fallback` where
    /// no eventfd can be made (said once, in the log).
    pub fn new(what: &str, fallback: Duration) -> Halt {
        let fd = sys::eventfd().map_err(|e| tracing::warn!("no eventfd for {what} ({e}): it is looked for every {fallback:?}")).ok();
        Halt { flag: AtomicBool::new(false), fd, fallback }
    }

    /// Sets the flag and wakes the waiters; whether this call set it (the
    /// first one does).
    pub fn set(&self) -> bool {
        if self.flag.swap(true, Ordering::SeqCst) {
            return false;
        }
        if let Some(fd) = &self.fd {
            sys::eventfd_ring(fd);
        }
        true
    }

    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// The flag itself, for those that look at it between pieces of work.
    pub fn flag(&self) -> &AtomicBool {
        &self.flag
    }

    /// A descriptor that `ppoll` sees readable (`POLLIN`) once the flag is
    /// set, if one could be made.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(AsFd::as_fd)
    }

    /// Waits until `fd` is readable or the flag is set (without an eventfd,
    /// `fallback` at most); whether `fd` is readable.
    pub fn wait_readable(&self, fd: libc::c_int) -> bool {
        let bell = self.fd.as_ref().map_or(-1, AsRawFd::as_raw_fd);
        let mut p = [libc::pollfd { fd, events: libc::POLLIN, revents: 0 }, libc::pollfd { fd: bell, events: libc::POLLIN, revents: 0 }];
        sys::wait_for_frames(&mut p, if bell < 0 { self.fallback } else { Duration::from_secs(3600) });
        p[0].revents != 0
    }
}
