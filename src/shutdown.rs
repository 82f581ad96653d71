//! One shutdown signal and the readiness flag that every long-lived task watches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Shutdown {
    draining: Arc<AtomicBool>,
    stopped: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self {
            draining: Arc::new(AtomicBool::new(false)),
            stopped: watch::channel(false).0,
        }
    }

    /// From now on no new stream is accepted and readiness fails.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Tells every background task to finish.
    pub fn stop(&self) {
        self.start_draining();
        self.stopped.send_replace(true);
    }

    /// Resolves once `stop` has been called.
    pub async fn stopped(&self) {
        let mut receiver = self.stopped.subscribe();
        // An error means the sender is gone, which only happens when everything is shutting down.
        let _ = receiver.wait_for(|stopped| *stopped).await;
    }
}
