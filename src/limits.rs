//! Per-replica admission: connection-attempt rate limits (at most N new streams per second per
//! key, user or client IP) and the open-stream limit. Per replica and in memory: a load balancer
//! spreading clients over R replicas allows up to R times the rate in total, which is what a
//! per-replica guard against floods needs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// Keys kept before the table is pruned to the current second.
const PRUNE_ABOVE: usize = 10_000;

pub struct RateLimiter {
    per_second: u32,
    /// Key -> (second, attempts in that second).
    windows: Mutex<HashMap<Box<str>, (u64, u32)>>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one attempt of `key` at `now` (seconds); false when it is over the limit.
    pub fn allow(&self, key: &str, now: u64) -> bool {
        let mut windows = self.windows.lock();
        if windows.len() > PRUNE_ABOVE {
            windows.retain(|_, (second, _)| *second == now);
        }
        match windows.get_mut(key) {
            Some((second, attempts)) if *second == now => {
                if *attempts >= self.per_second {
                    return false;
                }
                *attempts += 1;
            }
            Some(window) => *window = (now, 1),
            None => {
                windows.insert(key.into(), (now, 1));
            }
        }
        true
    }
}

/// The replica's stream slots (`limits.max_connections`). A slot is taken atomically when a
/// stream is admitted, before anything it awaits, so concurrent connects cannot overshoot.
pub struct StreamSlots {
    taken: Arc<AtomicUsize>,
    max: usize,
}

/// One admitted stream's slot; dropping it frees the slot.
pub struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlots {
    pub fn new(max: usize) -> Self {
        Self {
            taken: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A slot, or `None` when every slot is taken.
    pub fn try_take(&self) -> Option<StreamSlot> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                (taken < self.max).then_some(taken + 1)
            })
            .ok()
            .map(|_| StreamSlot(self.taken.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_slots_never_exceed_the_limit_even_when_taken_concurrently() {
        let slots = Arc::new(StreamSlots::new(100));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let slots = slots.clone();
                std::thread::spawn(move || (0..50).filter_map(|_| slots.try_take()).collect::<Vec<_>>())
            })
            .collect();
        let held: Vec<StreamSlot> = threads
            .into_iter()
            .flat_map(|thread| thread.join().expect("no panic"))
            .collect();
        assert_eq!(held.len(), 100);
        assert!(slots.try_take().is_none());
        drop(held);
        assert!(slots.try_take().is_some(), "dropped slots are free again");
    }

    #[test]
    fn attempts_over_the_rate_are_refused_until_the_next_second() {
        let limiter = RateLimiter::new(2);
        assert!(limiter.allow("u1", 10));
        assert!(limiter.allow("u1", 10));
        assert!(!limiter.allow("u1", 10));
        assert!(limiter.allow("u2", 10));
        assert!(limiter.allow("u1", 11));
    }
}
