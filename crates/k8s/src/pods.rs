//! Client attributes from pods: the namespace, service account and labels of the pod behind a
//! client's address, taken from the controller's pod cache (never an API call per connection).

use std::net::IpAddr;

use clusterlink_api::clients::ClientHosts;
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};

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

/// Keeps of a pod only what [`client_hosts`] and [`is_ready`] read. The controller caches every
/// pod of the cluster, and a real pod's containers, volumes and statuses are most of its size.
pub fn trim(pod: &mut Pod) {
    pod.metadata.annotations = None;
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        host_network: spec.host_network,
        service_account_name: spec.service_account_name,
        ..Default::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        pod_ip: status.pod_ip,
        pod_ips: status.pod_ips,
        conditions: status.conditions,
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trimmed_pod_gives_the_same_attributes_and_readiness() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"},
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"serviceAccountName": "web", "containers": [{"name": "web", "image": "nginx",
                     "env": [{"name": "A", "value": "1"}]}], "volumes": [{"name": "v", "emptyDir": {}}]},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "podIPs": [{"ip": "10.244.0.5"}],
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "web", "image": "nginx", "imageID": "x",
                                              "ready": true, "restartCount": 0}]}
        }))
        .unwrap();
        let mut trimmed = pod.clone();
        trim(&mut trimmed);
        assert_eq!(client_hosts([&trimmed]), client_hosts([&pod]));
        assert_eq!(client_hosts([&trimmed]).len(), 1);
        assert_eq!(is_ready(&trimmed), is_ready(&pod));
        assert!(is_ready(&trimmed));
        let size = |p: &Pod| serde_json::to_vec(p).unwrap().len();
        assert!(size(&trimmed) < size(&pod), "nothing was trimmed");
    }
}
