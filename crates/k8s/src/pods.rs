//! Client attributes from pods: the namespace, service account and labels of the pod behind a
//! client's address, taken from the controller's pod cache (never an API call per connection).

use std::net::IpAddr;

use clusterlink_api::clients::ClientHosts;
use k8s_openapi::api::core::v1::Pod;

/// The client attributes of every running pod that has an address. Host-network pods share their
/// node's address, so they are left out: the address does not say which of them connected.
pub fn client_hosts<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> ClientHosts {
    let mut hosts = ClientHosts::default();
    for pod in pods {
        let Some(spec) = &pod.spec else { continue };
        let Some(status) = &pod.status else { continue };
        if spec.host_network == Some(true) || status.phase.as_deref() != Some("Running") {
            continue;
        }
        let addresses = status
            .pod_ips
            .iter()
            .flatten()
            .map(|ip| ip.ip.as_str())
            .chain(status.pod_ip.as_deref());
        for address in addresses {
            let Ok(address) = address.parse::<IpAddr>() else {
                continue;
            };
            hosts.insert(
                address,
                pod.metadata.namespace.clone().unwrap_or_default(),
                spec.service_account_name
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                pod.metadata.labels.clone().unwrap_or_default(),
            );
        }
    }
    hosts
}

/// A pod whose `Ready` condition is true.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
