//! Policy attribute keys (DESIGN.md §2). Selectors in access policies match these.

/// Name of a peer: the client's peer on the source side, the exporting peer on the destination.
pub const PEER_NAME: &str = "peer.clusterlink.net/name";
/// Prefix of a peer's labels: `peer.clusterlink.net/labels.<key>`.
pub const PEER_LABELS_PREFIX: &str = "peer.clusterlink.net/labels.";
/// Namespace of the connecting client workload.
pub const CLIENT_NAMESPACE: &str = "client.clusterlink.net/namespace";
/// Service account of the connecting client workload.
pub const CLIENT_SERVICE_ACCOUNT: &str = "client.clusterlink.net/service-account";
/// Prefix of the client workload's labels.
pub const CLIENT_LABELS_PREFIX: &str = "client.clusterlink.net/labels.";
/// Name of the exported service.
pub const EXPORT_NAME: &str = "export.clusterlink.net/name";
/// Namespace of the exported service.
pub const EXPORT_NAMESPACE: &str = "export.clusterlink.net/namespace";
/// Prefix of the export's labels.
pub const EXPORT_LABELS_PREFIX: &str = "export.clusterlink.net/labels.";

/// Attribute key to value: what a policy selector is matched against for one side of a
/// connection.
pub type Attributes = std::collections::BTreeMap<String, String>;

/// Whether `key` is an attribute of the client workload (`client.clusterlink.net/...`): the
/// only kind a peer may send, and the kind whose absence means the client is unknown.
pub fn is_client_attribute(key: &str) -> bool {
    key == CLIENT_NAMESPACE
        || key == CLIENT_SERVICE_ACCOUNT
        || key.starts_with(CLIENT_LABELS_PREFIX)
}
