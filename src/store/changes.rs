//! How a store announces that records changed: synchronously to this process's listeners (the
//! verifier's cache), so that when a write returns its effect is already in force here, and on a
//! broadcast channel for anyone else who wants to watch.

use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use tokio::sync::broadcast;

use super::Invalidation;
use crate::telemetry::Metrics;

/// A synchronous listener: called on the writing (or subscription) task, so it must not block.
pub type Listener = Arc<dyn Fn(Invalidation) + Send + Sync>;

pub(crate) struct Changes {
    tx: broadcast::Sender<Invalidation>,
    listeners: RwLock<Vec<Listener>>,
    /// Where the revocation lag of changes seen from other writers is recorded.
    metrics: OnceLock<Arc<Metrics>>,
}

impl Changes {
    pub(crate) fn new() -> Self {
        Changes {
            tx: broadcast::channel(1024).0,
            listeners: RwLock::new(Vec::new()),
            metrics: OnceLock::new(),
        }
    }

    /// Applies `inv` in every listener, then tells subscribers (none is fine: e.g. the CLI).
    pub(crate) fn publish(&self, inv: Invalidation) {
        let listeners = self.listeners.read().unwrap_or_else(|e| e.into_inner());
        for l in listeners.iter() {
            l(inv);
        }
        drop(listeners);
        let _ = self.tx.send(inv);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Invalidation> {
        self.tx.subscribe()
    }

    pub(crate) fn listen(&self, listener: Listener) {
        self.listeners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(listener);
    }

    pub(crate) fn report_to(&self, metrics: Arc<Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// A change made elsewhere reached this process `lag` after it was written.
    pub(crate) fn observe_lag(&self, lag: Duration) {
        if let Some(m) = self.metrics.get() {
            m.revocation_lag.observe(lag);
        }
    }
}
