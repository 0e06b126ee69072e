//! Manifests the tests apply, as text (the way users write them).

use super::GatewayProcess;

pub fn peer(name: &str, gw: &GatewayProcess) -> String {
    let (host, port) = gw.peer_address.rsplit_once(':').unwrap();
    format!(
        "---\napiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {{name: {name}}}\nspec: {{gateways: [{{host: '{host}', port: {port}}}]}}\n"
    )
}

pub fn export(name: &str, port: u16) -> String {
    format!(
        "---\napiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {{name: {name}}}\nspec: {{host: 127.0.0.1, port: {port}}}\n"
    )
}

pub fn import(name: &str, port: u16, peers: &[&str], scheme: &str) -> String {
    let sources: Vec<String> = peers
        .iter()
        .map(|p| format!("{{peer: {p}, exportName: {name}, exportNamespace: default}}"))
        .collect();
    format!(
        "---\napiVersion: clusterlink.net/v1alpha1\nkind: Import\nmetadata: {{name: {name}}}\nspec: {{port: {port}, lbScheme: {scheme}, sources: [{}]}}\n",
        sources.join(", ")
    )
}

pub fn policy(kind: &str, name: &str, action: &str, from: &str, to: &str) -> String {
    format!(
        "---\napiVersion: clusterlink.net/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec: {{action: {action}, from: [{{workloadSelector: {from}}}], to: [{{workloadSelector: {to}}}]}}\n"
    )
}

pub fn allow_all(name: &str) -> String {
    policy("AccessPolicy", name, "allow", "{}", "{}")
}
