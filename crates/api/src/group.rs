//! The API group and version, and the namespaces objects live in by default.

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
