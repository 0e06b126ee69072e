//! The controller's API calls against a mocked API server (kube's `tower-test`): what it sends,
//! to which paths, with which bodies, for the scenarios of the reconcile rules.

mod support;

use std::collections::HashMap;

use clusterlink_k8s::{Executor, plan};
use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use support::*;

const NOW: &str = "2026-12-01T11:00:00Z";
const IMPORTS: &str = "/apis/clusterlink.net/v1alpha1/namespaces";

/// One request as the API server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    body: Value,
}

/// A mocked API server holding `objects` by path. A server-side apply stores and echoes its
/// body; a merge patch answers with the stored object; a delete answers with the stored object
/// or 404; paths in `failing` answer 500.
struct ApiServer {
    objects: HashMap<String, Value>,
    failing: Vec<String>,
}

impl ApiServer {
    fn new(world: &clusterlink_k8s::World) -> ApiServer {
        let mut objects = HashMap::new();
        let mut hold = |path: String, object: Value| objects.insert(path, object);
        for i in &world.imports {
            hold(path_of(i), serde_json::to_value(i).unwrap());
            hold(path_of(i) + "/status", serde_json::to_value(i).unwrap());
        }
        for e in &world.exports {
            hold(path_of(e) + "/status", serde_json::to_value(e).unwrap());
        }
        for p in &world.access_policies {
            hold(path_of(p) + "/status", serde_json::to_value(p).unwrap());
        }
        for p in &world.privileged_policies {
            hold(path_of(p) + "/status", serde_json::to_value(p).unwrap());
        }
        for s in &world.services {
            hold(path_of(s), serde_json::to_value(s).unwrap());
        }
        ApiServer {
            objects,
            failing: Vec::new(),
        }
    }

    /// Runs `plan(world)` through the executor against this server; returns what it was sent and
    /// the executor's result.
    async fn execute(mut self, world: &clusterlink_k8s::World) -> (Vec<Seen>, Result<(), String>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let changes = plan(world);
        let executor = tokio::spawn(async move {
            let failures = Executor::new(client).execute(&changes, NOW).await;
            match failures.first() {
                None => Ok(()),
                Some(first) => Err(first.to_string()),
            }
        });
        let mut seen = Vec::new();
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            let path = parts.uri.path().to_string();
            let query = parts.uri.query().unwrap_or_default().to_string();
            let apply = query.contains("fieldManager");
            let (status, reply) = if self.failing.contains(&path) {
                (
                    500,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "etcd is sad", "reason": "InternalError", "code": 500}),
                )
            } else if parts.method == Method::PATCH && apply {
                self.objects.insert(path.clone(), body.clone());
                (200, body.clone())
            } else if let Some(obj) = self.objects.get(&path) {
                let obj = obj.clone();
                if parts.method == Method::DELETE {
                    self.objects.remove(&path);
                }
                (200, obj)
            } else {
                (
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "not found", "reason": "NotFound", "code": 404}),
                )
            };
            seen.push(Seen {
                method: parts.method,
                path,
                query,
                body,
            });
            respond.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
        (seen, executor.await.unwrap())
    }
}

/// Where the API server keeps `object`.
fn path_of<K: kube::Resource<DynamicType = ()>>(object: &K) -> String {
    let m = object.meta();
    format!(
        "{}/{}",
        K::url_path(&(), m.namespace.as_deref()),
        m.name.as_ref().unwrap()
    )
}

fn calls(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect()
}

fn status_of<'a>(seen: &'a [Seen], path: &str) -> &'a Value {
    let s = seen
        .iter()
        .find(|s| s.path == path)
        .unwrap_or_else(|| panic!("no call to {path}: {:#?}", calls(seen)));
    &s.body["status"]["conditions"][0]
}

#[tokio::test]
async fn conflicting_target_ports_keep_the_older_import_and_report_the_newer() {
    let mut world = world();
    world.imports = vec![
        import("shop", "older", 1, &import_spec(80, ", targetPort: 20000")),
        import("shop", "newer", 2, &import_spec(81, ", targetPort: 20000")),
    ];
    let (seen, result) = ApiServer::new(&world).execute(&world).await;
    result.unwrap();
    assert_eq!(
        calls(&seen),
        [
            "PATCH /api/v1/namespaces/shop/services/older",
            "PATCH /apis/discovery.k8s.io/v1/namespaces/shop/endpointslices/older",
            "PATCH /apis/clusterlink.net/v1alpha1/namespaces/shop/imports/older/status",
            "PATCH /apis/clusterlink.net/v1alpha1/namespaces/shop/imports/newer/status",
        ]
    );
    // Services are written by server-side apply, forced, under the controller's name.
    assert!(
        seen[0]
            .query
            .contains("fieldManager=clusterlink-controller"),
        "{}",
        seen[0].query
    );
    assert!(seen[0].query.contains("force=true"), "{}", seen[0].query);
    assert_eq!(seen[0].body["spec"]["ports"][0]["targetPort"], 20000);
    let newer = status_of(&seen, &format!("{IMPORTS}/shop/imports/newer/status"));
    assert_eq!(newer["type"], "ImportValid");
    assert_eq!(newer["status"], "False");
    assert_eq!(newer["reason"], "TargetPortConflict");
    assert_eq!(newer["lastTransitionTime"], NOW);
    assert!(
        newer["message"].as_str().unwrap().contains("shop/older"),
        "{newer}"
    );
}

#[tokio::test]
async fn conflicting_services_are_reported_and_labelled_ones_adopted() {
    let world = taken_and_adoptable_services();
    let (seen, result) = ApiServer::new(&world).execute(&world).await;
    result.unwrap();
    let service_calls: Vec<_> = calls(&seen)
        .into_iter()
        .filter(|c| c.contains("/services/"))
        .collect();
    assert_eq!(
        service_calls,
        ["PATCH /api/v1/namespaces/shop/services/adoptable"]
    );
    let adopted = &seen
        .iter()
        .find(|s| s.path.ends_with("/services/adoptable"))
        .unwrap()
        .body;
    assert_eq!(
        adopted["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "clusterlink"
    );
    assert_eq!(adopted["metadata"]["ownerReferences"][0]["kind"], "Import");
    let taken = status_of(&seen, &format!("{IMPORTS}/shop/imports/taken/status"));
    assert_eq!(
        (taken["status"].as_str(), taken["reason"].as_str()),
        (Some("False"), Some("ServiceConflict"))
    );
    assert!(
        taken["message"]
            .as_str()
            .unwrap()
            .contains("clusterlink.net/adopt=true"),
        "{taken}"
    );
}

#[tokio::test]
async fn an_import_in_an_unprivileged_namespace_touches_only_that_namespace() {
    let mut world = world();
    world.imports = vec![import("team-a", "reviews", 1, &import_spec(9080, ""))];
    let (seen, result) = ApiServer::new(&world).execute(&world).await;
    result.unwrap();
    assert_eq!(
        calls(&seen),
        [
            "PATCH /apis/clusterlink.net/v1alpha1/namespaces/team-a/imports/reviews",
            "PATCH /api/v1/namespaces/team-a/services/reviews",
            "PATCH /apis/discovery.k8s.io/v1/namespaces/team-a/endpointslices/reviews",
            "PATCH /apis/clusterlink.net/v1alpha1/namespaces/team-a/imports/reviews/status",
        ]
    );
    // The allocated port is written back with a merge patch of the spec alone.
    assert_eq!(seen[0].body, json!({"spec": {"targetPort": 20000}}));
    assert!(!seen[0].query.contains("fieldManager"));
    // No selector can reach pods in another namespace: the endpoints are written instead.
    assert_eq!(seen[1].body["spec"].get("selector"), None);
    assert_eq!(seen[2].body["endpoints"][0]["addresses"][0], "10.244.1.7");
    assert_eq!(seen[2].body["ports"][0]["port"], 20000);
}

#[tokio::test]
async fn deleting_an_import_deletes_its_objects_and_frees_its_port() {
    let mut world = world();
    world.imports = vec![import("shop", "first", 1, &import_spec(80, ""))];
    let settled = applied(world.clone(), &plan(&world));
    let mut next = settled;
    next.imports = vec![import("shop", "second", 2, &import_spec(80, ""))];
    let (seen, result) = ApiServer::new(&next).execute(&next).await;
    result.unwrap();
    assert_eq!(
        calls(&seen),
        [
            "PATCH /apis/clusterlink.net/v1alpha1/namespaces/shop/imports/second",
            "PATCH /api/v1/namespaces/shop/services/second",
            "PATCH /apis/discovery.k8s.io/v1/namespaces/shop/endpointslices/second",
            "DELETE /api/v1/namespaces/shop/services/first",
            // The slice was never stored on this server: a 404 on delete is success.
            "DELETE /apis/discovery.k8s.io/v1/namespaces/shop/endpointslices/first",
            "PATCH /apis/clusterlink.net/v1alpha1/namespaces/shop/imports/second/status",
        ]
    );
    assert_eq!(
        seen[0].body,
        json!({"spec": {"targetPort": 20000}}),
        "the freed port is reused"
    );
}

#[tokio::test]
async fn a_64_character_import_name_is_refused_and_63_accepted() {
    let mut world = world();
    let (ok, long) = ("a".repeat(63), "b".repeat(64));
    world.imports = vec![
        import("shop", &ok, 1, &import_spec(80, ", targetPort: 20000")),
        import("shop", &long, 2, &import_spec(80, "")),
    ];
    let (seen, result) = ApiServer::new(&world).execute(&world).await;
    result.unwrap();
    assert!(calls(&seen).contains(&format!("PATCH /api/v1/namespaces/shop/services/{ok}")));
    assert!(
        !calls(&seen)
            .iter()
            .any(|c| c.contains(&format!("/services/{long}")))
    );
    assert!(
        !calls(&seen).contains(&format!("PATCH {IMPORTS}/shop/imports/{long}")),
        "no port for an invalid import"
    );
    let refused = status_of(&seen, &format!("{IMPORTS}/shop/imports/{long}/status"));
    assert_eq!(refused["reason"], "Invalid");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("metadata.name"),
        "{refused}"
    );
}

#[tokio::test]
async fn an_export_whose_service_is_missing_becomes_valid_when_it_appears() {
    let mut world = world();
    world.exports = vec![export("shop", "reviews", "{port: 9080}", "")];
    let (seen, result) = ApiServer::new(&world).execute(&world).await;
    result.unwrap();
    assert_eq!(
        calls(&seen),
        [format!("PATCH {IMPORTS}/shop/exports/reviews/status")]
    );
    let missing = status_of(&seen, &format!("{IMPORTS}/shop/exports/reviews/status"));
    assert_eq!(
        (missing["status"].as_str(), missing["reason"].as_str()),
        (Some("False"), Some("ServiceNotFound"))
    );

    let mut appeared = world;
    appeared.exports[0].status = serde_json::from_value(json!({"conditions": [missing]})).unwrap();
    appeared
        .services
        .push(service("shop", "reviews", "{app: reviews}"));
    let (seen, result) = ApiServer::new(&appeared).execute(&appeared).await;
    result.unwrap();
    let found = status_of(&seen, &format!("{IMPORTS}/shop/exports/reviews/status"));
    assert_eq!(
        (found["status"].as_str(), found["reason"].as_str()),
        (Some("True"), Some("ServiceFound"))
    );
    assert_eq!(found["lastTransitionTime"], NOW);

    // Settled: nothing more is sent.
    let settled = applied(appeared.clone(), &plan(&appeared));
    let (seen, _) = ApiServer::new(&settled).execute(&settled).await;
    assert!(seen.is_empty(), "{:#?}", calls(&seen));
}

#[tokio::test]
async fn a_failed_call_does_not_stop_the_others_and_is_reported() {
    let mut world = world();
    world.imports = vec![
        import("shop", "a", 1, &import_spec(80, ", targetPort: 20000")),
        import("shop", "b", 2, &import_spec(80, ", targetPort: 20001")),
    ];
    let mut server = ApiServer::new(&world);
    server
        .failing
        .push("/api/v1/namespaces/shop/services/a".into());
    let (seen, result) = server.execute(&world).await;
    let error = result.unwrap_err();
    assert!(error.contains("applying Service shop/a"), "{error}");
    assert!(calls(&seen).contains(&"PATCH /api/v1/namespaces/shop/services/b".to_string()));
}

#[tokio::test]
async fn policy_statuses_are_written_to_namespaced_and_cluster_scoped_policies() {
    let mut world = world();
    world.access_policies = vec![access_policy(
        "shop",
        "deny-nothing",
        "{action: deny, from: [], to: [{workloadSelector: {}}]}",
    )];
    world.privileged_policies = vec![privileged_policy(
        "allow-all",
        "{action: allow, from: [{workloadSelector: {}}], to: [{workloadSelector: {}}]}",
    )];
    let (seen, result) = ApiServer::new(&world).execute(&world).await;
    result.unwrap();
    assert_eq!(
        calls(&seen),
        [
            "PATCH /apis/clusterlink.net/v1alpha1/namespaces/shop/accesspolicies/deny-nothing/status",
            "PATCH /apis/clusterlink.net/v1alpha1/privilegedaccesspolicies/allow-all/status",
        ]
    );
    let refused = status_of(
        &seen,
        "/apis/clusterlink.net/v1alpha1/namespaces/shop/accesspolicies/deny-nothing/status",
    );
    assert_eq!(
        (
            refused["type"].as_str(),
            refused["status"].as_str(),
            refused["reason"].as_str()
        ),
        (Some("PolicyValid"), Some("False"), Some("Invalid"))
    );
    let enforced = status_of(
        &seen,
        "/apis/clusterlink.net/v1alpha1/privilegedaccesspolicies/allow-all/status",
    );
    assert_eq!(enforced["reason"], "Enforced");
    assert_eq!(enforced["lastTransitionTime"], NOW);
}
