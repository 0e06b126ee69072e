//! The reconcile rules, as pure functions of a world. Each plan is also kept as a reviewed
//! snapshot under `tests/snapshots/`.

mod support;

use clusterlink_api::Kind;
use clusterlink_k8s::{Change, plan};
use support::*;

fn services_applied(changes: &[Change]) -> Vec<(String, String)> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::ApplyService(s) => Some((
                s.metadata.namespace.clone().unwrap(),
                s.metadata.name.clone().unwrap(),
            )),
            _ => None,
        })
        .collect()
}

/// Plans, checks that the plan converges (a second pass over the result plans nothing), and
/// returns the first plan.
fn converging_plan(world: &clusterlink_k8s::World) -> Vec<Change> {
    let changes = plan(world);
    let after = applied(world.clone(), &changes);
    assert_eq!(
        plan(&after),
        vec![],
        "the world does not settle after {changes:#?}"
    );
    changes
}

#[test]
fn import_in_the_system_namespace_gets_a_service_selecting_the_data_plane() {
    let mut world = world();
    world.imports = vec![import(SYSTEM, "reviews", 0, &import_spec(9080, ""))];
    let changes = converging_plan(&world);
    assert_snapshot("system_namespace_import", &changes);
    let Change::ApplyService(service) = &changes[1] else {
        panic!("{changes:#?}")
    };
    let spec = service.spec.as_ref().unwrap();
    assert_eq!(spec.selector.as_ref(), Some(&world.dataplane_labels));
    assert!(
        support::slices_of(&changes).is_empty(),
        "selector Services need no slice"
    );
    assert_eq!(
        changes[0],
        Change::SetTargetPort {
            namespace: SYSTEM.into(),
            name: "reviews".into(),
            port: 20000
        }
    );
}

#[test]
fn import_in_an_unprivileged_namespace_gets_its_service_and_endpoints_there() {
    let mut world = world();
    world.imports = vec![import(
        "shop",
        "reviews",
        0,
        &import_spec(9080, ", targetPort: 21000"),
    )];
    let changes = converging_plan(&world);
    assert_snapshot("unprivileged_namespace_import", &changes);
    // Only objects in the import's own namespace: no Service, Role or binding anywhere else.
    for c in &changes {
        match c {
            Change::ApplyService(s) => {
                assert_eq!(s.metadata.namespace.as_deref(), Some("shop"));
                assert_eq!(s.spec.as_ref().unwrap().selector, None);
            }
            Change::ApplyEndpointSlice(s) => {
                assert_eq!(s.metadata.namespace.as_deref(), Some("shop"));
                let addresses: Vec<_> = s
                    .endpoints
                    .iter()
                    .map(|e| e.addresses[0].as_str())
                    .collect();
                assert_eq!(addresses, ["10.244.1.7", "10.244.2.9"]);
                assert_eq!(s.ports.as_ref().unwrap()[0].port, Some(21000));
            }
            Change::SetStatus { namespace, .. } => assert_eq!(namespace, "shop"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn the_oldest_import_keeps_a_contested_target_port() {
    let mut world = world();
    world.imports = vec![
        import("shop", "newer", 5, &import_spec(80, ", targetPort: 20000")),
        import("shop", "older", 1, &import_spec(81, ", targetPort: 20000")),
        import(
            "shop",
            "reserved",
            2,
            &import_spec(82, ", targetPort: 4443"),
        ),
    ];
    let changes = converging_plan(&world);
    assert_snapshot("contested_target_port", &changes);
    assert_eq!(
        services_applied(&changes),
        [("shop".into(), "older".into())]
    );
    assert_eq!(
        condition_of(&changes, "newer"),
        Some(("False".into(), "TargetPortConflict".into()))
    );
    assert_eq!(
        condition_of(&changes, "reserved"),
        Some(("False".into(), "TargetPortConflict".into()))
    );
    assert_eq!(
        condition_of(&changes, "older"),
        Some(("True".into(), "ServiceReady".into()))
    );
}

#[test]
fn allocation_takes_the_lowest_free_port() {
    let mut world = world();
    world.reserved_ports.push(20001);
    world.imports = vec![
        import("shop", "a", 1, &import_spec(80, ", targetPort: 20000")),
        import("shop", "b", 2, &import_spec(80, "")),
        import("shop", "c", 3, &import_spec(80, "")),
    ];
    let changes = converging_plan(&world);
    let allocated: Vec<_> = changes
        .iter()
        .filter_map(|c| match c {
            Change::SetTargetPort { name, port, .. } => Some((name.as_str(), *port)),
            _ => None,
        })
        .collect();
    assert_eq!(allocated, [("b", 20002), ("c", 20003)]);
}

#[test]
fn a_service_the_controller_did_not_create_is_reported_not_overwritten_unless_labelled_for_adoption()
 {
    let world = taken_and_adoptable_services();
    let changes = converging_plan(&world);
    assert_snapshot("conflicting_and_adopted_services", &changes);
    assert_eq!(
        services_applied(&changes),
        [("shop".into(), "adoptable".into())]
    );
    assert_eq!(
        condition_of(&changes, "taken"),
        Some(("False".into(), "ServiceConflict".into()))
    );
    let deleted = changes
        .iter()
        .any(|c| matches!(c, Change::DeleteService { .. }));
    assert!(!deleted, "an unmanaged Service is never deleted");
}

#[test]
fn a_deleted_managed_service_is_recreated_and_a_deleted_import_frees_its_port() {
    let mut world = world();
    world.imports = vec![import("shop", "first", 1, &import_spec(80, ""))];
    let settled = applied(world.clone(), &plan(&world));
    assert_eq!(
        settled.imports[0].spec.target_port.map(|p| p.get()),
        Some(20000)
    );

    // Someone deletes the Service: the next pass puts it back.
    let mut drifted = settled.clone();
    drifted.services.clear();
    assert_eq!(
        services_applied(&plan(&drifted)),
        [("shop".into(), "first".into())]
    );

    // The import goes; a new one arrives in the same pass and gets the freed port.
    let mut next = settled;
    next.imports = vec![import("shop", "second", 2, &import_spec(80, ""))];
    let changes = converging_plan(&next);
    assert_snapshot("deleted_import_frees_port", &changes);
    assert!(changes.contains(&Change::DeleteService {
        namespace: "shop".into(),
        name: "first".into()
    }));
    assert!(changes.contains(&Change::DeleteEndpointSlice {
        namespace: "shop".into(),
        name: "first".into()
    }));
    assert!(changes.contains(&Change::SetTargetPort {
        namespace: "shop".into(),
        name: "second".into(),
        port: 20000
    }));
}

#[test]
fn import_names_longer_than_a_service_name_are_refused() {
    let mut world = world();
    let (ok, long) = ("a".repeat(63), "b".repeat(64));
    world.imports = vec![
        import("shop", &ok, 1, &import_spec(80, "")),
        import("shop", &long, 2, &import_spec(80, "")),
    ];
    let changes = converging_plan(&world);
    assert_eq!(services_applied(&changes), [("shop".into(), ok.clone())]);
    assert_eq!(
        condition_of(&changes, &long),
        Some(("False".into(), "Invalid".into()))
    );
    let Some(Change::SetStatus { conditions, .. }) = changes
        .iter()
        .find(|c| matches!(c, Change::SetStatus { name, .. } if *name == long))
    else {
        unreachable!()
    };
    assert!(
        conditions[0].message.contains("metadata.name"),
        "{}",
        conditions[0].message
    );
    assert!(
        conditions[0].message.contains("63"),
        "{}",
        conditions[0].message
    );
}

#[test]
fn an_export_without_host_follows_its_service() {
    let mut world = world();
    world.exports = vec![
        export("shop", "reviews", "{port: 9080}", ""),
        export("shop", "db", "{host: db.example.com, port: 5432}", ""),
    ];
    let missing = converging_plan(&world);
    assert_snapshot("export_service_missing", &missing);
    assert_eq!(
        condition_of(&missing, "reviews"),
        Some(("False".into(), "ServiceNotFound".into()))
    );
    assert_eq!(
        condition_of(&missing, "db"),
        Some(("True".into(), "HostSet".into()))
    );

    let mut appeared = applied(world, &missing);
    appeared
        .services
        .push(service("shop", "reviews", "{app: reviews}"));
    let found = converging_plan(&appeared);
    assert_eq!(
        condition_of(&found, "reviews"),
        Some(("True".into(), "ServiceFound".into()))
    );
    assert_eq!(
        found.len(),
        1,
        "only the export whose Service appeared changes: {found:#?}"
    );

    let mut gone = applied(appeared, &found);
    gone.services.clear();
    assert_eq!(
        condition_of(&plan(&gone), "reviews"),
        Some(("False".into(), "ServiceNotFound".into()))
    );
}

#[test]
fn data_plane_pods_coming_and_going_update_the_endpoint_slices() {
    let mut world = world();
    world.imports = vec![import(
        "shop",
        "reviews",
        0,
        &import_spec(9080, ", targetPort: 20000"),
    )];
    let settled = applied(world.clone(), &plan(&world));
    let mut scaled = settled;
    scaled
        .dataplane_addresses
        .push("10.244.3.4".parse().unwrap());
    let changes = converging_plan(&scaled);
    let slices = support::slices_of(&changes);
    assert_eq!(slices.len(), 1, "{changes:#?}");
    assert_eq!(slices[0].endpoints.len(), 3);
}

#[test]
fn a_policy_the_model_refuses_is_reported_as_not_enforced() {
    let mut world = world();
    // Valid by the schema, refused by the model: a deny with nothing to match would do nothing.
    world.access_policies = vec![
        access_policy(
            "shop",
            "deny-nothing",
            "{action: deny, from: [], to: [{workloadSelector: {}}]}",
        ),
        access_policy(
            "shop",
            "allow-all",
            "{action: allow, from: [{workloadSelector: {}}], to: [{workloadSelector: {}}]}",
        ),
    ];
    world.privileged_policies = vec![privileged_policy(
        "deny-bad-operator",
        "{action: deny, from: [{workloadSelector: {matchExpressions: [{key: env, operator: In, values: []}]}}], to: [{workloadSelector: {}}]}",
    )];
    let changes = converging_plan(&world);
    assert_snapshot("policy_statuses", &changes);
    assert_eq!(
        condition_of(&changes, "deny-nothing"),
        Some(("False".into(), "Invalid".into()))
    );
    assert_eq!(
        condition_of(&changes, "allow-all"),
        Some(("True".into(), "Enforced".into()))
    );
    assert_eq!(
        condition_of(&changes, "deny-bad-operator"),
        Some(("False".into(), "Invalid".into()))
    );
    let (kind, namespace, condition) = status_set_for(&changes, "deny-nothing").unwrap();
    assert_eq!((kind, namespace.as_str()), (Kind::AccessPolicy, "shop"));
    assert_eq!(condition.type_, "PolicyValid");
    assert!(
        condition.message.contains("not enforced") && condition.message.contains("spec.from"),
        "{condition:?}"
    );
    let (kind, namespace, condition) = status_set_for(&changes, "deny-bad-operator").unwrap();
    assert_eq!(
        (kind, namespace.as_str()),
        (Kind::PrivilegedAccessPolicy, "")
    );
    assert!(
        condition.message.contains("matchExpressions"),
        "{condition:?}"
    );
}

#[test]
fn a_peers_mirror_rule_imports_what_it_offers_and_withdraws_what_it_stops_offering() {
    use clusterlink_api::catalog::{Catalog, Offer};
    let offer = |name: &str, labels: &[(&str, &str)]| Offer {
        namespace: "default".into(),
        name: name.into(),
        port: clusterlink_api::Port::new(80).unwrap(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let mut world = world();
    world.peers = vec![
        peer(
            "west1",
            "{gateways: [{host: 10.0.0.1, port: 443}], mirror: {exports: {matchLabels: {tier: web}}}}",
        ),
        peer(
            "west2",
            "{gateways: [{host: 10.0.0.2, port: 443}], mirror: {}}",
        ),
    ];
    world.catalogs = std::sync::Arc::new(
        [
            (
                "west1",
                vec![offer("db", &[]), offer("web", &[("tier", "web")])],
            ),
            ("west2", vec![offer("web", &[("tier", "web")])]),
        ]
        .into_iter()
        .map(|(peer, offers)| (peer.to_string(), Catalog { offers }))
        .collect(),
    );
    let changes = plan(&world);
    let applied: Vec<_> = changes
        .iter()
        .filter_map(|c| match c {
            Change::ApplyImport(i) => Some(i),
            _ => None,
        })
        .collect();
    assert_eq!(applied.len(), 1, "{changes:#?}");
    let peers: Vec<&str> = applied[0]
        .spec
        .sources
        .iter()
        .map(|s| s.peer.as_str())
        .collect();
    assert_eq!(
        peers,
        ["west1", "west2"],
        "one Import, a source per peer offering it"
    );
    assert_eq!(applied[0].spec.target_port, None, "left to the allocation");
    // The Import then gets its target port and Service like any other, and the world settles.
    let settled = settle(world);
    assert!(
        settled
            .services
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some("web"))
    );
    // Nobody offers it any more: the mirrored Import is deleted, and with it its Service.
    let mut gone = settled.clone();
    gone.catalogs = std::sync::Arc::new(
        ["west1", "west2"]
            .into_iter()
            .map(|p| (p.to_string(), Catalog::default()))
            .collect(),
    );
    let withdrawn = plan(&gone);
    assert!(
        withdrawn.contains(&Change::DeleteImport {
            namespace: "default".into(),
            name: "web".into()
        }),
        "{withdrawn:#?}"
    );
    let after = settle(gone);
    assert!(after.imports.is_empty() && after.services.is_empty());
}

/// Passes of the controller until one plans nothing (a mirrored Import takes a few: the
/// Import, its target port, its Service).
fn settle(mut world: clusterlink_k8s::World) -> clusterlink_k8s::World {
    for _ in 0..4 {
        let changes = plan(&world);
        if changes.is_empty() {
            return world;
        }
        world = support::applied(world, &changes);
    }
    panic!("the world does not settle: {:#?}", plan(&world));
}

#[test]
fn a_service_labelled_for_export_is_exported_per_port_and_never_an_imports_service() {
    let mut world = world();
    let mut labelled = service(
        "shop",
        "web",
        "{clusterlink.net/export: \"true\", tier: web}",
    );
    labelled.spec.as_mut().unwrap().ports = Some(vec![
        support::parse("{name: http, port: 80, protocol: TCP}"),
        support::parse("{port: 8443, protocol: TCP}"),
        support::parse("{name: dns, port: 53, protocol: UDP}"),
    ]);
    world.services = vec![
        labelled,
        service("shop", "single", "{clusterlink.net/export: \"true\"}"),
        service("shop", "unlabelled", "{}"),
        service("shop", "off", "{clusterlink.net/export: \"false\"}"),
        // An import's Service that someone labelled: offering it back would loop.
        service(
            "shop",
            "imported",
            "{clusterlink.net/export: \"true\", app.kubernetes.io/managed-by: clusterlink}",
        ),
    ];
    // An Export of the same name decides for its Service.
    world.exports = vec![export(
        "shop",
        "single",
        "{host: elsewhere.example, port: 9}",
        "",
    )];
    let exports: Vec<(String, String, u16)> = clusterlink_k8s::model::objects(&world)
        .into_iter()
        .filter_map(|o| match o {
            clusterlink_api::Object::Export(e) => Some((
                e.metadata.name.clone(),
                e.spec.host.clone(),
                e.spec.port.unwrap().get(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        exports,
        [
            ("single".to_string(), "elsewhere.example".to_string(), 9),
            ("web-http".to_string(), "web.shop.svc".to_string(), 80),
            ("web-8443".to_string(), "web.shop.svc".to_string(), 8443),
        ]
    );
}

#[test]
fn with_the_mcs_api_a_service_export_exports_and_a_mirrored_import_publishes_a_service_import() {
    use clusterlink_k8s::mcs::{ServiceExport, ServiceImport};
    let mut west = world();
    west.mcs_api = true;
    west.services = vec![service("shop", "web", "{}")];
    let mut export = ServiceExport::default();
    export.metadata.name = Some("web".into());
    export.metadata.namespace = Some("shop".into());
    west.service_exports = vec![export];
    let exported = clusterlink_k8s::model::objects(&west)
        .into_iter()
        .any(|o| o.key().to_string() == "Export shop/web");
    assert!(exported, "a ServiceExport exports the Service of its name");

    // A mirrored Import in east: once its Service has an address, a ServiceImport points at it.
    let mut east = world();
    east.mcs_api = true;
    let mut mirrored = import("default", "web", 0, &import_spec(80, ""));
    mirrored.metadata.labels =
        Some([("clusterlink.net/mirrored".to_string(), "true".to_string())].into());
    east.imports = vec![mirrored];
    let mut settled = east;
    for _ in 0..4 {
        let changes = plan(&settled);
        // The API server gives a new Service its address.
        settled = support::applied(settled, &changes);
        for s in &mut settled.services {
            s.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.30".into());
        }
    }
    assert_eq!(plan(&settled), vec![], "settles");
    let published: &ServiceImport = &settled.service_imports[0];
    assert_eq!(published.spec.ips, ["10.96.0.30"]);
    assert_eq!(published.spec.ports[0].port, 80);
    assert_eq!(published.spec.type_, "ClusterSetIP");
    // The Import goes: so does its ServiceImport.
    settled.imports.clear();
    let changes = plan(&settled);
    assert!(changes.contains(&Change::DeleteServiceImport {
        namespace: "default".into(),
        name: "web".into()
    }));
    // Off: nothing of the API is read or written.
    settled.mcs_api = false;
    assert!(
        !plan(&settled)
            .iter()
            .any(|c| matches!(c, Change::DeleteServiceImport { .. }))
    );
}
