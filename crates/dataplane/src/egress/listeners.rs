//! One listener per import, in step with the snapshots: bound when an import appears, closed
//! (with its connections) when it goes, rebound when its port changes, retried while its port is
//! taken. Whether each is listening is reported as the import's `ImportValid` condition.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use clusterlink_api::{
    Condition, ConditionReason, ConditionStatus, ConditionType, ObjectKey, SharedMap,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::client::Egress;
use crate::conditions::RuntimeConditions;
use crate::connections::{drain, tune_listener};
use crate::metrics::Listener;
use crate::snapshot::Snapshot;
use crate::workers::{serve_accepted, workers};

const IMPORT_VALID: ConditionType = ConditionType::ImportValid;

struct RunningListener {
    port: u16,
    /// Set to close the listener and its connections (the import went or moved).
    close: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningListener {
    /// Closes the listener and its connections; its port is free once this returns.
    async fn close(self) {
        self.close.send_replace(true);
        let _ = self.task.await;
    }
}

/// Keeps one listener per import in step with the snapshots: binds new ones, closes deleted ones
/// (with their connections), rebinds on a port change, and retries a port that was taken.
pub(crate) async fn run_import_listeners(
    address: IpAddr,
    egress: Arc<Egress>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    conditions: Arc<dyn RuntimeConditions>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut running: HashMap<ObjectKey, RunningListener> = HashMap::new();
    // Imports whose port could not be bound; retried every `Limits::bind_retry`, and on every change.
    let mut failed: HashSet<ObjectKey> = HashSet::new();
    // The imports the listeners were last brought in step with. Only those that changed since,
    // and those still waiting for their port, need a look: each pass costs the change, not the
    // number of imports.
    let mut seen = SharedMap::new();
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let mut touched: Vec<ObjectKey> = seen
            .differences(&snapshot.imports)
            .into_iter()
            .map(|d| d.key.clone())
            .chain(failed.iter().cloned())
            .collect();
        touched.sort_unstable();
        touched.dedup();
        // Every listener that goes is closed before any is bound, so that two imports trading
        // ports both get theirs.
        for key in &touched {
            let import = snapshot.imports.get(key);
            if import.is_none() && failed.remove(key) {
                conditions.set(key, IMPORT_VALID, None);
            }
            if running
                .get(key)
                .is_some_and(|l| import.is_none_or(|i| i.port != l.port))
                && let Some(listener) = running.remove(key)
            {
                listener.close().await;
                conditions.set(key, IMPORT_VALID, None);
            }
        }
        for key in &touched {
            let Some(import) = snapshot.imports.get(key) else {
                continue;
            };
            if running.contains_key(key) {
                continue;
            }
            let addr = SocketAddr::new(address, import.port);
            // Taken off this runtime at once: a data-path thread accepts from it.
            let bound = TcpListener::bind(addr).await.and_then(|listener| {
                let listener = listener.into_std()?;
                tune_listener(&listener)?;
                Ok(listener)
            });
            match bound {
                Ok(listener) => {
                    failed.remove(key);
                    tracing::info!(import = %key, %addr, "import listening");
                    conditions.set(
                        key,
                        IMPORT_VALID,
                        Some(Condition::new(
                            IMPORT_VALID,
                            ConditionStatus::True,
                            ConditionReason::Listening,
                            format!("listening on {addr}"),
                        )),
                    );
                    let (close, closing) = watch::channel(false);
                    let accepting = Accepting {
                        key: key.clone(),
                        egress: egress.clone(),
                        snapshots: snapshots.clone(),
                        next: Arc::default(),
                        close: closing,
                        shutdown: shutdown.clone(),
                    };
                    let task = accept_on_a_thread(listener, accepting);
                    running.insert(
                        key.clone(),
                        RunningListener {
                            port: import.port,
                            close,
                            task,
                        },
                    );
                }
                Err(e) => {
                    if failed.insert(key.clone()) {
                        tracing::warn!(import = %key, %addr, error = %e, "import cannot listen");
                    }
                    conditions.set(
                        key,
                        IMPORT_VALID,
                        Some(Condition::new(
                            IMPORT_VALID,
                            ConditionStatus::False,
                            ConditionReason::PortUnavailable,
                            format!("cannot listen on {addr}: {e}"),
                        )),
                    );
                }
            }
        }
        seen = snapshot.imports.clone();
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            // A port held by something outside ClusterLink frees up without any change here.
            _ = tokio::time::sleep(egress.limits.bind_retry), if !failed.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    // Each listener stops accepting and drains its connections on its own, all at once.
    for (_, listener) in running {
        let _ = listener.task.await;
    }
}

/// What an import's accept loop needs.
struct Accepting {
    key: ObjectKey,
    egress: Arc<Egress>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Round-robin position over the import's sources; survives changes of the sources.
    next: Arc<AtomicUsize>,
    /// Set when the import goes or moves: the listener and its connections close at once.
    close: watch::Receiver<bool>,
    /// Set when the gateway stops: the listener closes and its connections drain.
    shutdown: watch::Receiver<bool>,
}

/// Accepts on one data-path thread (imports take the threads in turn), which serves what it
/// accepts while it is not busier than the others ([`serve_accepted`]): one thread waits on the
/// listener, so a client's connect wakes one thread, and no connection changes thread until the
/// load calls for it. With no data-path threads, accepts on this runtime.
fn accept_on_a_thread(listener: std::net::TcpListener, accepting: Accepting) -> JoinHandle<()> {
    let workers = workers();
    match workers.next() {
        Some(me) => workers
            .handle(me)
            .spawn(accept_from(listener, accepting, Some(me))),
        None => tokio::spawn(accept_from(listener, accepting, None)),
    }
}

/// Accepts from `listener` on the runtime this runs on (data-path thread `me`, if any), so only
/// its own readiness wakes it.
async fn accept_from(listener: std::net::TcpListener, accepting: Accepting, me: Option<usize>) {
    match TcpListener::from_std(listener) {
        Ok(listener) => accept_loop(listener, accepting, me).await,
        Err(e) => {
            tracing::warn!(import = %accepting.key, error = %e, "cannot accept on a data-path thread");
        }
    }
}

async fn accept_loop(listener: TcpListener, accepting: Accepting, me: Option<usize>) {
    let Accepting {
        key,
        egress,
        snapshots,
        next,
        mut close,
        mut shutdown,
    } = accepting;
    // Owned here so that closing the listener (import deleted) closes its connections too.
    let mut connections = JoinSet::new();
    let closed = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, remote)) => {
                    // Out of descriptors: reset at once rather than left to wait (a loop's chain
                    // of tunnels then unwinds), leaving the reserve to the rest of the gateway.
                    let Some(descriptors) = egress.descriptors.take(2) else {
                        egress.refuse_unserved(client, remote, &key);
                        continue;
                    };
                    let snapshot = snapshots.borrow().clone();
                    let (key, next, egress) = (key.clone(), next.clone(), egress.clone());
                    serve_accepted(&mut connections, me, client, move |client| async move {
                        egress.serve_client(client, remote, &key, &snapshot, &next, descriptors).await;
                    });
                }
                Err(e) => {
                    egress.metrics.accept_failed(Listener::Import, &e);
                    tokio::time::sleep(egress.limits.accept_retry).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            // The guards wait_for returns are not Send: drop them inside the branch's future.
            // A dropped sender closes too: nothing is left to keep the import.
            () = async { drop(close.wait_for(|close| *close).await) } => break true,
            () = async { drop(shutdown.wait_for(|stop| *stop).await) } => break false,
        }
    };
    drop(listener);
    if closed {
        connections.shutdown().await;
    } else {
        let limit = egress.limits.drain;
        drain(connections, limit, &format!("connections of import {key}")).await;
    }
}
