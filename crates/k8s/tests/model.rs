//! The adapter from custom resources to the gateway's model, and client attributes from pods.

mod support;

use std::sync::Arc;

use clusterlink_api::kubernetes::{KubeAccessPolicy, KubePeer};
use clusterlink_api::{
    Condition, ConditionReason, ConditionStatus, ConditionType, Kind, Object, ObjectKey,
    SYSTEM_NAMESPACE,
};
use clusterlink_gateway::model::ControlPlane;
use clusterlink_k8s::{model, pods};
use clusterlink_store::MemoryStore;
use k8s_openapi::api::core::v1::Pod;
use support::*;

#[test]
fn the_model_sees_imports_on_their_target_port_and_exports_by_service_name() {
    let mut world = world();
    world.imports = vec![
        import(
            "shop",
            "served",
            1,
            &import_spec(9080, ", targetPort: 20000"),
        ),
        // Not yet written back: served once its port is recorded, so Service and listener agree.
        import("shop", "pending", 2, &import_spec(9081, "")),
        // Loses the contest for 20000: not served at all.
        import(
            "shop",
            "loser",
            3,
            &import_spec(9082, ", targetPort: 20000"),
        ),
    ];
    world.exports = vec![
        export("shop", "reviews", "{port: 9080}", ""),
        export("shop", "db", "{host: db.example.com, port: 5432}", ""),
    ];
    // Deployed in another namespace than the model's system namespace: the Peer moves there.
    let peer: KubePeer = parse(
        "{apiVersion: clusterlink.net/v1alpha1, kind: Peer, metadata: {name: server2, namespace: cl-east}, spec: {gateways: [{host: 10.0.0.2, port: 443}]}}",
    );
    let bad_peer: KubePeer = parse(
        "{apiVersion: clusterlink.net/v1alpha1, kind: Peer, metadata: {name: Bad_Name, namespace: cl-east}, spec: {gateways: [{host: 10.0.0.3, port: 443}]}}",
    );
    let policy: KubeAccessPolicy = parse(
        "{apiVersion: clusterlink.net/v1alpha1, kind: AccessPolicy, metadata: {name: allow, namespace: shop}, spec: {action: allow, from: [{workloadSelector: {}}], to: [{workloadSelector: {}}]}}",
    );
    world.peers = vec![peer, bad_peer];
    world.access_policies = vec![policy];
    let objects = model::objects(&world);
    let names: Vec<String> = objects.iter().map(|o| o.key().to_string()).collect();
    assert_eq!(
        names,
        [
            "Peer server2",
            "AccessPolicy shop/allow",
            "Export shop/reviews",
            "Export shop/db",
            "Import shop/served"
        ],
        "invalid and unserved objects are left out"
    );
    let Object::Peer(p) = &objects[0] else {
        unreachable!()
    };
    assert_eq!(p.metadata.namespace, SYSTEM_NAMESPACE);
    let Object::Export(reviews) = &objects[2] else {
        unreachable!()
    };
    assert_eq!(reviews.spec.host, "reviews.shop.svc");
    let Object::Export(db) = &objects[3] else {
        unreachable!()
    };
    assert_eq!(db.spec.host, "db.example.com");
    let Object::Import(served) = &objects[4] else {
        unreachable!()
    };
    assert_eq!(
        served.spec.port.get(),
        20000,
        "the data plane listens on the target port"
    );
}

#[tokio::test]
async fn peer_status_shows_the_probes_and_why_an_invalid_peer_is_not_used() {
    let mut world = world();
    let gateways = "{gateways: [{host: 10.0.0.2, port: 443}]}";
    world.peers = vec![
        peer("east", gateways),
        peer("west", gateways),
        peer("Bad_Name", gateways),
    ];
    let control_plane = ControlPlane::open(Arc::new(MemoryStore::default())).unwrap();
    control_plane
        .replace_all(model::objects(&world))
        .await
        .unwrap();
    let reachable = Condition::new(
        ConditionType::PeerReachable,
        ConditionStatus::True,
        ConditionReason::Probed,
        "answered",
    );
    let east = ObjectKey::new(Kind::Peer, SYSTEM_NAMESPACE, "east");
    control_plane.set_condition(&east, ConditionType::PeerReachable, Some(reachable));

    let changes = model::peer_status_changes(&control_plane, &world);
    assert_eq!(
        condition_of(&changes, "east"),
        Some(("True".into(), "Probed".into()))
    );
    assert_eq!(
        condition_of(&changes, "west"),
        Some(("Unknown".into(), "NotProbed".into())),
        "admitted, not probed yet"
    );
    assert_eq!(
        condition_of(&changes, "Bad_Name"),
        Some(("False".into(), "Invalid".into()))
    );
    let (_, _, invalid) = status_set_for(&changes, "Bad_Name").unwrap();
    assert_eq!(invalid.type_, "PeerReachable");
    assert!(invalid.message.contains("metadata.name"), "{invalid:?}");

    let settled = applied(world, &changes);
    assert_eq!(
        model::peer_status_changes(&control_plane, &settled),
        vec![],
        "a status already shown is not written again"
    );
}

fn pod(yaml: &str) -> Pod {
    parse(yaml)
}

#[test]
fn client_attributes_come_from_running_pods_by_address() {
    let running = pod(
        "{metadata: {name: web-1, namespace: shop, labels: {app: web}}, spec: {serviceAccountName: frontend, containers: []}, status: {phase: Running, podIP: 10.244.1.5, podIPs: [{ip: 10.244.1.5}, {ip: 'fd00::5'}]}}",
    );
    let default_sa = pod(
        "{metadata: {name: job, namespace: batch}, spec: {containers: []}, status: {phase: Running, podIP: 10.244.1.6}}",
    );
    let host_network = pod(
        "{metadata: {name: agent, namespace: kube-system}, spec: {hostNetwork: true, containers: []}, status: {phase: Running, podIP: 192.168.0.10}}",
    );
    let finished = pod(
        "{metadata: {name: old, namespace: shop}, spec: {containers: []}, status: {phase: Succeeded, podIP: 10.244.1.7}}",
    );
    let hosts = pods::client_hosts([&running, &default_sa, &host_network, &finished]);
    let web = hosts.get("10.244.1.5".parse().unwrap()).unwrap();
    assert_eq!(web["client.clusterlink.net/namespace"], "shop");
    assert_eq!(web["client.clusterlink.net/service-account"], "frontend");
    assert_eq!(web["client.clusterlink.net/labels.app"], "web");
    assert_eq!(
        hosts.get("fd00::5".parse().unwrap()),
        Some(web),
        "every address of the pod"
    );
    assert_eq!(
        hosts.get("::ffff:10.244.1.5".parse().unwrap()),
        Some(web),
        "IPv4 seen by a dual-stack listener"
    );
    assert_eq!(
        hosts.get("10.244.1.6".parse().unwrap()).unwrap()["client.clusterlink.net/service-account"],
        "default"
    );
    assert_eq!(
        hosts.get("192.168.0.10".parse().unwrap()),
        None,
        "a node address says nothing about which pod"
    );
    assert_eq!(
        hosts.get("10.244.1.7".parse().unwrap()),
        None,
        "a finished pod's address may be reused"
    );
    assert_eq!(hosts.len(), 3);
}
