//! The data plane's one output besides metrics: the conditions only it can know (whether an
//! import's port is bound, whether a peer answers probes), reported through a write-only handle.
//! The data plane never reads configuration back from it; it reads snapshots.

use std::collections::BTreeMap;

use clusterlink_api::{Condition, ConditionType, ObjectKey};

/// Where the data plane reports runtime conditions of objects.
pub trait RuntimeConditions: Send + Sync + 'static {
    /// Sets (or with `None` clears) the condition `type_` of `key`.
    fn set(&self, key: &ObjectKey, type_: ConditionType, condition: Option<Condition>);

    /// Sets (or with `None` clears) the labels Peer `key` reports about itself, shown in its
    /// `status.labels`.
    fn set_reported_labels(&self, key: &ObjectKey, labels: Option<BTreeMap<String, String>>);
}

/// For a data plane whose conditions nobody reads: a replica on Kubernetes. Its control plane
/// probes the peers itself; whether each replica bound an import's port is seen by Kubernetes
/// (the Service's endpoints), and logged by the replica.
pub struct Unreported;

impl RuntimeConditions for Unreported {
    fn set(&self, key: &ObjectKey, type_: ConditionType, condition: Option<Condition>) {
        if let Some(c) = condition {
            tracing::debug!(object = %key, %type_, status = ?c.status, reason = %c.reason, "condition");
        }
    }

    fn set_reported_labels(&self, _: &ObjectKey, _: Option<BTreeMap<String, String>>) {}
}
