//! The ClusterLink resource model, `clusterlink.net/v1alpha1`.
//!
//! Manifests look like Kubernetes objects and use the field names of the established ClusterLink
//! API, so the same YAML works through the standalone management API and as Kubernetes custom
//! resources. This crate holds the types, their validation (errors name the field path), label
//! selectors, manifest parsing and the management API's REST paths ([`rest`]). It does no IO.

// Network input reaches this crate: a panic here is a crashed gateway, so failures are errors.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod attributes;
pub mod manifest;
pub mod meta;
pub mod resources;
pub mod rest;
pub mod selector;
pub mod validation;

pub use manifest::{ManifestError, parse_manifest, parse_manifests};
pub use meta::{Condition, ConditionStatus, ObjectMeta, Status};
pub use resources::{
    AccessPolicy, AccessPolicySpec, Endpoint, Export, ExportSpec, Import, ImportSource, ImportSpec,
    Kind, LbScheme, Object, ObjectKey, Peer, PeerSpec, PolicyAction, Port, PrivilegedAccessPolicy,
    PrivilegedAccessPolicySpec, Resource, Scope, Spec, WorkloadSelectorEntry,
};
pub use selector::{LabelSelector, LabelSelectorRequirement, SelectorOperator};
pub use validation::{FieldError, FieldErrors};

/// The API group and version every manifest carries in `apiVersion`.
pub const API_VERSION: &str = "clusterlink.net/v1alpha1";

/// The API group, as used in REST paths and custom resource definitions.
pub const API_GROUP: &str = "clusterlink.net";

/// The version within [`API_GROUP`].
pub const VERSION: &str = "v1alpha1";

/// Where Peers live, as in the established ClusterLink deployment.
pub const SYSTEM_NAMESPACE: &str = "clusterlink-system";

/// The namespace assumed when a namespaced manifest names none, as `kubectl` does.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The five kinds as Kubernetes custom resources. The definitions are generated from the same
/// types standalone mode parses, so one manifest means the same thing in both modes.
#[cfg(feature = "kubernetes")]
pub mod kubernetes {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube_core::CustomResourceExt;

    pub use crate::resources::{
        KubeAccessPolicy, KubeExport, KubeImport, KubePeer, KubePrivilegedAccessPolicy,
    };

    /// Every custom resource definition of the group, in the order they are listed in `Kind::ALL`.
    pub fn crds() -> Vec<CustomResourceDefinition> {
        vec![
            KubePeer::crd(),
            KubeExport::crd(),
            KubeImport::crd(),
            KubeAccessPolicy::crd(),
            KubePrivilegedAccessPolicy::crd(),
        ]
    }
}
