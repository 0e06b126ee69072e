//! Applying and deleting a peer's deployment manifests through the Kubernetes API: what
//! `clusterlink deploy peer` and `delete peer` do without `--output`. The manifests, their order
//! and what a deletion spares come from [`clusterlink_k8s::deploy`]; this module only sends them.

use clusterlink_k8s::deploy::{self, Manifest};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};

/// The field manager of the server-side applies: a later deploy takes over the fields it set.
const FIELD_MANAGER: &str = "clusterlink-deploy";

/// The API of the manifest's kind, in the manifest's namespace if the kind has namespaces.
fn api_of(client: &kube::Client, m: &Manifest) -> Api<DynamicObject> {
    let resource = m.api_resource();
    if m.namespaced() {
        Api::namespaced_with(client.clone(), m.namespace().unwrap_or_default(), &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    }
}

/// Creates or updates every object (server-side apply, forced, in order).
pub async fn apply(client: &kube::Client, manifests: &[Manifest]) -> Result<(), kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for m in manifests {
        let object = m.to_dynamic().map_err(kube::Error::SerdeError)?;
        api_of(client, m)
            .patch(m.name(), &params, &Patch::Apply(&object))
            .await?;
    }
    Ok(())
}

/// Deletes what [`apply`] created, in [`deploy::deletion_order`] (the custom resource definitions
/// only `with_crds`). Objects already gone are skipped; returns what was deleted.
pub async fn delete(
    client: &kube::Client,
    manifests: &[Manifest],
    with_crds: bool,
) -> Result<Vec<String>, kube::Error> {
    let params = DeleteParams::background();
    let mut deleted = Vec::new();
    for m in deploy::deletion_order(manifests, with_crds) {
        match api_of(client, m).delete(m.name(), &params).await {
            Ok(_) => deleted.push(deploy::describe(m)),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}
