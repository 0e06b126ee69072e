//! The Multi-Cluster Services API (`multicluster.x-k8s.io/v1alpha1`), opt-in
//! (`cl-controlplane --mcs-api`, `clusterlink deploy peer --mcs-api`): a `ServiceExport` exports
//! the Service of its name as the `clusterlink.net/export` label does, and each mirrored Import
//! publishes a `ServiceImport` of its name that points at the Import's Service. The API's own
//! CRDs (from its project) must be installed; ClusterLink does not define them.
//!
//! Only the fields ClusterLink reads or writes are typed; the rest of an object is left as the
//! API server holds it.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// A request to export the Service of the same name and namespace. It has no spec: its name is
/// all it says (a derived custom resource would require one).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ServiceExport {
    pub metadata: ObjectMeta,
}

impl kube::Resource for ServiceExport {
    type DynamicType = ();
    type Scope = kube::core::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "ServiceExport".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "multicluster.x-k8s.io".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1alpha1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "serviceexports".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A service other clusters offer, as consumers of the API look it up.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceImport",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportSpec {
    /// `ClusterSetIP`: reached at `ips`, the address of the Import's Service.
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServiceImportPort>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportPort {
    pub port: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}
