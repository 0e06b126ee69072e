//! The manifests `clusterlink deploy peer` produces: valid Kubernetes objects that fit together,
//! least-privilege RBAC, clear refusals of bad arguments, and what applying and deleting them
//! sends where (the requests themselves are tested with the CLI, which sends them).

use std::collections::BTreeMap;

use clusterlink_k8s::deploy::{self, DeployError, Ingress, Manifest, PeerDeployment};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

fn peer() -> PeerDeployment {
    PeerDeployment {
        name: "server1".into(),
        namespace: "clusterlink-system".into(),
        ingress: Ingress::LoadBalancer,
        ingress_port: 443,
        dataplane_replicas: 3,
        labels: BTreeMap::from([("region".into(), "eu-west".into())]),
        registry: "registry.example.com/team/".into(),
        tag: "v9".into(),
        ca_pem: "CA PEM".into(),
        cert_pem: "CERT PEM".into(),
        key_pem: "KEY PEM".into(),
        mcs_api: false,
        service_monitor: false,
    }
}

fn find<'a>(manifests: &'a [Manifest], kind: &str, name: &str) -> &'a Manifest {
    manifests
        .iter()
        .find(|m| m.kind() == kind && m.name() == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn deployment(manifests: &[Manifest], name: &str) -> Deployment {
    match find(manifests, "Deployment", name) {
        Manifest::Deployment(d) => d.clone(),
        _ => unreachable!(),
    }
}

#[test]
fn every_manifest_parses_back_as_its_kubernetes_type_without_losing_a_field() {
    let manifests = peer().manifests().unwrap();
    let yaml = deploy::to_yaml(&manifests).unwrap();
    let mut kinds = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&yaml) {
        let value: Value = serde::Deserialize::deserialize(doc).unwrap();
        let kind = value["kind"].as_str().unwrap().to_string();
        // Typed parse and re-serialization: a field the type does not know would be dropped.
        fn round<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> Value {
            serde_json::to_value(serde_json::from_value::<T>(v.clone()).unwrap()).unwrap()
        }
        let back = match kind.as_str() {
            "CustomResourceDefinition" => round::<CustomResourceDefinition>(&value),
            "Namespace" => round::<Namespace>(&value),
            "ServiceAccount" => round::<ServiceAccount>(&value),
            "ClusterRole" => round::<ClusterRole>(&value),
            "ClusterRoleBinding" => round::<ClusterRoleBinding>(&value),
            "Role" => round::<Role>(&value),
            "RoleBinding" => round::<RoleBinding>(&value),
            "Secret" => round::<Secret>(&value),
            "Service" => round::<Service>(&value),
            "Deployment" => round::<Deployment>(&value),
            other => panic!("unexpected kind {other}"),
        };
        assert_eq!(back, value, "{kind} changed on a round trip");
        kinds.push(kind);
    }
    assert_eq!(
        kinds,
        [
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "Namespace",
            "ServiceAccount",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Secret",
            "Service",
            "Service",
            "Deployment",
            "Deployment",
        ],
        "definitions, namespace and RBAC come before what uses them"
    );
}

#[test]
fn the_pieces_fit_together() {
    let p = peer();
    let manifests = p.manifests().unwrap();
    for m in &manifests {
        let labels = m.metadata().labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get("app.kubernetes.io/part-of").map(String::as_str),
            Some("clusterlink"),
            "{}",
            deploy::describe(m)
        );
        if !matches!(m, Manifest::CustomResourceDefinition(_)) {
            assert_eq!(
                labels.get(deploy::PEER_LABEL).map(String::as_str),
                Some("server1")
            );
        }
    }
    for name in [deploy::CONTROLPLANE, deploy::DATAPLANE] {
        let d = deployment(&manifests, name);
        let spec = d.spec.unwrap();
        let template_labels = spec.template.metadata.unwrap().labels.unwrap();
        for (k, v) in spec.selector.match_labels.unwrap() {
            assert_eq!(
                template_labels.get(&k),
                Some(&v),
                "{name}: selector must match its pods"
            );
        }
        let pod = spec.template.spec.unwrap();
        let container = &pod.containers[0];
        assert_eq!(
            container.image.as_deref(),
            Some("registry.example.com/team/clusterlink:v9")
        );
        assert_eq!(
            pod.volumes.unwrap()[0]
                .secret
                .as_ref()
                .unwrap()
                .secret_name
                .as_deref(),
            Some(deploy::TLS_SECRET)
        );
        let args = container.args.clone().unwrap();
        assert!(
            args.contains(&"--cert=/etc/clusterlink/tls.crt".to_string()),
            "{args:?}"
        );
        assert_eq!(
            container
                .security_context
                .as_ref()
                .unwrap()
                .allow_privilege_escalation,
            Some(false)
        );
        // Probes and a scrape target on the operations port, which the process is told to serve.
        let ops = container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(deploy::OPS_PORT_NAME))
            .expect("a metrics port");
        assert!(
            args.contains(&format!("--ops-address=0.0.0.0:{}", ops.container_port)),
            "{args:?}"
        );
        let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
            let get = probe.as_ref().unwrap().http_get.clone().unwrap();
            assert_eq!(
                get.port,
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                    deploy::OPS_PORT_NAME.into()
                )
            );
            get.path.unwrap()
        };
        assert_eq!(probe_path(&container.liveness_probe), "/healthz");
        assert_eq!(probe_path(&container.readiness_probe), "/readyz");
        let resources = container.resources.clone().unwrap();
        assert!(resources.requests.unwrap().contains_key("memory"));
        assert!(resources.limits.unwrap().contains_key("memory"));
    }
    let dataplane = deployment(&manifests, deploy::DATAPLANE).spec.unwrap();
    assert_eq!(dataplane.replicas, Some(3));
    let pod = dataplane.template.spec.unwrap();
    assert_eq!(
        pod.automount_service_account_token,
        Some(false),
        "the data plane needs no API access"
    );
    let args = pod.containers[0].args.clone().unwrap();
    assert!(
        args.contains(&"--label=region=eu-west".to_string()),
        "the peer's labels are policy attributes, matched in the data plane: {args:?}"
    );
    assert!(
        args.contains(&"--control-plane=cl-controlplane.clusterlink-system.svc:8444".to_string()),
        "{args:?}"
    );

    // The peer-port Service selects exactly the data-plane pods, on their peer port.
    let Manifest::Service(peer_port) = find(&manifests, "Service", deploy::PEER_SERVICE) else {
        unreachable!()
    };
    let spec = peer_port.spec.clone().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(spec.selector.unwrap(), p.dataplane_selector());
    let port = &spec.ports.unwrap()[0];
    assert_eq!(
        (port.port, port.target_port.clone()),
        (
            443,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(4443))
        )
    );

    // The controller is told the same selector the Service uses.
    let controller_args = deployment(&manifests, deploy::CONTROLPLANE)
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap();
    assert!(controller_args.contains(&"--dataplane-selector=app.kubernetes.io/instance=server1,app.kubernetes.io/name=cl-dataplane".to_string()), "{controller_args:?}");

    let Manifest::Secret(secret) = find(&manifests, "Secret", deploy::TLS_SECRET) else {
        unreachable!()
    };
    let data = secret.data.clone().unwrap();
    assert_eq!(data["tls.key"].0, b"KEY PEM");
    assert_eq!(data["ca.crt"].0, b"CA PEM");
}

#[test]
fn a_service_monitor_scrapes_every_pod_of_the_peer_on_its_operations_port() {
    assert!(
        peer()
            .manifests()
            .unwrap()
            .iter()
            .all(|m| m.kind() != "ServiceMonitor"),
        "only when asked for"
    );
    let manifests = PeerDeployment {
        service_monitor: true,
        ..peer()
    }
    .manifests()
    .unwrap();
    let Manifest::Service(service) = find(&manifests, "Service", deploy::METRICS_SERVICE) else {
        unreachable!()
    };
    let Manifest::ServiceMonitor(monitor) =
        find(&manifests, "ServiceMonitor", deploy::METRICS_SERVICE)
    else {
        unreachable!()
    };
    // The monitor selects the Service, in the peer's namespace, on its named port.
    let service_labels = service.metadata.labels.clone().unwrap();
    let wanted = monitor.spec.selector.match_labels.clone().unwrap();
    assert!(wanted.iter().all(|(k, v)| service_labels.get(k) == Some(v)));
    assert_eq!(
        monitor.spec.namespace_selector.match_names,
        ["clusterlink-system"]
    );
    let spec = service.spec.clone().unwrap();
    let port = &spec.ports.unwrap()[0];
    assert_eq!(monitor.spec.endpoints[0].port, port.name.clone().unwrap());
    assert_eq!(monitor.spec.endpoints[0].path, "/metrics");
    // The Service selects both components' pods, whose containers name that port.
    let selector = spec.selector.unwrap();
    for name in [deploy::CONTROLPLANE, deploy::DATAPLANE] {
        let pod = deployment(&manifests, name).spec.unwrap().template;
        let labels = pod.metadata.unwrap().labels.unwrap();
        assert!(
            selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "{name}"
        );
        let ports = pod.spec.unwrap().containers[0].ports.clone().unwrap();
        assert!(ports.iter().any(|p| p.name == port.name), "{name}");
    }
    // It comes last, after what it watches, and goes first on deletion.
    assert_eq!(manifests.last().unwrap().kind(), "ServiceMonitor");
    let value = serde_json::to_value(manifests.last().unwrap()).unwrap();
    assert_eq!(value["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(value["kind"], "ServiceMonitor");
}

#[test]
fn rbac_grants_the_controller_only_what_it_uses() {
    // With the Multi-Cluster Services API, its two kinds and nothing more.
    let mcs = PeerDeployment {
        mcs_api: true,
        ..peer()
    };
    let grants_of = |manifests: &[Manifest]| {
        let Manifest::ClusterRole(role) = find(
            manifests,
            "ClusterRole",
            "clusterlink-controlplane-clusterlink-system",
        ) else {
            unreachable!()
        };
        let mut grants: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in role.rules.iter().flatten() {
            for g in r.api_groups.iter().flatten() {
                for res in r.resources.iter().flatten() {
                    grants
                        .entry(format!("{g}/{res}"))
                        .or_default()
                        .extend(r.verbs.iter().cloned());
                }
            }
        }
        grants
    };
    let mut with_mcs = grants_of(&mcs.manifests().unwrap());
    assert_eq!(
        with_mcs.remove("multicluster.x-k8s.io/serviceexports"),
        Some(vec!["get".into(), "list".into(), "watch".into()])
    );
    assert_eq!(
        with_mcs.remove("multicluster.x-k8s.io/serviceimports"),
        Some(
            ["get", "list", "watch", "create", "patch", "delete"]
                .map(String::from)
                .to_vec()
        )
    );
    assert_eq!(with_mcs, grants_of(&peer().manifests().unwrap()));
    assert!(
        mcs.manifests()
            .unwrap()
            .iter()
            .any(|m| { serde_json::to_string(m).unwrap().contains("--mcs-api") })
    );

    let manifests = peer().manifests().unwrap();
    let Manifest::ClusterRole(role) = find(
        &manifests,
        "ClusterRole",
        "clusterlink-controlplane-clusterlink-system",
    ) else {
        unreachable!()
    };
    let rules = role.rules.clone().unwrap();
    let mut grants = BTreeMap::new();
    for r in &rules {
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                assert_ne!(res, "*", "no wildcard resources");
                for v in &r.verbs {
                    assert_ne!(v, "*", "no wildcard verbs");
                    grants
                        .entry(format!("{g}/{res}"))
                        .or_insert_with(Vec::new)
                        .push(v.clone());
                }
            }
        }
    }
    let expected: BTreeMap<String, Vec<String>> = serde_json::from_value(json!({
        "/pods": ["get", "list", "watch"],
        "/services": ["get", "list", "watch", "create", "patch", "delete"],
        "clusterlink.net/accesspolicies": ["get", "list", "watch"],
        "clusterlink.net/accesspolicies/status": ["get", "patch"],
        "clusterlink.net/exports": ["get", "list", "watch"],
        "clusterlink.net/exports/status": ["get", "patch"],
        "clusterlink.net/imports": ["get", "list", "watch", "create", "patch", "delete"],
        "clusterlink.net/imports/status": ["get", "patch"],
        "clusterlink.net/privilegedaccesspolicies": ["get", "list", "watch"],
        "clusterlink.net/privilegedaccesspolicies/status": ["get", "patch"],
        "discovery.k8s.io/endpointslices": ["get", "list", "watch", "create", "patch", "delete"],
    }))
    .unwrap();
    assert_eq!(
        grants, expected,
        "no secrets, no roles, nothing in users' namespaces beyond Services"
    );
    // Peers are read in the peer's own namespace only.
    let Manifest::Role(peers) = find(&manifests, "Role", deploy::CONTROLPLANE) else {
        unreachable!()
    };
    assert_eq!(
        peers.metadata.namespace.as_deref(),
        Some("clusterlink-system")
    );
    assert!(peers.rules.as_ref().unwrap().iter().all(|r| {
        r.resources
            .as_ref()
            .unwrap()
            .iter()
            .all(|x| x.starts_with("peers"))
    }));
}

#[test]
fn ingress_kinds() {
    let mut p = peer();
    p.ingress = Ingress::NodePort;
    p.ingress_port = 30443;
    let manifests = p.manifests().unwrap();
    let Manifest::Service(s) = find(&manifests, "Service", deploy::PEER_SERVICE) else {
        unreachable!()
    };
    let spec = s.spec.clone().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("NodePort"));
    assert_eq!(spec.ports.unwrap()[0].node_port, Some(30443));
    p.ingress = Ingress::None;
    p.ingress_port = 8443;
    let manifests = p.manifests().unwrap();
    let Manifest::Service(s) = find(&manifests, "Service", deploy::PEER_SERVICE) else {
        unreachable!()
    };
    assert_eq!(s.spec.as_ref().unwrap().type_.as_deref(), Some("ClusterIP"));
    assert_eq!("nodeport".parse::<Ingress>(), Ok(Ingress::NodePort));
    assert!(
        "ingress-nginx"
            .parse::<Ingress>()
            .unwrap_err()
            .contains("LoadBalancer, NodePort or none")
    );
}

#[test]
fn bad_arguments_are_refused_with_the_flag_named() {
    type Change = fn(&mut PeerDeployment);
    let cases: Vec<(Change, &str)> = vec![
        (|p| p.name = "Server_1".into(), "--name \"Server_1\""),
        (|p| p.namespace = "".into(), "--namespace \"\""),
        (
            |p| {
                p.labels.insert("bad key!".into(), "x".into());
            },
            "--label \"bad key!=x\"",
        ),
        (
            |p| {
                p.ingress = Ingress::NodePort;
                p.ingress_port = 443;
            },
            "outside the NodePort range",
        ),
        (|p| p.ingress_port = 0, "--ingress-port must be 1-65535"),
        (
            |p| p.dataplane_replicas = 0,
            "--dataplane-replicas must be at least 1",
        ),
    ];
    for (change, want) in cases {
        let mut p = peer();
        change(&mut p);
        let err = p.manifests().unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
        assert!(matches!(
            err,
            DeployError::Name(..)
                | DeployError::Namespace(..)
                | DeployError::Label(..)
                | DeployError::NodePortRange { .. }
                | DeployError::ZeroPort
                | DeployError::NoReplicas
        ));
    }
}

#[test]
fn each_object_is_addressed_and_sent_as_its_kubernetes_type() {
    let manifests = peer().manifests().unwrap();
    for m in &manifests {
        let resource = m.api_resource();
        let object = m.to_dynamic().unwrap();
        let types = object.types.clone().unwrap();
        assert_eq!(types.kind, m.kind());
        assert_eq!(resource.kind, m.kind());
        assert_eq!(types.api_version, resource.api_version);
        assert_eq!(object.metadata, *m.metadata());
        assert_eq!(
            serde_json::to_value(&object).unwrap(),
            serde_json::to_value(m).unwrap(),
            "{} changed as an untyped object",
            deploy::describe(m)
        );
        assert_eq!(
            m.namespaced(),
            m.namespace().is_some(),
            "{}",
            deploy::describe(m)
        );
    }
    let resource_of = |kind: &str| {
        find(
            &manifests,
            kind,
            match kind {
                "CustomResourceDefinition" => "peers.clusterlink.net",
                "Namespace" => "clusterlink-system",
                "ClusterRole" | "ClusterRoleBinding" => {
                    "clusterlink-controlplane-clusterlink-system"
                }
                "Secret" => deploy::TLS_SECRET,
                "Service" => deploy::PEER_SERVICE,
                _ => deploy::CONTROLPLANE,
            },
        )
        .api_resource()
    };
    let crd = resource_of("CustomResourceDefinition");
    assert_eq!(
        (
            crd.group.as_str(),
            crd.version.as_str(),
            crd.plural.as_str()
        ),
        ("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    );
    let secret = resource_of("Secret");
    assert_eq!(
        (
            secret.group.as_str(),
            secret.api_version.as_str(),
            secret.plural.as_str()
        ),
        ("", "v1", "secrets")
    );
    let binding = resource_of("ClusterRoleBinding");
    assert_eq!(
        (binding.group.as_str(), binding.plural.as_str()),
        ("rbac.authorization.k8s.io", "clusterrolebindings")
    );
    assert_eq!(resource_of("Deployment").api_version, "apps/v1");
}

#[test]
fn deletion_undoes_the_apply_order_and_spares_definitions_unless_asked() {
    let manifests = peer().manifests().unwrap();
    let names = |ms: Vec<&Manifest>| ms.into_iter().map(deploy::describe).collect::<Vec<_>>();
    let mut all = names(manifests.iter().collect());
    all.reverse();
    assert_eq!(names(deploy::deletion_order(&manifests, true)), all);
    let kept = names(deploy::deletion_order(&manifests, false));
    assert_eq!(
        kept,
        all.iter()
            .filter(|d| !d.starts_with("CustomResourceDefinition"))
            .cloned()
            .collect::<Vec<_>>()
    );
    assert_eq!(kept.len(), manifests.len() - 5);
    assert_eq!(kept[0], "Deployment clusterlink-system/cl-dataplane");
    assert_eq!(kept.last().unwrap(), "Namespace clusterlink-system");
}
