//! The manifests the tests, benchmarks and demo apply, for services on loopback in the
//! `default` namespace.

/// Allows every connection (deny policies still decide first).
pub const ALLOW_ALL: &str = "\
apiVersion: clusterlink.net/v1alpha1
kind: AccessPolicy
metadata: {name: allow-all, namespace: default}
spec:
  action: allow
  from: [{workloadSelector: {}}]
  to: [{workloadSelector: {}}]
";

/// An export of the service on loopback `port`.
pub fn export(name: &str, port: u16) -> String {
    format!(
        "apiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {{name: {name}, namespace: default}}\nspec: {{host: 127.0.0.1, port: {port}}}\n"
    )
}

/// A peer whose one gateway is at `address` (`host:port`, or a host on port 443).
pub fn peer(name: &str, address: &str) -> String {
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "443"));
    format!(
        "apiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {{name: {name}}}\nspec: {{gateways: [{{host: '{host}', port: {port}}}]}}\n"
    )
}

/// An import of export `name` from each of `sources`, round-robin.
pub fn import(name: &str, port: u16, sources: &[&str]) -> String {
    let sources: Vec<String> = sources
        .iter()
        .map(|p| format!("{{peer: {p}, exportName: {name}, exportNamespace: default}}"))
        .collect();
    format!(
        "apiVersion: clusterlink.net/v1alpha1\nkind: Import\nmetadata: {{name: {name}, namespace: default}}\nspec: {{port: {port}, lbScheme: round-robin, sources: [{}]}}\n",
        sources.join(", ")
    )
}
