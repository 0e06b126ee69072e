//! Custom resources to the gateway's model: the Kubernetes source is an adapter that yields the
//! same [`Object`]s the standalone store holds, validated by the same rules.

use clusterlink_api::kubernetes::{
    KubeAccessPolicy, KubeExport, KubeImport, KubePeer, KubePrivilegedAccessPolicy,
};
use clusterlink_api::{FieldErrors, Object, ObjectMeta, Resource, SYSTEM_NAMESPACE, Spec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta as KubeMeta;

/// The model's metadata of a custom resource. `namespace` replaces the object's own where the
/// model places the kind elsewhere (Peers live in the model's system namespace whatever
/// namespace the peer was deployed into).
fn metadata(meta: &KubeMeta, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.clone().unwrap_or_default(),
        namespace: namespace
            .map(str::to_string)
            .or_else(|| meta.namespace.clone())
            .unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        // Annotations are the cluster's business (kubectl's last-applied configuration alone can
        // exceed the model's limit); the model has no use for them.
        annotations: Default::default(),
        creation_timestamp: meta.creation_timestamp.as_ref().map(|t| t.0.to_string()),
        // The API server's own versions: the model keeps them as they are.
        resource_version: meta.resource_version.clone(),
        generation: meta.generation,
    }
}

fn resource<S: Spec + Clone>(meta: &KubeMeta, spec: &S, namespace: Option<&str>) -> Resource<S> {
    let mut r = Resource::new("", "", spec.clone());
    r.metadata = metadata(meta, namespace);
    r
}

/// Validated model objects from custom resources. An object that breaks a rule the schema cannot
/// express (a 64-character import name, a selector with a bad operator value) is an error naming
/// the field, which the controller writes into the object's status.
pub fn peer(p: &KubePeer) -> Result<Object, FieldErrors> {
    checked(Object::Peer(resource(
        &p.metadata,
        &p.spec,
        Some(SYSTEM_NAMESPACE),
    )))
}

pub fn export(e: &KubeExport) -> Result<Object, FieldErrors> {
    checked(Object::Export(resource(&e.metadata, &e.spec, None)))
}

pub fn import(i: &KubeImport) -> Result<Object, FieldErrors> {
    checked(Object::Import(resource(&i.metadata, &i.spec, None)))
}

pub fn access_policy(p: &KubeAccessPolicy) -> Result<Object, FieldErrors> {
    checked(Object::AccessPolicy(resource(&p.metadata, &p.spec, None)))
}

pub fn privileged_access_policy(p: &KubePrivilegedAccessPolicy) -> Result<Object, FieldErrors> {
    checked(Object::PrivilegedAccessPolicy(resource(
        &p.metadata,
        &p.spec,
        None,
    )))
}

fn checked(obj: Object) -> Result<Object, FieldErrors> {
    obj.validate().map(|()| obj)
}
