//! `clusterlink deploy peer` and `delete peer` against a mocked Kubernetes API server: what is
//! applied and deleted, where, in which order, and what a deletion reports.

use std::collections::BTreeMap;

use clusterlink::kubernetes_cmd::apply;
use clusterlink_k8s::deploy::{Ingress, PeerDeployment};
use http::{Method, Request, Response};
use kube::client::Body;
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

/// One request the mocked API server received.
struct Call {
    method: Method,
    path: String,
    query: String,
    body: Value,
}

/// Serves `handle` like an API server that holds nothing but accepts everything: applies echo
/// their body, deletes answer 404 for `missing` paths and 200 otherwise. Returns the calls.
async fn serve(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    missing: Vec<String>,
) -> Vec<Call> {
    let mut seen = Vec::new();
    while let Some((request, respond)) = handle.next_request().await {
        let (parts, body) = request.into_parts();
        let body = body.collect_bytes().await.unwrap();
        let path = parts.uri.path().to_string();
        let (status, reply) = if parts.method == Method::DELETE && missing.contains(&path) {
            (
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
            )
        } else if parts.method == Method::DELETE {
            (
                200,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
            )
        } else {
            (200, serde_json::from_slice(&body).unwrap())
        };
        seen.push(Call {
            method: parts.method,
            path,
            query: parts.uri.query().unwrap_or_default().to_string(),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
        respond.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
    }
    seen
}

#[tokio::test]
async fn apply_then_delete_removes_exactly_what_was_applied() {
    let manifests = peer().manifests().unwrap();
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, Vec::new()));
    apply::apply(&kube::Client::new(service, "default"), &manifests)
        .await
        .unwrap();
    let applied: Vec<(Method, String)> = server
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.method, c.path))
        .collect();
    assert!(applied.iter().all(|(m, _)| *m == Method::PATCH));
    assert_eq!(applied.len(), manifests.len());
    assert_eq!(
        applied[0].1,
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/peers.clusterlink.net"
    );
    assert_eq!(applied[5].1, "/api/v1/namespaces/clusterlink-system");
    assert_eq!(
        applied.last().unwrap().1,
        "/apis/apps/v1/namespaces/clusterlink-system/deployments/cl-dataplane"
    );

    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let gone = "/api/v1/namespaces/clusterlink-system/secrets/cl-peer-tls".to_string();
    let server = tokio::spawn(serve(handle, vec![gone.clone()]));
    let deleted = apply::delete(&kube::Client::new(service, "default"), &manifests, false)
        .await
        .unwrap();
    let calls: Vec<(Method, String)> = server
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.method, c.path))
        .collect();
    assert!(calls.iter().all(|(m, _)| *m == Method::DELETE));
    // Everything applied except the definitions, in reverse order.
    let mut expected: Vec<String> = applied.iter().skip(5).map(|(_, p)| p.clone()).collect();
    expected.reverse();
    assert_eq!(
        calls.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(),
        expected
    );
    assert!(
        !deleted.contains(&"Secret clusterlink-system/cl-peer-tls".to_string()),
        "an object already gone is not reported"
    );
    assert!(deleted.contains(&"Deployment clusterlink-system/cl-dataplane".to_string()));
    assert!(
        deleted.contains(&"ClusterRole clusterlink-controlplane-clusterlink-system".to_string())
    );
}

#[tokio::test]
async fn apply_sends_each_object_as_built_under_one_forced_field_manager() {
    let manifests = peer().manifests().unwrap();
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, Vec::new()));
    apply::apply(&kube::Client::new(service, "default"), &manifests)
        .await
        .unwrap();
    let calls = server.await.unwrap();
    assert_eq!(calls.len(), manifests.len());
    for (call, m) in calls.iter().zip(&manifests) {
        assert_eq!(
            call.body,
            serde_json::to_value(m).unwrap(),
            "{} {}",
            call.method,
            call.path
        );
        let query: BTreeMap<&str, &str> = call
            .query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .collect();
        assert_eq!(query.get("fieldManager"), Some(&"clusterlink-deploy"));
        assert_eq!(query.get("force"), Some(&"true"));
    }
}

#[tokio::test]
async fn delete_with_crds_also_deletes_the_definitions_last() {
    let manifests = peer().manifests().unwrap();
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, Vec::new()));
    let deleted = apply::delete(&kube::Client::new(service, "default"), &manifests, true)
        .await
        .unwrap();
    let calls = server.await.unwrap();
    assert_eq!(calls.len(), manifests.len());
    assert_eq!(deleted.len(), manifests.len());
    assert_eq!(
        calls.last().unwrap().path,
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/peers.clusterlink.net"
    );
    assert_eq!(
        deleted.last().unwrap(),
        "CustomResourceDefinition peers.clusterlink.net"
    );
}
