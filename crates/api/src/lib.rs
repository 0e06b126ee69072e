//! The ClusterLink resource model, `clusterlink.net/v1alpha1`.
//!
//! Manifests look like Kubernetes objects and use the field names of the established ClusterLink
//! API, so the same YAML works through the standalone management API and as Kubernetes custom
//! resources. This crate holds the types, their validation (errors name the field path), label
//! selectors, manifest parsing and the management API's REST paths ([`rest`]). It does no IO.

// Network input reaches this crate: a panic here is a crashed gateway, so failures are errors.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod activity;
pub mod attributes;
pub mod catalog;
pub mod clients;
pub mod conditions;
mod group;
pub mod manifest;
pub mod meta;
pub mod resources;
pub mod rest;
pub mod selector;
pub mod shared_map;
pub mod text;
pub mod validation;

pub use conditions::{ConditionReason, ConditionType};
pub use group::{API_GROUP, API_VERSION, DEFAULT_NAMESPACE, SYSTEM_NAMESPACE, VERSION};
pub use manifest::{ManifestError, parse_manifest, parse_manifests};
pub use meta::{Condition, ConditionStatus, ObjectMeta, Status};
pub use resources::{
    AccessPolicy, AccessPolicySpec, Endpoint, Export, ExportSpec, Import, ImportSource, ImportSpec,
    Kind, LbScheme, Object, ObjectKey, Objects, Peer, PeerProtocol, PeerSpec, PolicyAction, Port,
    PrivilegedAccessPolicy, PrivilegedAccessPolicySpec, Resource, Scope, ServiceNaming, Spec,
    WorkloadSelectorEntry,
};
pub use selector::{LabelSelector, LabelSelectorRequirement, SelectorOperator};
pub use shared_map::SharedMap;
pub use validation::{FieldError, FieldErrors};

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

    #[cfg(test)]
    mod tests {
        /// The printer columns (spelled in the derive attributes, where no constant can go)
        /// show the condition each kind carries.
        #[test]
        fn printer_columns_show_each_kinds_condition() {
            for (crd, kind) in super::crds().iter().zip(crate::Kind::ALL) {
                let wanted = format!("@.type==\"{}\"", kind.condition());
                let columns = crd.spec.versions[0]
                    .additional_printer_columns
                    .as_deref()
                    .unwrap_or_default();
                let paths: Vec<&str> = columns
                    .iter()
                    .map(|c| c.json_path.as_str())
                    .filter(|p| p.contains("@.type=="))
                    .collect();
                assert!(!paths.is_empty(), "{kind:?} shows no condition");
                for path in paths {
                    assert!(path.contains(&wanted), "{kind:?}: {path} is not {wanted}");
                }
            }
        }
    }
}
