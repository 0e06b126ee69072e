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
use crate::connections::drain;
use crate::limits::Limits;
use crate::snapshot::Snapshot;
use crate::workers::serve_on_worker;

const IMPORT_VALID: ConditionType = ConditionType::ImportValid;

struct RunningListener {
    port: u16,
    task: JoinHandle<()>,
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
                listener.task.abort();
                // Awaiting the aborted task guarantees its socket is closed before the port is
                // reused.
                let _ = listener.task.await;
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
            match TcpListener::bind(addr).await {
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
                    let task = tokio::spawn(accept_loop(
                        listener,
                        key.clone(),
                        egress.clone(),
                        snapshots.clone(),
                        shutdown.clone(),
                    ));
                    running.insert(
                        key.clone(),
                        RunningListener {
                            port: import.port,
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
            _ = tokio::time::sleep(Limits::DEFAULT.bind_retry), if !failed.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    // Each listener stops accepting and drains its connections on its own, all at once.
    for (_, listener) in running {
        let _ = listener.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    key: ObjectKey,
    egress: Arc<Egress>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Round-robin position survives changes of the import's sources.
    let next = Arc::new(AtomicUsize::new(0));
    // Owned here so that closing the listener (import deleted) closes its connections too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, remote)) => {
                    let snapshot = snapshots.borrow().clone();
                    let (key, next, egress) = (key.clone(), next.clone(), egress.clone());
                    serve_on_worker(&mut connections, client, move |client| async move {
                        egress.serve_client(client, remote, &key, &snapshot, &next).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(import = %key, error = %e, "import accept failed");
                    tokio::time::sleep(Limits::DEFAULT.accept_retry).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            // The guard wait_for returns is not Send: drop it inside the branch's future.
            () = async { drop(shutdown.wait_for(|stop| *stop).await) } => break,
        }
    }
    drop(listener);
    drain(connections, &format!("connections of import {key}")).await;
}
