//! Logging: JSON lines in production, human-readable in a terminal; and rate-limited warnings for
//! problems that can repeat thousands of times a second.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, LogSettings};

/// Installs the global subscriber. `RUST_LOG` wins over `log.level` when set.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match settings.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    // A second initialisation (tests building several apps) keeps the first subscriber.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Logs at most once per period and key, counting what it held back.
pub struct RateLimitedLog {
    period: Duration,
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl RateLimitedLog {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Calls `log` with the number of suppressed occurrences when `key` was not logged within
    /// the period; otherwise only counts.
    pub fn warn(&self, key: &'static str, log: impl FnOnce(u64)) {
        let suppressed = {
            let mut last = self.last.lock();
            let now = Instant::now();
            match last.get_mut(key) {
                Some((at, held)) if now.duration_since(*at) < self.period => {
                    *held += 1;
                    return;
                }
                Some((at, held)) => {
                    let suppressed = *held;
                    *at = now;
                    *held = 0;
                    suppressed
                }
                None => {
                    last.insert(key, (now, 0));
                    0
                }
            }
        };
        log(suppressed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_warnings_are_held_back_within_the_period() {
        let log = RateLimitedLog::new(Duration::from_secs(60));
        let mut logged = 0;
        for _ in 0..5 {
            log.warn("invalid_json", |_| logged += 1);
        }
        log.warn("missing_type", |_| logged += 1);
        assert_eq!(logged, 2);
    }
}
