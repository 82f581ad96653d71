//! Connection-attempt rate limits: at most N new streams per second per key (user or client IP).
//! Per replica and in memory: a load balancer spreading clients over R replicas allows up to R
//! times the rate in total, which is what a per-replica guard against floods needs.

use std::collections::HashMap;

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

#[cfg(test)]
mod tests {
    use super::*;

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
