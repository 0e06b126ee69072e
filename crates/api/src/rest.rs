//! The management REST API's paths and headers: one definition for the gateway that serves them
//! and the clients (gwctl, the demo) that call them.
//!
//! | path | what |
//! |---|---|
//! | [`API_PREFIX`]`/{resource}` | every object of a kind; cluster- and system-scoped items |
//! | [`API_PREFIX`]`/namespaces/{ns}/{resource}` | the objects of a kind in one namespace |
//! | [`HEALTHZ_PATH`], [`METRICS_PATH`], [`VERSION_PATH`] | health, Prometheus metrics, version |
//! | [`EVENTS_PATH`], [`TRAFFIC_PATH`], [`EXPLAIN_PATH`] | recent tunnels, live counts, a dry-run decision |
//! | [`CONSOLE_PATH`] | the web console |
//!
//! `{resource}` is a kind's plural ([`Kind::plural`]). The builders take path segments as they
//! are, so the server can build its route patterns from them (`collection_path("{resource}",
//! None)`); [`kind_collection_path`] and [`object_path`] choose the form a kind is addressed by.

use crate::{Kind, ObjectKey, Scope};

/// Path prefix of every resource route: `/apis/{API_GROUP}/{VERSION}`.
pub const API_PREFIX: &str = "/apis/clusterlink.net/v1alpha1";

/// Answers `ok` while the gateway can serve writes.
pub const HEALTHZ_PATH: &str = "/healthz";

/// The gateway's metrics, in the Prometheus text format.
pub const METRICS_PATH: &str = "/metrics";

/// The gateway's version and the API version it serves.
pub const VERSION_PATH: &str = "/version";

/// The gateway's recent tunnel events, newest first ([`crate::activity::TunnelEvent`]); query
/// `import=ns/name`, `export=ns/name`, `peer=name`, `limit=n` narrow them.
pub const EVENTS_PATH: &str = "/api/v1/events";

/// Live counts per import, export and peer ([`crate::activity::Traffic`]).
pub const TRAFFIC_PATH: &str = "/api/v1/traffic";

/// What each peer offers this gateway and what became of each offer
/// ([`crate::catalog::OffersView`]).
pub const OFFERS_PATH: &str = "/api/v1/offers";

/// POST an [`crate::activity::ExplainRequest`]: the decision a new connection would get now, on
/// both sides ([`crate::activity::Explanation`]).
pub const EXPLAIN_PATH: &str = "/api/v1/explain";

/// The web console's page.
/// The revocation lists a gateway holds (`GET`), and where an administrator hands it newer ones
/// (`POST`, PEM), which it then passes on to its peers.
pub const REVOCATIONS_PATH: &str = "/api/v1/revocations";

pub const CONSOLE_PATH: &str = "/console";

/// Response header carrying what a write did: `created`, `configured`, `unchanged`, `deleted`.
pub const RESULT_HEADER: &str = "x-clusterlink-result";

/// The objects of `resource` (a kind's plural) in `namespace`, or in every namespace (and the
/// cluster- and system-scoped ones) without one.
pub fn collection_path(resource: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{API_PREFIX}/namespaces/{ns}/{resource}"),
        None => format!("{API_PREFIX}/{resource}"),
    }
}

/// One object of `resource` named `name`, in `namespace` or addressed without one.
pub fn item_path(resource: &str, namespace: Option<&str>, name: &str) -> String {
    format!("{}/{name}", collection_path(resource, namespace))
}

/// Where objects of `kind` are listed and created: in `namespace` for a namespaced kind; for
/// cluster- and system-scoped kinds, and without a namespace, the path of all of them.
pub fn kind_collection_path(kind: Kind, namespace: Option<&str>) -> String {
    let namespace = match kind.scope() {
        Scope::Namespaced => namespace,
        Scope::System | Scope::Cluster => None,
    };
    collection_path(kind.plural(), namespace)
}

/// Where the object `key` is read, applied and deleted.
pub fn object_path(key: &ObjectKey) -> String {
    format!(
        "{}/{}",
        kind_collection_path(key.kind, Some(&key.namespace)),
        key.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_the_api_group_and_version() {
        assert_eq!(
            API_PREFIX,
            format!("/apis/{}/{}", crate::API_GROUP, crate::VERSION)
        );
    }

    #[test]
    fn paths_have_the_kubernetes_layout() {
        assert_eq!(
            collection_path("imports", Some("shop")),
            "/apis/clusterlink.net/v1alpha1/namespaces/shop/imports"
        );
        assert_eq!(
            collection_path("peers", None),
            "/apis/clusterlink.net/v1alpha1/peers"
        );
        assert_eq!(
            item_path("exports", Some("default"), "web"),
            "/apis/clusterlink.net/v1alpha1/namespaces/default/exports/web"
        );
        assert_eq!(
            item_path("privilegedaccesspolicies", None, "allow-all"),
            "/apis/clusterlink.net/v1alpha1/privilegedaccesspolicies/allow-all"
        );
        // The server's route patterns are built by the same functions.
        assert_eq!(
            item_path("{resource}", Some("{ns}"), "{name}"),
            "/apis/clusterlink.net/v1alpha1/namespaces/{ns}/{resource}/{name}"
        );
    }

    #[test]
    fn only_namespaced_kinds_are_addressed_in_a_namespace() {
        assert_eq!(
            kind_collection_path(Kind::Import, Some("shop")),
            "/apis/clusterlink.net/v1alpha1/namespaces/shop/imports"
        );
        assert_eq!(
            kind_collection_path(Kind::Import, None),
            "/apis/clusterlink.net/v1alpha1/imports"
        );
        assert_eq!(
            kind_collection_path(Kind::Peer, Some(crate::SYSTEM_NAMESPACE)),
            "/apis/clusterlink.net/v1alpha1/peers"
        );
        assert_eq!(
            kind_collection_path(Kind::PrivilegedAccessPolicy, Some("shop")),
            "/apis/clusterlink.net/v1alpha1/privilegedaccesspolicies"
        );
        assert_eq!(
            object_path(&ObjectKey::new(Kind::AccessPolicy, "shop", "deny-all")),
            "/apis/clusterlink.net/v1alpha1/namespaces/shop/accesspolicies/deny-all"
        );
        assert_eq!(
            object_path(&ObjectKey::new(
                Kind::Peer,
                crate::SYSTEM_NAMESPACE,
                "server1"
            )),
            "/apis/clusterlink.net/v1alpha1/peers/server1"
        );
    }

    #[test]
    fn every_kind_has_a_path() {
        for kind in Kind::ALL {
            let key = ObjectKey::new(kind, kind.default_namespace(), "x");
            let path = object_path(&key);
            assert!(path.starts_with(API_PREFIX), "{path}");
            assert!(path.ends_with(&format!("/{}/x", kind.plural())), "{path}");
        }
    }
}
