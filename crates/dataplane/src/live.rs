//! Live tunnels, kept so each can be decided again when the configuration changes: revoking
//! access closes the tunnels it covers, not only new ones.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use tokio::sync::Notify;

/// Every live tunnel of one side, each described by a `T` its side can decide again.
pub(crate) struct LiveTunnels<T> {
    next: AtomicU64,
    tunnels: Mutex<HashMap<u64, (T, Arc<Notify>)>>,
}

impl<T> Default for LiveTunnels<T> {
    fn default() -> Self {
        LiveTunnels {
            next: AtomicU64::new(0),
            tunnels: Mutex::default(),
        }
    }
}

/// A registered tunnel: `revoked` fires when it is no longer allowed; dropping it deregisters.
pub(crate) struct Registered<'a, T> {
    live: &'a LiveTunnels<T>,
    id: u64,
    pub revoked: Arc<Notify>,
}

impl<T> Drop for Registered<'_, T> {
    fn drop(&mut self) {
        self.live.tunnels.lock().remove(&self.id);
    }
}

impl<T> LiveTunnels<T> {
    pub fn register(&self, tunnel: T) -> Registered<'_, T> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let revoked = Arc::new(Notify::new());
        self.tunnels.lock().insert(id, (tunnel, revoked.clone()));
        Registered {
            live: self,
            id,
            revoked,
        }
    }

    /// Revokes every tunnel for which `allowed` no longer holds.
    pub fn revalidate(&self, allowed: impl Fn(&T) -> bool) {
        for (tunnel, revoked) in self.tunnels.lock().values() {
            if !allowed(tunnel) {
                // notify_one keeps a permit, so a tunnel not yet waiting still sees it.
                revoked.notify_one();
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tunnels.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn revalidation_revokes_only_the_disallowed_and_drop_deregisters() {
        let live = LiveTunnels::default();
        let keep = live.register("keep");
        let cut = live.register("cut");
        assert_eq!(live.len(), 2);
        live.revalidate(|t| *t == "keep");
        // The revoked one is told, even though it was not yet waiting.
        tokio::time::timeout(std::time::Duration::from_secs(1), cut.revoked.notified())
            .await
            .unwrap();
        let kept = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            keep.revoked.notified(),
        )
        .await;
        assert!(kept.is_err(), "an allowed tunnel was revoked");
        drop(cut);
        assert_eq!(live.len(), 1);
    }
}
