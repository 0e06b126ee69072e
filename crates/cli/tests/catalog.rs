//! Peers offer their exports: each gateway offers a peer only what its policies let that peer
//! reach, and a Peer's mirror rule turns offers into Imports that follow them, one Import for an
//! export several peers offer. Real gateway processes on loopback.

mod support;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use clusterlink_api::catalog::{OfferState, OffersView};
use support::manifests::{allow_all, peer, policy};
use support::{Backend, Exchange, Fabric, GatewayProcess, clients_table, eventually, exchange};

/// Convergence: a probe every 0.5 s carries the catalog's digest; generous for a loaded machine.
const CONVERGE: Duration = Duration::from_secs(20);

/// A backend at `ip:port`.
fn backend_at(ip: Ipv4Addr, port: u16, name: &str) {
    Backend::start_at(ip, port, name);
}

/// A port free on 127.0.0.1, .2 and .3, below Linux's ephemeral range (32768 and up): no other
/// test's connection or port-0 listener is ever given it, so the mirrored Import can listen on
/// 127.0.0.1 at the port its backends use at .2 and .3.
fn shared_port() -> u16 {
    let start = 30_000 + (support::rand_u64() % 2_000) as u16;
    (start..32_700)
        .find(|&port| {
            [1, 2, 3].iter().all(|&last| {
                std::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, last), port)).is_ok()
            })
        })
        .expect("a free port below the ephemeral range")
}

fn export(name: &str, host: Ipv4Addr, port: u16, labels: &str) -> String {
    format!(
        "---\napiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {{name: {name}, labels: {labels}}}\nspec: {{host: '{host}', port: {port}}}\n"
    )
}

fn mirroring_peer(name: &str, gw: &GatewayProcess, selector: &str) -> String {
    peer(name, gw).replace("]}\n", &format!("], mirror: {{exports: {selector}}}}}\n"))
}

/// Denies client1 every client's way to `export` on the gateway it is applied to.
fn deny_client1(name: &str, export: &str) -> String {
    policy(
        "AccessPolicy",
        name,
        "deny",
        "{matchLabels: {peer.clusterlink.net/name: client1}}",
        &format!("{{matchLabels: {{export.clusterlink.net/name: {export}}}}}"),
    )
}

fn offers(gw: &GatewayProcess) -> OffersView {
    serde_json::from_str(&gw.gwctl_ok(&["get", "offers", "-o", "json"])).unwrap()
}

/// The offered exports of `peer`, as `name:state` with state `imported`, `not-selected` or
/// `not-imported`.
fn offered(gw: &GatewayProcess, peer: &str) -> Option<Vec<String>> {
    offers(gw).get(peer).map(|offers| {
        offers
            .iter()
            .map(|s| {
                let state = match &s.state {
                    OfferState::Imported(_) => "imported",
                    OfferState::NotSelected => "not-selected",
                    OfferState::NotImported(_) => "not-imported",
                };
                format!("{}:{state}", s.offer.name)
            })
            .collect()
    })
}

fn has_offers(gw: &GatewayProcess, peer: &str, expected: &[&str]) -> bool {
    offered(gw, peer).is_some_and(|o| o == expected)
}

/// The peers of the mirrored Import `default/svc`, or None if it does not exist.
fn svc_sources(gw: &GatewayProcess) -> Option<Vec<String>> {
    let out = gw.gwctl(&["get", "import", "svc", "-o", "json"]);
    if !out.status.success() {
        return None;
    }
    let import: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        import["metadata"]["labels"]["clusterlink.net/mirrored"], "true",
        "{import}"
    );
    Some(
        import["spec"]["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["peer"].as_str().unwrap().to_string())
            .collect(),
    )
}

fn served_by(port: u16) -> Option<String> {
    match exchange(port, b"hello") {
        Exchange::Served { backend } => Some(backend),
        _ => None,
    }
}

#[test]
fn peers_are_offered_only_what_they_may_reach_and_mirrored_imports_follow_the_offers() {
    let fabric = Fabric::new(&["server1", "server2", "client1"]);
    // client1's clients are known: a policy naming a peer selects by source attribute, and then
    // a client nobody can tell apart is refused.
    let table = clients_table(&["{cidr: 127.0.0.0/8, namespace: default}"]);
    let client = fabric.start_with(
        "client1",
        &[
            "--management-address",
            "127.0.0.1:0",
            "--peer-address",
            "127.0.0.1:0",
            "--client-attributes",
            table.to_str().unwrap(),
        ],
    );
    let server1 = fabric.start("server1");
    let server2 = fabric.start("server2");
    // The two copies of `svc` listen on one port at two addresses, so the mirrored Import can
    // listen on that port too, on 127.0.0.1, as it would at another site.
    let port = shared_port();
    backend_at(Ipv4Addr::new(127, 0, 0, 2), port, "server1");
    backend_at(Ipv4Addr::new(127, 0, 0, 3), port, "server2");
    let other = Backend::start("db").port;
    for gw in [&client, &server1, &server2] {
        gw.apply(&allow_all("allow-all"));
    }
    let web = "{tier: web}";
    server1.apply(&export("svc", Ipv4Addr::new(127, 0, 0, 2), port, web));
    server1.apply(&export("db", Ipv4Addr::LOCALHOST, other, "{}"));
    server1.apply(&export("secret", Ipv4Addr::LOCALHOST, other, web));
    server1.apply(&deny_client1("no-secret", "secret"));
    server2.apply(&export("svc", Ipv4Addr::new(127, 0, 0, 3), port, web));
    client.apply(&peer("server1", &server1));
    client.apply(&peer("server2", &server2));

    // Offered: what each exporter's policies let client1 reach; `secret` is denied it for every
    // client, so it is not even listed. Nothing is imported without a rule.
    assert!(
        eventually(CONVERGE, || has_offers(
            &client,
            "server1",
            &["db:not-selected", "svc:not-selected"]
        ) && has_offers(
            &client,
            "server2",
            &["svc:not-selected"]
        )),
        "{:?}",
        offers(&client)
    );
    assert!(svc_sources(&client).is_none());
    let table = client.gwctl_ok(&["get", "offers", "--peer", "server1"]);
    assert!(
        table.contains("default/db") && !table.contains("secret"),
        "{table}"
    );

    // Mirroring what carries tier=web from both: one Import, two sources, traffic to both.
    client.apply(&mirroring_peer(
        "server1",
        &server1,
        "{matchLabels: {tier: web}}",
    ));
    client.apply(&mirroring_peer(
        "server2",
        &server2,
        "{matchLabels: {tier: web}}",
    ));
    assert!(eventually(CONVERGE, || svc_sources(&client)
        == Some(vec!["server1".into(), "server2".into()])));
    assert!(has_offers(
        &client,
        "server1",
        &["db:not-selected", "svc:imported"]
    ));
    client.wait_listening("svc");
    let mut seen = BTreeSet::new();
    assert!(
        eventually(CONVERGE, || {
            seen.extend(served_by(port));
            seen.len() == 2
        }),
        "served by {seen:?}: {}\n{}",
        client.gwctl_ok(&["get", "events"]),
        server1.gwctl_ok(&["get", "events"])
    );
    let described = client.gwctl_ok(&["describe", "peer", "server1"]);
    assert!(
        described.contains("default/svc port") && described.contains("imported as default/svc"),
        "{described}"
    );

    // server1 now denies client1 `svc`: it stops offering it, and the Import loses that source.
    server1.apply(&deny_client1("no-svc", "svc"));
    assert!(eventually(CONVERGE, || svc_sources(&client)
        == Some(vec!["server2".into()])));
    assert!(has_offers(&client, "server1", &["db:not-selected"]));
    // server2 takes the label off: no rule selects `svc` any more, and the Import goes.
    server2.apply(&export("svc", Ipv4Addr::new(127, 0, 0, 3), port, "{}"));
    assert!(eventually(CONVERGE, || svc_sources(&client).is_none()));
    assert!(has_offers(&client, "server2", &["svc:not-selected"]));
    // Both offer it again: the Import comes back with both sources.
    server2.apply(&export("svc", Ipv4Addr::new(127, 0, 0, 3), port, web));
    server1.gwctl_ok(&["delete", "accesspolicy", "no-svc"]);
    assert!(eventually(CONVERGE, || svc_sources(&client)
        == Some(vec!["server1".into(), "server2".into()])));

    // An Import written by hand whose export is not offered: `describe` says so, and `check`
    // names the cause once (its dry run), not twice.
    client.apply(&support::manifests::import(
        "nothere",
        support::free_port(),
        &["server2"],
        "round-robin",
    ));
    let check = client.gwctl(&["check"]);
    let check = support::stdout(&check);
    assert!(
        check.contains("peer server2 has no export default/nothere")
            && !check.contains("import default/nothere source server2 offer"),
        "{check}"
    );
    let described = client.gwctl_ok(&["describe", "import", "nothere"]);
    assert!(
        described.contains("Not offered: server2 does not offer export default/nothere"),
        "{described}"
    );

    // The federated import fails over: with server1 gone, every connection reaches server2.
    client.wait_listening("svc");
    drop(server1);
    assert!(eventually(CONVERGE, || (0..5)
        .all(|_| served_by(port).as_deref() == Some("server2"))));
    // A peer that stopped answering keeps its last offers: its source stays for when it returns.
    assert_eq!(
        svc_sources(&client),
        Some(vec!["server1".into(), "server2".into()])
    );
}
