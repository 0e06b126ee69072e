//! Accepting from strangers: every listener that takes connections before they authenticate
//! bounds them in total and per source address, and closes the excess at accept, counted and
//! logged (with a rate limit) in [`Metrics::unserved`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::limits::Bounds;
use crate::metrics::{Listener, Metrics, Unserved};

/// Accepts on `listener` until `shutdown` flips, within `bounds`, serving each connection with
/// `serve` as a task of the returned set (for the caller to drain or abort). The listener is
/// closed on return.
pub async fn accept_bounded<F, Fut>(
    listener: TcpListener,
    bounds: Bounds,
    kind: Listener,
    metrics: &Metrics,
    shutdown: &mut watch::Receiver<bool>,
    mut serve: F,
) -> JoinSet<()>
where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    let total = Arc::new(Semaphore::new(bounds.total));
    let sources = PerSource::new(bounds.per_source);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off rather than spin.
                    tracing::warn!(listener = ?kind, error = %e, "accept failed");
                    tokio::time::sleep(crate::limits::Limits::DEFAULT.accept_retry).await;
                    continue;
                }
            },
            // Reap finished connections so the set does not grow with every one ever served.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = shutdown.changed() => break,
        };
        let Ok(place) = total.clone().try_acquire_owned() else {
            let detail = format!("{} connections are open", bounds.total);
            metrics.unserved(kind, Unserved::ListenerLimit, remote, &detail);
            continue;
        };
        let Some(source) = sources.enter(remote.ip()) else {
            let detail = format!(
                "{} connections from {} are open",
                bounds.per_source,
                remote.ip()
            );
            metrics.unserved(kind, Unserved::SourceLimit, remote, &detail);
            continue;
        };
        let served = serve(stream, remote);
        connections.spawn(async move {
            let _held = (place, source);
            served.await
        });
    }
    connections
}

/// Connections by source address, each source up to a limit.
pub(crate) struct PerSource {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerSource {
    pub fn new(limit: usize) -> Arc<PerSource> {
        Arc::new(PerSource {
            limit,
            open: Mutex::default(),
        })
    }

    /// A place for one more connection from `ip`, unless it holds its share.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let mut open = self.open.lock();
        let count = open.entry(ip).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            sources: self.clone(),
            ip,
        })
    }
}

/// One connection's place among its source's; given back when dropped.
pub(crate) struct SourceSlot {
    sources: Arc<PerSource>,
    ip: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.sources.open.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_has_its_share_and_gets_it_back() {
        let sources = PerSource::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = sources.enter(a).unwrap();
        let _second = sources.enter(a).unwrap();
        assert!(sources.enter(a).is_none());
        assert!(sources.enter(b).is_some());
        drop(first);
        assert!(sources.enter(a).is_some());
    }
}
