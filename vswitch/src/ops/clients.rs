//! The clients of the switch's endpoints (the metrics endpoint and the
//! control socket): how many are connected, and which to close to make
//! room.
//!
//! # Design
//! Each endpoint serves at most a fixed number of clients at once. At the
//! limit, a new client takes the place of the oldest one that has not sent
//! its request yet (an idle or slow client, which is what a flood of
//! connections is made of); if every client is being answered, the new one
//! is turned away. So a client that asks at once is served however many
//! others hold connections open, and the endpoint's memory and descriptors
//! stay bounded.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Debug, Default)]
struct Slots {
    open: usize,
    next: u64,
    /// Clients that have not sent a request, oldest first.
    waiting: VecDeque<(u64, tokio::task::AbortHandle)>,
}

/// The clients of one endpoint.
#[derive(Debug, Clone)]
pub struct Clients {
    slots: Arc<Mutex<Slots>>,
    max: usize,
}

/// One admitted client's place; given back when dropped (when its task
/// ends, however it ends).
#[derive(Debug)]
pub struct Place {
    slots: Arc<Mutex<Slots>>,
    id: u64,
}

impl Clients {
    /// At most `max` clients at once.
    pub fn new(max: usize) -> Clients {
        Clients { slots: Arc::default(), max }
    }

    /// A place for a new client, closing the oldest idle one if every
    /// place is taken; `None` if every client is being answered.
    pub fn admit(&self) -> Option<Place> {
        let mut s = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if s.open >= self.max {
            let (_, oldest) = s.waiting.pop_front()?;
            oldest.abort();
        }
        s.open += 1;
        s.next += 1;
        Some(Place { slots: Arc::clone(&self.slots), id: s.next })
    }

    /// How many clients are connected.
    pub fn open(&self) -> usize {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner).open
    }
}

impl Place {
    /// The client's task, which may be closed to make room until the
    /// client sends its request ([`Place::asked`]).
    pub fn waiting(&self, task: tokio::task::AbortHandle) {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner).waiting.push_back((self.id, task));
    }

    /// The client sent its request: it is answered, not closed for room.
    pub fn asked(&self) {
        let id = self.id;
        self.slots.lock().unwrap_or_else(PoisonError::into_inner).waiting.retain(|(i, _)| *i != id);
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        s.open -= 1;
        let id = self.id;
        s.waiting.retain(|(i, _)| *i != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_client_takes_the_place_of_the_oldest_idle_one_and_places_come_back() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        rt.block_on(async {
            let c = Clients::new(2);
            let idle = |p: Place| {
                tokio::spawn(async move {
                    let _p = p;
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                })
            };
            let a = c.admit().expect("a place");
            let ida = a.id;
            let ta = idle(a);
            // The task is registered as waiting by its place before it runs.
            c.slots.lock().unwrap().waiting.push_back((ida, ta.abort_handle()));
            let b = c.admit().expect("a place");
            b.asked();
            assert_eq!(c.open(), 2);
            // Full: the idle one is closed for the third.
            let third = c.admit().expect("room made");
            tokio::task::yield_now().await;
            assert!(ta.await.is_err_and(|e| e.is_cancelled()), "the oldest idle client was closed");
            assert_eq!(c.open(), 2);
            // Full, and nobody idle: turned away.
            third.asked();
            assert!(c.admit().is_none());
            drop(b);
            assert_eq!(c.open(), 1);
            assert!(c.admit().is_some());
        });
    }
}
