//! Mirroring on a standalone gateway: keeps the Imports that Peers' `spec.mirror` rules ask for
//! in step with what those peers offer (`clusterlink_api::catalog::plan` decides; this only
//! writes).

use std::sync::Arc;

use clusterlink_api::Object;
use clusterlink_api::catalog::plan;
use clusterlink_dataplane::catalog::Catalogs;
use tokio::sync::watch;

use crate::model::ControlPlane;

/// Runs until `shutdown` flips: after every change of the configuration or of a peer's catalog,
/// writes what the plan asks for. Its own writes wake it once more, and then the plan is empty.
pub(crate) async fn run(
    control_plane: ControlPlane,
    mut catalogs: watch::Receiver<Arc<Catalogs>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut objects = control_plane.subscribe();
    loop {
        let planned = {
            let objects = objects.borrow_and_update().clone();
            let catalogs = catalogs.borrow_and_update().clone();
            plan(&objects, &catalogs)
        };
        for import in planned.apply {
            let key = Object::Import(import.clone()).key();
            match control_plane.apply(Object::Import(import)).await {
                Ok(_) => tracing::info!(import = %key, "mirrored import written"),
                // A store that cannot write now is tried again at the next change.
                Err(e) => tracing::warn!(import = %key, error = %e, "mirrored import not written"),
            }
        }
        for key in planned.delete {
            match control_plane.delete(key.clone()).await {
                Ok(_) => {
                    tracing::info!(import = %key, "mirrored import withdrawn: no peer offers it")
                }
                Err(e) => tracing::warn!(import = %key, error = %e, "mirrored import not deleted"),
            }
        }
        tokio::select! {
            changed = objects.changed() => if changed.is_err() { return },
            changed = catalogs.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}
