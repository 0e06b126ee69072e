//! Object metadata and status conditions, in the Kubernetes shape.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::conditions::{ConditionReason, ConditionType};
use crate::validation::{FieldErrors, check_label_key, check_label_value};

/// `metadata` of every object. Server-managed fields (`creationTimestamp`) are accepted on input
/// so that `gwctl get -o yaml` output can be applied again, and are set by the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339, set by the server when the object is first created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// Set by the server at every change of the object. A write that carries it is applied only
    /// while the object is still at that version (else `409 Conflict`), so two clients that
    /// read, change and write the same object cannot lose each other's change. Opaque, as in
    /// Kubernetes: compare it, never order it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Set by the server: 1 when the object is created, one more at each change of its spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

/// Longest annotation value accepted; annotations are notes, not payloads.
pub const MAX_ANNOTATION_BYTES: usize = 64 * 1024;

impl ObjectMeta {
    pub(crate) fn validate_labels(&self, errors: &mut FieldErrors) {
        for (k, v) in &self.labels {
            let field = format!("metadata.labels[{k}]");
            if let Err(e) = check_label_key(k).and_then(|()| check_label_value(v)) {
                errors.push(field, e);
            }
        }
        let mut total = 0;
        for (k, v) in &self.annotations {
            if let Err(e) = check_label_key(k) {
                errors.push(format!("metadata.annotations[{k}]"), e);
            }
            total += k.len() + v.len();
        }
        if total > MAX_ANNOTATION_BYTES {
            errors.push(
                "metadata.annotations",
                format!("must total at most {MAX_ANNOTATION_BYTES} bytes (got {total})"),
            );
        }
    }
}

/// `status` of every kind: conditions a person can act on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "kubernetes", derive(schemars::JsonSchema))]
pub struct Status {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Peers only: the labels the peer reports about itself over the peer port. Policies see
    /// them as `peer.clusterlink.net/labels.*`, with the object's own `metadata.labels` winning
    /// a clash.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Status {
    pub fn condition(&self, type_: ConditionType) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_.as_str())
    }

    /// The condition that tells the object's state at a glance: the first False, else the first
    /// Unknown, else `carried` (the one its kind carries). Every view judges an object by it,
    /// so none calls an object healthy while one of its conditions says otherwise.
    pub fn telling(&self, carried: ConditionType) -> Option<&Condition> {
        let first = |status| self.conditions.iter().find(|c| c.status == status);
        first(ConditionStatus::False)
            .or_else(|| first(ConditionStatus::Unknown))
            .or_else(|| self.condition(carried))
    }
}

/// A Kubernetes-style condition (`metav1.Condition`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "kubernetes", derive(schemars::JsonSchema))]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The `metadata.generation` the condition was set for (Kubernetes mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    pub fn new(
        type_: ConditionType,
        status: ConditionStatus,
        reason: ConditionReason,
        message: impl Into<String>,
    ) -> Self {
        Condition {
            type_: type_.as_str().to_string(),
            status,
            reason: reason.as_str().to_string(),
            message: message.into(),
            last_transition_time: None,
            observed_generation: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kubernetes", derive(schemars::JsonSchema))]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}
