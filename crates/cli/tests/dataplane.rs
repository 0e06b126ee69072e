//! Tunnels between real gateway processes: policies on both sides, load balancing, failover.

mod support;

use std::time::Duration;

use support::manifests::{allow_all, export, import, peer, policy};
use support::{
    Backend, Exchange, Fabric, GatewayProcess, clients_table, eventually, exchange, exchange_from,
    free_port, metric, metric_with, open_counted_tunnel, reachable, stdout, was_closed,
};

const CONVERGE: Duration = Duration::from_secs(10);

/// Exporting sites `servers` (each with a backend named after it, exporting `svc`) and one
/// importing site `client1`, with the peers known to the client.
struct Sites {
    _fabric: Fabric,
    servers: Vec<GatewayProcess>,
    client: GatewayProcess,
}

impl Sites {
    fn new(servers: &[&str]) -> Sites {
        Sites::with_client_args(servers, &[])
    }

    /// Like [`Sites::new`], with further arguments for the importing gateway.
    fn with_client_args(servers: &[&str], client_args: &[&str]) -> Sites {
        let mut names = servers.to_vec();
        names.push("client1");
        let fabric = Fabric::new(&names);
        let mut args = vec![
            "--management-address",
            "127.0.0.1:0",
            "--peer-address",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(client_args);
        let client = fabric.start_with("client1", &args);
        let servers: Vec<GatewayProcess> = servers
            .iter()
            .map(|name| {
                let gw = fabric.start(name);
                gw.apply(&export("svc", Backend::start(name).port));
                client.apply(&peer(name, &gw));
                gw
            })
            .collect();
        Sites {
            _fabric: fabric,
            servers,
            client,
        }
    }

    /// Like [`Sites::new`], with every loopback client known (namespace `default`): where a
    /// policy selects by source attributes, an unknown client would be refused before it.
    fn with_known_clients(servers: &[&str]) -> Sites {
        let table = clients_table(&["{cidr: 127.0.0.0/8, namespace: default}"]);
        Sites::with_client_args(servers, &["--client-attributes", table.to_str().unwrap()])
    }

    /// Imports `svc` from every server on a fresh port, and waits until it listens.
    fn import(&self, scheme: &str) -> u16 {
        let port = free_port();
        let names: Vec<String> = (1..=self.servers.len())
            .map(|i| format!("server{i}"))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.client.apply(&import("svc", port, &names, scheme));
        self.client.wait_listening("svc");
        port
    }

    fn allow_everywhere(&self) {
        self.client.apply(&allow_all("allow-all"));
        for s in &self.servers {
            s.apply(&allow_all("allow-all"));
        }
    }
}

fn served_by(name: &str) -> Exchange {
    Exchange::Served {
        backend: name.to_string(),
    }
}

#[test]
fn an_allowed_connection_carries_bytes_both_ways_with_half_close() {
    let sites = Sites::new(&["server1"]);
    let port = sites.import("round-robin");
    sites.allow_everywhere();
    // 4 MiB each way; the backend answers only after the client's half-close arrived.
    let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    assert!(eventually(CONVERGE, || exchange(port, b"x") == served_by("server1")));
    assert_eq!(exchange(port, &payload), served_by("server1"));
    // Bytes are counted per import on the importing side and per export on the exporting side.
    let sent = metric(
        &sites.client,
        "clusterlink_import_bytes_total{name=\"default/svc\",direction=\"sent\"}",
    );
    let received = metric(
        &sites.client,
        "clusterlink_import_bytes_total{name=\"default/svc\",direction=\"received\"}",
    );
    assert!(
        sent >= payload.len() as f64 && received >= payload.len() as f64,
        "sent {sent}, received {received}"
    );
    let to_backend = metric(
        &sites.servers[0],
        "clusterlink_export_bytes_total{name=\"default/svc\",direction=\"sent\"}",
    );
    assert!(to_backend >= payload.len() as f64, "{to_backend}");
    assert!(
        metric(
            &sites.client,
            "clusterlink_authorization_duration_seconds_count{side=\"egress\"}"
        ) >= 2.0
    );
    assert_eq!(
        metric(
            &sites.client,
            "clusterlink_peer_reachable{peer=\"server1\"}"
        ),
        1.0
    );
    assert_eq!(
        exchange(port, b""),
        served_by("server1"),
        "an empty request still gets its answer"
    );
    // Each opened tunnel times every stage of its setup, once, on both sides.
    let stage = |gw, side: &str, stage: &str, sample: &str| {
        let labels = format!("{{side=\"{side}\",stage=\"{stage}\"}}");
        metric(
            gw,
            &format!("clusterlink_tunnel_setup_stage_seconds_{sample}{labels}"),
        )
    };
    let egress = ["decision", "peer_connection", "peer_answer"];
    let ingress = ["decision", "backend_connect", "answer"];
    let opened = stage(&sites.client, "egress", "decision", "count");
    assert!(opened >= 3.0, "{opened} tunnels timed");
    for name in egress {
        assert_eq!(
            stage(&sites.client, "egress", name, "count"),
            opened,
            "{name}"
        );
    }
    for name in ingress {
        assert_eq!(
            stage(&sites.servers[0], "ingress", name, "count"),
            opened,
            "{name}"
        );
    }
    // Each was timed (not merely counted). How the times compare across the two processes is
    // not asserted: a loaded machine may pause a gateway between its write and its clock read.
    for (gw, side, names) in [
        (&sites.client, "egress", egress),
        (&sites.servers[0], "ingress", ingress),
    ] {
        for name in names {
            assert!(stage(gw, side, name, "sum") > 0.0, "{side} {name}");
        }
    }
}

#[test]
fn default_deny_holds_on_each_side_independently() {
    let sites = Sites::new(&["server1"]);
    let port = sites.import("round-robin");
    // No policy anywhere.
    assert_eq!(exchange(port, b"hi"), Exchange::Reset);
    assert!(
        sites.client.log().contains("egress denied by default"),
        "{}",
        sites.client.log()
    );

    // Egress allowed, ingress not: the exporting side refuses, and says why.
    sites.client.apply(&allow_all("allow-all"));
    let refused = "connection refused: ingress at server1: denied by default";
    assert!(
        eventually(CONVERGE, || exchange(port, b"hi") == Exchange::Reset
            && sites.client.log().contains(refused)),
        "{}",
        sites.client.log()
    );

    // Each refusal is counted by the gateway that saw it, naming who refused.
    let refused = |gw, side, by| {
        metric_with(
            gw,
            "clusterlink_connections_refused_total",
            &[
                ("side", side),
                ("refused_by", by),
                ("reason", "PolicyDenied"),
            ],
        )
    };
    assert!(refused(&sites.client, "egress", "local") >= 1.0);
    assert!(refused(&sites.client, "egress", "peer") >= 1.0);
    assert!(refused(&sites.servers[0], "ingress", "local") >= 1.0);
    // A refused tunnel never opened: none of its setup stages are timed, on either side.
    let timed = |gw, side| {
        let labels = format!("{{side=\"{side}\",stage=\"decision\"}}");
        metric(
            gw,
            &format!("clusterlink_tunnel_setup_stage_seconds_count{labels}"),
        )
    };
    assert_eq!(timed(&sites.client, "egress"), 0.0);
    assert_eq!(timed(&sites.servers[0], "ingress"), 0.0);

    // Ingress allowed, egress not: a new egress denial, not the earlier ingress one.
    sites.client.gwctl_ok(&["delete", "policy", "allow-all"]);
    sites.servers[0].apply(&allow_all("allow-all"));
    let egress_denials = || {
        sites
            .client
            .log()
            .matches("egress denied by default")
            .count()
    };
    let before = egress_denials();
    assert!(eventually(CONVERGE, || exchange(port, b"hi")
        == Exchange::Reset
        && egress_denials() > before));
    // Both: served.
    sites.client.apply(&allow_all("allow-all"));
    assert!(eventually(CONVERGE, || exchange(port, b"hi") == served_by("server1")));
}

#[test]
fn ingress_tiers_decide_in_order() {
    let sites = Sites::new(&["server1"]);
    let port = sites.import("round-robin");
    sites.client.apply(&allow_all("allow-all"));
    let server = &sites.servers[0];
    server.apply(&format!(
        "{}{}{}{}",
        policy("PrivilegedAccessPolicy", "p-deny", "deny", "{}", "{}"),
        policy("PrivilegedAccessPolicy", "p-allow", "allow", "{}", "{}"),
        policy("AccessPolicy", "ns-deny", "deny", "{}", "{}"),
        policy("AccessPolicy", "ns-allow", "allow", "{}", "{}"),
    ));
    let denied_by = |what: &str| {
        let marker = format!("ingress at server1: denied by {what}");
        eventually(CONVERGE, || {
            exchange(port, b"hi") == Exchange::Reset && sites.client.log().contains(&marker)
        })
    };
    let served = || eventually(CONVERGE, || exchange(port, b"hi") == served_by("server1"));
    assert!(
        denied_by("PrivilegedAccessPolicy p-deny"),
        "{}",
        sites.client.log()
    );
    server.gwctl_ok(&["delete", "pap", "p-deny"]);
    assert!(served(), "privileged allow must win over namespace deny");
    server.gwctl_ok(&["delete", "pap", "p-allow"]);
    assert!(
        denied_by("AccessPolicy default/ns-deny"),
        "{}",
        sites.client.log()
    );
    server.gwctl_ok(&["delete", "policy", "ns-deny"]);
    assert!(served());
    server.gwctl_ok(&["delete", "policy", "ns-allow"]);
    assert!(denied_by("default"), "{}", sites.client.log());
}

/// A client-attributes table of `entries` (`{cidr: ..., namespace: ...}` flow mappings).

#[test]
fn policies_on_peer_names_and_labels_and_export_names() {
    let sites = Sites::with_known_clients(&["server1"]);
    let port = sites.import("round-robin");
    let server = &sites.servers[0];
    // Egress: only towards peers labelled env=prod.
    sites.client.apply(&policy(
        "AccessPolicy",
        "to-prod",
        "allow",
        "{}",
        "{matchLabels: {peer.clusterlink.net/labels.env: prod}}",
    ));
    // Ingress: only from client1, and only for the export named svc.
    server.apply(&policy(
        "AccessPolicy",
        "from-client1",
        "allow",
        "{matchLabels: {peer.clusterlink.net/name: client1}}",
        "{matchExpressions: [{key: export.clusterlink.net/name, operator: In, values: [svc]}]}",
    ));
    assert!(eventually(CONVERGE, || exchange(port, b"hi")
        == Exchange::Reset
        && sites.client.log().contains("egress denied by default")));
    // Label the peer server1 as prod on the client side: now both sides allow.
    let labelled = peer("server1", server).replace(
        "metadata: {name: server1}",
        "metadata: {name: server1, labels: {env: prod}}",
    );
    sites.client.apply(&labelled);
    assert!(
        eventually(CONVERGE, || exchange(port, b"hi") == served_by("server1")),
        "{}",
        sites.client.log()
    );
    // An ingress rule for another peer name does not admit client1.
    server.gwctl_ok(&["delete", "policy", "from-client1"]);
    server.apply(&policy(
        "AccessPolicy",
        "from-other",
        "allow",
        "{matchLabels: {peer.clusterlink.net/name: client2}}",
        "{}",
    ));
    assert!(eventually(CONVERGE, || exchange(port, b"hi") == Exchange::Reset));

    // Export labels: allow only exports labelled tier=gold, then label the export.
    server.apply(&policy(
        "AccessPolicy",
        "to-gold",
        "allow",
        "{}",
        "{matchLabels: {export.clusterlink.net/labels.tier: gold}}",
    ));
    assert_eq!(exchange(port, b"hi"), Exchange::Reset);
    let backend = Backend::start("server1").port;
    let gold = export("svc", backend).replace(
        "metadata: {name: svc}",
        "metadata: {name: svc, labels: {tier: gold}}",
    );
    assert!(gold.contains("tier: gold"));
    server.apply(&gold);
    assert!(
        eventually(CONVERGE, || exchange(port, b"hi") == served_by("server1")),
        "{}",
        sites.client.log()
    );
}

#[test]
fn static_sticks_round_robin_rotates_random_hits_all_and_failover_moves_traffic() {
    let sites = Sites::new(&["server1", "server2", "server3"]);
    sites.allow_everywhere();
    let port = sites.import("static");
    assert!(eventually(CONVERGE, || exchange(port, b"hi") == served_by("server1")));
    for _ in 0..5 {
        assert_eq!(exchange(port, b"hi"), served_by("server1"));
    }
    // The primary's export goes away: the next source serves, within the same client connection.
    sites.servers[0].gwctl_ok(&["delete", "export", "svc"]);
    assert!(eventually(CONVERGE, || exchange(port, b"hi") == served_by("server2")));
    assert!(
        sites.client.log().contains("NoSuchExport"),
        "{}",
        sites.client.log()
    );
    sites.servers[0].apply(&export("svc", Backend::start("server1").port));

    let file = std::env::temp_dir().join(format!("lb-{}.yaml", support::rand_u64()));
    for (scheme, rounds) in [("round-robin", 6), ("random", 60)] {
        std::fs::write(
            &file,
            import("svc", port, &["server1", "server2", "server3"], scheme),
        )
        .unwrap();
        sites
            .client
            .gwctl_ok(&["apply", "-f", file.to_str().unwrap()]);
        assert!(eventually(CONVERGE, || sites
            .client
            .gwctl_ok(&["get", "import", "svc", "-o", "json"])
            .contains(scheme)));
        // Let the snapshot with all three exports and the new scheme settle.
        assert!(
            eventually(CONVERGE, || {
                let seen: std::collections::BTreeSet<String> = (0..rounds)
                    .filter_map(|_| match exchange(port, b"hi") {
                        Exchange::Served { backend } => Some(backend),
                        _ => None,
                    })
                    .collect();
                seen.len() == 3
            }),
            "{scheme} did not reach all three sources"
        );
    }
    // Round-robin visits the sources in turn.
    std::fs::write(
        &file,
        import(
            "svc",
            port,
            &["server1", "server2", "server3"],
            "round-robin",
        ),
    )
    .unwrap();
    sites
        .client
        .gwctl_ok(&["apply", "-f", file.to_str().unwrap()]);
    let order: Vec<Exchange> = (0..6).map(|_| exchange(port, b"hi")).collect();
    assert_eq!(
        order[0..3]
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3,
        "{order:?}"
    );
    assert_eq!(order[0..3], order[3..6], "{order:?}");
}

#[test]
fn an_import_of_a_missing_export_resets_and_a_deleted_import_frees_its_port() {
    let sites = Sites::new(&["server1"]);
    sites.allow_everywhere();
    let port = free_port();
    sites
        .client
        .apply(&import("nothing", port, &["server1"], "round-robin"));
    assert!(eventually(CONVERGE, || exchange(port, b"hi")
        == Exchange::Reset
        && sites.client.log().contains("NoSuchExport")));

    // An open tunnel is closed when its import is deleted, and the port is free again.
    let svc_port = sites.import("round-robin");
    assert!(eventually(CONVERGE, || exchange(svc_port, b"hi")
        == served_by("server1")));
    let mut open = std::net::TcpStream::connect(("127.0.0.1", svc_port)).unwrap();
    use std::io::{Read, Write};
    open.write_all(b"partial").unwrap();
    sites.client.gwctl_ok(&["delete", "import", "svc"]);
    sites.client.gwctl_ok(&["delete", "import", "nothing"]);
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    // A close or a reset; a read timeout would mean the tunnel stayed open.
    let closed = match open.read(&mut buf) {
        Ok(0) => true,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        ),
        Ok(_) => false,
    };
    assert!(closed, "a tunnel of a deleted import stayed open");
    assert!(eventually(CONVERGE, || std::net::TcpListener::bind((
        "127.0.0.1",
        svc_port
    ))
    .is_ok()));
    assert!(eventually(CONVERGE, || std::net::TcpListener::bind((
        "127.0.0.1",
        port
    ))
    .is_ok()));
}

#[test]
fn an_import_moved_to_another_port_listens_there_and_frees_the_old_one() {
    let sites = Sites::new(&["server1"]);
    sites.allow_everywhere();
    let old_port = sites.import("round-robin");
    assert!(eventually(CONVERGE, || exchange(old_port, b"hi")
        == served_by("server1")));
    let new_port = free_port();
    sites
        .client
        .apply(&import("svc", new_port, &["server1"], "round-robin"));
    assert!(eventually(CONVERGE, || exchange(new_port, b"hi")
        == served_by("server1")));
    assert!(eventually(CONVERGE, || std::net::TcpListener::bind((
        "127.0.0.1",
        old_port
    ))
    .is_ok()));
}

#[test]
fn two_imports_on_one_port_the_second_is_refused_in_its_status() {
    let sites = Sites::new(&["server1"]);
    let port = sites.import("round-robin");
    sites
        .client
        .apply(&import("zzz", port, &["server1"], "static"));
    let status = || {
        sites
            .client
            .gwctl_ok(&["get", "import", "zzz", "-o", "json"])
    };
    assert!(
        eventually(CONVERGE, || status().contains("PortUnavailable")),
        "{}",
        status()
    );
    // Freed by deleting the first: the second takes the port.
    sites.client.gwctl_ok(&["delete", "import", "svc"]);
    assert!(
        eventually(CONVERGE, || status().contains("\"Listening\"")),
        "{}",
        status()
    );
}

#[test]
fn a_gateway_of_another_fabric_is_refused_at_the_handshake() {
    let sites = Sites::new(&["server1"]);
    sites.allow_everywhere();
    let port = sites.import("round-robin");
    assert!(eventually(CONVERGE, || exchange(port, b"hi") == served_by("server1")));
    // A stranger with the right name, from another fabric, at the address the client dials.
    let other = Fabric::new(&["server2"]);
    let stranger = other.start("server2");
    stranger.apply(&export("svc", Backend::start("stranger").port));
    stranger.apply(&allow_all("allow-all"));
    sites.client.apply(&peer("server2", &stranger));
    sites
        .client
        .apply(&import("svc", port, &["server2"], "static"));
    assert!(
        eventually(CONVERGE, || exchange(port, b"hi") == Exchange::Reset
            && sites.client.log().contains("TLS")),
        "{}",
        sites.client.log()
    );
}

#[test]
fn many_sequential_and_concurrent_connections_all_succeed() {
    let sites = Sites::new(&["server1"]);
    sites.allow_everywhere();
    let port = sites.import("round-robin");
    assert!(eventually(CONVERGE, || exchange(port, b"warm") == served_by("server1")));
    for i in 0..100 {
        assert_eq!(
            exchange(port, format!("seq {i}").as_bytes()),
            served_by("server1"),
            "connection {i}"
        );
    }
    let handles: Vec<_> = (0..100)
        .map(|i| std::thread::spawn(move || exchange(port, format!("par {i}").as_bytes())))
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(
            h.join().unwrap(),
            served_by("server1"),
            "concurrent connection {i}"
        );
    }
}

#[test]
fn a_killed_peer_is_detected_skipped_and_used_again_when_back() {
    let mut sites = Sites::new(&["server1", "server2"]);
    sites.allow_everywhere();
    let port = sites.import("static");
    assert!(eventually(CONVERGE, || reachable(&sites.client, "server1") == "True"));
    assert!(eventually(CONVERGE, || exchange(port, b"hi") == served_by("server1")));

    let peer_address = sites.servers[0].peer_address.clone();
    sites.servers[0].kill9();
    let killed = std::time::Instant::now();
    // Failover serves at once, before health has noticed anything.
    assert_eq!(exchange(port, b"hi"), served_by("server2"));
    assert!(eventually(CONVERGE, || reachable(&sites.client, "server1") == "False"));
    let detection = killed.elapsed();
    assert_eq!(exchange(port, b"hi"), served_by("server2"));
    let peers = sites.client.gwctl_ok(&["get", "peers"]);
    assert!(
        peers
            .lines()
            .any(|l| l.starts_with("server1") && l.contains("False")),
        "{peers}"
    );

    // Back on the same address, with its configuration restored from its store.
    let fabric_root = sites._fabric.root().to_path_buf();
    sites.servers[0] = GatewayProcess::spawn(
        &fabric_root,
        &[
            "--peer",
            "server1",
            "--management-address",
            "127.0.0.1:0",
            "--peer-address",
            &peer_address,
        ],
    );
    let back = std::time::Instant::now();
    assert!(eventually(CONVERGE, || reachable(&sites.client, "server1") == "True"));
    let recovery = back.elapsed();
    assert!(eventually(CONVERGE, || exchange(port, b"hi") == served_by("server1")));
    eprintln!("peer health: detected a kill -9 in {detection:?}, recovery in {recovery:?}");
}

#[test]
fn a_peer_is_reachable_if_any_of_its_gateways_answers() {
    let sites = Sites::new(&["server1"]);
    sites.allow_everywhere();
    let port = sites.import("round-robin");
    let (host, gw_port) = sites.servers[0].peer_address.rsplit_once(':').unwrap();
    let bad = "gw.nonexistent.invalid";
    for (gateways, expect) in [
        (
            format!("[{{host: {bad}, port: 443}}, {{host: '{host}', port: {gw_port}}}]"),
            "True",
        ),
        (
            format!("[{{host: '{host}', port: {gw_port}}}, {{host: {bad}, port: 443}}]"),
            "True",
        ),
        (format!("[{{host: {bad}, port: 443}}]"), "False"),
    ] {
        sites.client.apply(&format!("apiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {{name: server1}}\nspec: {{gateways: {gateways}}}\n"));
        assert!(
            eventually(CONVERGE, || reachable(&sites.client, "server1") == expect),
            "{gateways}: {}",
            reachable(&sites.client, "server1")
        );
        let served = exchange(port, b"hi") == served_by("server1");
        assert_eq!(served, expect == "True", "{gateways}");
    }
}

#[test]
fn client_attributes_from_the_address_table_reach_both_sides() {
    let table = std::env::temp_dir().join(format!("clients-{}.yaml", support::rand_u64()));
    std::fs::write(
        &table,
        "clients:\n  - {cidr: 127.0.0.2/32, namespace: shop, labels: {app: firefox}}\n  - {cidr: 127.0.0.0/8, namespace: shop, labels: {app: curl}}\n",
    )
    .unwrap();
    let sites = Sites::with_client_args(
        &["server1"],
        &["--client-attributes", table.to_str().unwrap()],
    );
    let port = sites.import("round-robin");
    // Egress: only clients of namespace shop. Ingress: firefox is denied, the rest allowed.
    sites.client.apply(&policy(
        "AccessPolicy",
        "shop-only",
        "allow",
        "{matchLabels: {client.clusterlink.net/namespace: shop}}",
        "{}",
    ));
    sites.servers[0].apply(&format!(
        "{}{}",
        policy(
            "AccessPolicy",
            "deny-firefox",
            "deny",
            "{matchLabels: {client.clusterlink.net/labels.app: firefox}}",
            "{}"
        ),
        allow_all("allow-all")
    ));
    assert!(
        eventually(CONVERGE, || exchange_from("127.0.0.1", port, b"hi")
            == served_by("server1")),
        "{}",
        sites.client.log()
    );
    assert_eq!(exchange_from("127.0.0.2", port, b"hi"), Exchange::Reset);
    assert!(
        sites
            .client
            .log()
            .contains("ingress at server1: denied by AccessPolicy default/deny-firefox"),
        "{}",
        sites.client.log()
    );
    let _ = std::fs::remove_file(table);
}

/// For sites built by hand: `client` learns `server` as server1, allows egress, imports its
/// `svc` on a fresh port, and the port is returned once a connection through it is served.
fn import_from_server1(client: &GatewayProcess, server: &GatewayProcess) -> u16 {
    client.apply(&format!(
        "{}{}",
        peer("server1", server),
        allow_all("allow-all")
    ));
    let port = free_port();
    client.apply(&import("svc", port, &["server1"], "static"));
    assert!(
        eventually(CONVERGE, || exchange(port, b"hi") == served_by("server1")),
        "{}",
        client.log()
    );
    port
}

/// Copies a peer's certificate set into `dir` (ca.pem, cert.pem, key.pem), replacing any there
/// by rename so a gateway never reads half a file.
fn install_certs(fabric_dir: &std::path::Path, peer: &str, dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (from, to) in [
        (fabric_dir.join("cert.pem"), "ca.pem"),
        (fabric_dir.join(peer).join("cert.pem"), "cert.pem"),
        (fabric_dir.join(peer).join("key.pem"), "key.pem"),
    ] {
        let tmp = dir.join(format!("{to}.tmp"));
        std::fs::copy(&from, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(to)).unwrap();
    }
}

fn start_with_certs(root: &std::path::Path, peer: &str, dir: &std::path::Path) -> GatewayProcess {
    start_with_certs_and(root, peer, dir, &[])
}

fn start_with_certs_and(
    root: &std::path::Path,
    peer: &str,
    dir: &std::path::Path,
    extra: &[&str],
) -> GatewayProcess {
    let arg = |f: &str| dir.join(f).display().to_string();
    let data = root.join(format!("{peer}-data")).display().to_string();
    let mut args = vec![
        "--ca".to_string(),
        arg("ca.pem"),
        "--cert".to_string(),
        arg("cert.pem"),
        "--key".to_string(),
        arg("key.pem"),
        "--data-dir".to_string(),
        data,
        "--management-address".to_string(),
        "127.0.0.1:0".to_string(),
        "--peer-address".to_string(),
        "127.0.0.1:0".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    GatewayProcess::spawn(root, &args)
}

#[test]
fn replaced_certificates_are_picked_up_without_a_restart() {
    let f = Fabric::new(&["server1", "client1"]);
    let root = f.root();
    let o = support::run(
        support::CLUSTERLINK,
        &["create", "fabric", "--name", "fabric_b"],
        root,
    );
    assert!(o.status.success());
    for p in ["server1", "client1"] {
        assert!(
            support::run(
                support::CLUSTERLINK,
                &["create", "peer-cert", "--name", p, "--fabric", "fabric_b"],
                root
            )
            .status
            .success()
        );
    }
    let (a, b) = (f.fabric_dir(), root.join("fabric_b"));
    let (server_dir, client_dir) = (root.join("live/server1"), root.join("live/client1"));
    install_certs(&a, "server1", &server_dir);
    install_certs(&a, "client1", &client_dir);
    let server = start_with_certs(root, "server1", &server_dir);
    let client = start_with_certs(root, "client1", &client_dir);
    server.apply(&format!(
        "{}{}",
        export("svc", Backend::start("server1").port),
        allow_all("allow-all")
    ));
    let port = import_from_server1(&client, &server);

    // Half a move (the new CA, the old certificate) is not taken: traffic goes on as before.
    std::fs::copy(b.join("cert.pem"), server_dir.join("ca.pem.tmp")).unwrap();
    std::fs::rename(server_dir.join("ca.pem.tmp"), server_dir.join("ca.pem")).unwrap();
    assert!(
        eventually(CONVERGE, || server
            .log()
            .contains("the certificate does not fit the CA")),
        "{}",
        server.log()
    );
    assert_eq!(exchange(port, b"hi"), served_by("server1"));
    // ... and check says so, beside the certificate still in force.
    let certificate_line = |gateway: &GatewayProcess| {
        let report = stdout(&gateway.gwctl(&["check"]));
        report
            .lines()
            .find(|l| l.starts_with("certificate"))
            .unwrap_or_else(|| panic!("no certificate line in\n{report}"))
            .to_string()
    };
    assert!(eventually(CONVERGE, || certificate_line(&server).contains("warning")));
    let refused = certificate_line(&server);
    assert!(refused.contains("not put in force"), "{refused}");
    assert!(refused.contains("does not fit the CA"), "{refused}");

    // server1 moves to fabric B alone: the fabrics no longer trust each other.
    install_certs(&b, "server1", &server_dir);
    assert!(
        eventually(CONVERGE, || reachable(&client, "server1") == "False"),
        "{}",
        server.log()
    );
    assert_eq!(exchange(port, b"hi"), Exchange::Reset);
    assert!(
        server.log().contains("certificates reloaded"),
        "{}",
        server.log()
    );
    let in_force = certificate_line(&server);
    assert!(in_force.contains(" ok "), "{in_force}");

    // client1 follows: traffic flows again, and neither gateway was restarted.
    install_certs(&b, "client1", &client_dir);
    assert!(
        eventually(CONVERGE, || exchange(port, b"hi") == served_by("server1")),
        "{}",
        client.log()
    );
    assert!(eventually(CONVERGE, || reachable(&client, "server1") == "True"));

    // A certificate for another peer name is not taken.
    install_certs(&b, "server1", &client_dir);
    assert!(
        eventually(CONVERGE, || client
            .log()
            .contains("does not name peer \"client1\"")),
        "{}",
        client.log()
    );
    assert_eq!(exchange(port, b"hi"), served_by("server1"));
    assert!(
        eventually(CONVERGE, || certificate_line(&client)
            .contains("does not name peer")),
        "{}",
        certificate_line(&client)
    );
}

#[test]
fn an_export_of_the_gateways_own_management_api_is_refused() {
    let sites = Sites::new(&["server1"]);
    sites.allow_everywhere();
    let server = &sites.servers[0];
    // A local admin's mistake: exporting the gateway's own (loopback, unauthenticated) API.
    server.apply(&export("svc", server.port()));
    let port = sites.import("round-robin");
    let refused = "connection refused: backend 127.0.0.1:";
    assert!(
        eventually(CONVERGE, || exchange(
            port,
            b"GET /apis/clusterlink.net/v1alpha1/peers HTTP/1.0\r\n\r\n"
        ) == Exchange::Reset
            && sites.client.log().contains(refused)),
        "{}",
        sites.client.log()
    );
    assert!(
        sites
            .client
            .log()
            .contains("it is one of this gateway's own listeners"),
        "{}",
        sites.client.log()
    );
    // The same export pointed at a real service works: the check is about the target only.
    server.apply(&export("svc", Backend::start("server1").port));
    assert!(eventually(CONVERGE, || exchange(port, b"hi") == served_by("server1")));
}

#[test]
fn a_peer_whose_gateway_presents_another_name_is_refused() {
    let sites = Sites::new(&["server1", "server2"]);
    sites.allow_everywhere();
    let port = sites.import("static");
    assert!(eventually(CONVERGE, || exchange(port, b"hi") == served_by("server1")));
    // Peer server1 now points at server2's gateway: same fabric, but its certificate says server2.
    sites.client.apply(&peer("server1", &sites.servers[1]));
    // Only that peer as a source, so there is no backup to fail over to.
    sites
        .client
        .apply(&import("svc", port, &["server1"], "static"));
    assert!(
        eventually(CONVERGE, || exchange(port, b"hi") == Exchange::Reset
            && sites
                .client
                .log()
                .contains("not valid for name \"server1\"")),
        "{}",
        sites.client.log()
    );
    assert!(eventually(CONVERGE, || reachable(&sites.client, "server1") == "False"));
}

/// A backend that takes one connection, reads it to its end and reports how it ended: `fin` for
/// a clean close, or the error kind.
fn recording_backend() -> (u16, std::sync::mpsc::Receiver<String>) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let ended = match conn.read_to_end(&mut Vec::new()) {
            Ok(_) => "fin".to_string(),
            Err(e) => format!("{:?}", e.kind()),
        };
        let _ = tx.send(ended);
    });
    (port, rx)
}

#[test]
fn a_revoked_tunnel_is_reset_at_both_ends() {
    let fabric = Fabric::new(&["server1", "client1"]);
    let (server, client) = (fabric.start("server1"), fabric.start("client1"));
    let (backend, ended) = recording_backend();
    server.apply(&format!(
        "{}{}",
        export("svc", backend),
        allow_all("allow-all")
    ));
    let port = free_port();
    client.apply(&format!(
        "{}{}{}",
        peer("server1", &server),
        allow_all("allow-all"),
        import("svc", port, &["server1"], "static")
    ));
    client.wait_listening("svc");
    let tunnel = open_counted_tunnel(port, &server, "ingress");
    server.gwctl_ok(&["delete", "policy", "allow-all"]);
    // Neither end may take the cut for a complete exchange.
    let mut client_end = tunnel;
    let mut rest = Vec::new();
    let client_saw = std::io::Read::read_to_end(&mut client_end, &mut rest).map_err(|e| e.kind());
    assert_eq!(client_saw, Err(std::io::ErrorKind::ConnectionReset));
    let backend_saw = ended.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(backend_saw, "ConnectionReset");
}

#[test]
fn a_terminated_gateway_lets_open_tunnels_finish() {
    use std::io::{Read, Write};
    let mut sites = Sites::new(&["server1"]);
    sites.allow_everywhere();
    let port = sites.import("static");
    assert!(eventually(CONVERGE, || exchange(port, b"hi") == served_by("server1")));
    let mut tunnel = open_counted_tunnel(port, &sites.servers[0], "ingress");
    // Both gateways are asked to stop while the tunnel is mid-request.
    clusterlink_testbed::terminate(&sites.client.child);
    clusterlink_testbed::terminate(&sites.servers[0].child);
    // They take no new connections...
    assert!(eventually(CONVERGE, || std::net::TcpStream::connect((
        "127.0.0.1",
        port
    ))
    .is_err()));
    // ...and the open one carries on to its end.
    let logs = |e: std::io::Error| {
        let server = sites.servers[0].log();
        panic!(
            "{e}\nimporting side:\n{}\nexporting side:\n{server}",
            sites.client.log()
        )
    };
    tunnel.write_all(b" and the rest").unwrap_or_else(logs);
    tunnel
        .shutdown(std::net::Shutdown::Write)
        .unwrap_or_else(logs);
    let mut answer = String::new();
    tunnel.read_to_string(&mut answer).unwrap_or_else(|e| {
        logs(e);
        0
    });
    assert_eq!(answer, "server1 20\npartial and the rest");
    // Then they exit on their own, cleanly.
    for gw in std::iter::once(&mut sites.client).chain(sites.servers.iter_mut()) {
        let exited = eventually(Duration::from_secs(30), || {
            matches!(gw.child.try_wait(), Ok(Some(_)))
        });
        assert!(exited, "{}", gw.log());
        assert!(gw.child.wait().unwrap().success(), "{}", gw.log());
    }
}

#[test]
fn revoking_access_closes_live_tunnels_on_the_exporting_side() {
    let sites = Sites::new(&["server1"]);
    sites.allow_everywhere();
    let port = sites.import("round-robin");
    assert!(eventually(CONVERGE, || exchange(port, b"hi") == served_by("server1")));
    let server = &sites.servers[0];

    // The exporter withdraws its allow: the open tunnel closes, not only new ones are refused.
    let tunnel = open_counted_tunnel(port, server, "ingress");
    server.gwctl_ok(&["delete", "policy", "allow-all"]);
    assert!(
        was_closed(tunnel),
        "a tunnel stayed open after its access was revoked"
    );
    assert!(server.log().contains("access revoked"), "{}", server.log());
    assert_eq!(
        exchange(port, b"hi"),
        Exchange::Reset,
        "{}\n{}",
        sites.client.log(),
        server.log()
    );

    // Deleting the export does the same.
    server.apply(&allow_all("allow-all"));
    assert!(eventually(CONVERGE, || exchange(port, b"hi") == served_by("server1")));
    let tunnel = open_counted_tunnel(port, server, "ingress");
    server.gwctl_ok(&["delete", "export", "svc"]);
    assert!(
        was_closed(tunnel),
        "a tunnel stayed open after its export was deleted"
    );
    assert!(
        metric_with(
            server,
            "clusterlink_connections_refused_total",
            &[("side", "ingress"), ("reason", "Revoked")],
        ) >= 2.0
    );
}

#[test]
fn the_management_listener_follows_certificate_rotation_too() {
    let f = Fabric::new(&["server1"]);
    let root = f.root();
    assert!(
        support::run(
            support::CLUSTERLINK,
            &["create", "admin-cert", "--name", "alice"],
            root
        )
        .status
        .success()
    );
    assert!(
        support::run(
            support::CLUSTERLINK,
            &["create", "fabric", "--name", "fabric_b"],
            root
        )
        .status
        .success()
    );
    for args in [
        &[
            "create",
            "peer-cert",
            "--name",
            "server1",
            "--fabric",
            "fabric_b",
        ][..],
        &[
            "create",
            "admin-cert",
            "--name",
            "bob",
            "--fabric",
            "fabric_b",
        ][..],
    ] {
        assert!(
            support::run(support::CLUSTERLINK, args, root)
                .status
                .success()
        );
    }
    let dir = root.join("live/server1");
    install_certs(&f.fabric_dir(), "server1", &dir);
    let gw = start_with_certs_and(root, "server1", &dir, &["--management-tls"]);
    assert!(gw.url.starts_with("https://"), "{}", gw.url);
    let contexts = support::GwctlConfig::new(root.join("gwctl.yaml"));
    let gwctl = |context: &str, args: &[&str]| contexts.run(context, args);
    for (context, fabric, admin) in [
        ("alice", "default_fabric", "alice"),
        ("bob", "fabric_b", "bob"),
    ] {
        let fabric = root.join(fabric);
        contexts.set_tls_context(
            context,
            gw.port(),
            "server1",
            &fabric,
            &fabric.join("admins").join(admin),
        );
    }
    assert!(gwctl("alice", &["get", "peers"]).status.success());
    assert!(!gwctl("bob", &["get", "peers"]).status.success());
    // The gateway moves to fabric B by file replacement alone.
    install_certs(&root.join("fabric_b"), "server1", &dir);
    assert!(
        eventually(CONVERGE, || gwctl("bob", &["get", "peers"])
            .status
            .success()),
        "{}",
        gw.log()
    );
    assert!(!gwctl("alice", &["get", "peers"]).status.success());
}

#[test]
fn revoking_access_closes_live_tunnels_on_the_importing_side() {
    let sites = Sites::new(&["server1"]);
    sites.allow_everywhere();
    let port = sites.import("round-robin");
    assert!(eventually(CONVERGE, || exchange(port, b"hi") == served_by("server1")));
    // The importer withdraws its egress allow: the open tunnel closes.
    let tunnel = open_counted_tunnel(port, &sites.client, "egress");
    sites.client.gwctl_ok(&["delete", "policy", "allow-all"]);
    assert!(
        was_closed(tunnel),
        "a tunnel stayed open after its egress access was revoked"
    );
    assert!(
        sites
            .client
            .log()
            .contains("tunnel revoked: access revoked"),
        "{}",
        sites.client.log()
    );
    // Deleting the Peer does the same.
    sites.client.apply(&allow_all("allow-all"));
    assert!(eventually(CONVERGE, || exchange(port, b"hi") == served_by("server1")));
    let tunnel = open_counted_tunnel(port, &sites.client, "egress");
    sites.client.gwctl_ok(&["delete", "peer", "server1"]);
    assert!(
        was_closed(tunnel),
        "a tunnel stayed open after its Peer was deleted"
    );
}

#[test]
fn a_gateways_own_labels_are_its_peer_labels_in_its_policies() {
    let f = Fabric::new(&["server1", "client1"]);
    let server = f.start_with(
        "server1",
        &[
            "--management-address",
            "127.0.0.1:0",
            "--peer-address",
            "127.0.0.1:0",
            "--label",
            "env=prod",
        ],
    );
    let client = f.start("client1");
    server.apply(&export("svc", Backend::start("server1").port));
    // Ingress: only where the exporting peer (this gateway) is labelled env=prod.
    server.apply(&policy(
        "AccessPolicy",
        "prod-only",
        "allow",
        "{}",
        "{matchLabels: {peer.clusterlink.net/labels.env: prod}}",
    ));
    let port = import_from_server1(&client, &server);
    // A policy asking for another value does not match this gateway.
    server.gwctl_ok(&["delete", "policy", "prod-only"]);
    server.apply(&policy(
        "AccessPolicy",
        "staging-only",
        "allow",
        "{}",
        "{matchLabels: {peer.clusterlink.net/labels.env: staging}}",
    ));
    assert!(eventually(CONVERGE, || exchange(port, b"hi") == Exchange::Reset));

    let o = support::run(
        support::CL_GATEWAY,
        &[
            "--peer",
            "server1",
            "--label",
            "bad key=x",
            "--data-dir",
            "other",
        ],
        f.root(),
    );
    assert!(!o.status.success());
    assert!(
        support::stderr(&o).contains("--label \"bad key=x\""),
        "{}",
        support::stderr(&o)
    );
}

#[test]
fn a_client_with_unknown_attributes_is_refused_on_either_side_while_policies_select_clients() {
    // 127.0.0.2 is a known client; 127.0.0.3 is in no entry of the table.
    let table = clients_table(&["{cidr: 127.0.0.2/32, namespace: shop, labels: {app: curl}}"]);
    let sites = Sites::with_client_args(
        &["server1"],
        &["--client-attributes", table.to_str().unwrap()],
    );
    let port = sites.import("round-robin");
    let server = &sites.servers[0];
    server.apply(&allow_all("allow-all"));
    sites.client.apply(&allow_all("allow-all"));
    assert!(eventually(CONVERGE, || exchange_from(
        "127.0.0.3",
        port,
        b"x"
    ) == served_by("server1")));

    // Egress: an allow-all beside a policy about clients no longer lets an unknown client in.
    sites.client.apply(&policy(
        "AccessPolicy",
        "deny-firefox",
        "deny",
        "{matchLabels: {client.clusterlink.net/labels.app: firefox}}",
        "{}",
    ));
    assert!(
        eventually(CONVERGE, || exchange_from("127.0.0.3", port, b"x")
            == Exchange::Reset),
        "{}",
        sites.client.log()
    );
    assert!(
        sites
            .client
            .log()
            .contains("egress denied: the client's attributes are unknown")
    );
    // curl tells the refusal from a closed port: a reset of an open connection (56), never a
    // failed connect (7), however fast the gateway refuses.
    let curl = |port: u16| {
        let o = std::process::Command::new("curl")
            .args(["-sS", "--interface", "127.0.0.3"])
            .arg(format!("http://127.0.0.1:{port}/"))
            .output()
            .expect("curl (scripts/install-test-deps.sh installs it)");
        (o.status.code(), support::stderr(&o))
    };
    for _ in 0..5 {
        let (code, said) = curl(port);
        assert_eq!(code, Some(56), "a refusal: {said}");
    }
    let (code, said) = curl(free_port());
    assert_eq!(code, Some(7), "a closed port: {said}");
    // The refusal names the policy that brought the rule into force.
    assert!(
        sites
            .client
            .log()
            .contains("(AccessPolicy default/deny-firefox, maybe others)"),
        "{}",
        sites.client.log()
    );
    assert_eq!(exchange_from("127.0.0.2", port, b"x"), served_by("server1"));
    // The table is followed: given attributes without a restart, 127.0.0.3 is served; taken
    // out again, it is refused again.
    let known = "clients:\n  - {cidr: 127.0.0.2/31, namespace: shop, labels: {app: curl}}\n";
    let original = std::fs::read_to_string(&table).unwrap();
    std::fs::write(&table, known).unwrap();
    assert!(
        eventually(CONVERGE, || exchange_from("127.0.0.3", port, b"x")
            == served_by("server1")),
        "{}",
        sites.client.log()
    );
    std::fs::write(&table, original).unwrap();
    assert!(eventually(CONVERGE, || exchange_from(
        "127.0.0.3",
        port,
        b"x"
    ) == Exchange::Reset));

    // Ingress: the exporting side decides the same on the attributes it was sent (none).
    sites.client.gwctl_ok(&["delete", "policy", "deny-firefox"]);
    server.apply(&policy(
        "AccessPolicy",
        "deny-firefox",
        "deny",
        "{matchLabels: {client.clusterlink.net/labels.app: firefox}}",
        "{}",
    ));
    assert!(
        eventually(CONVERGE, || exchange_from("127.0.0.3", port, b"x")
            == Exchange::Reset
            && sites.client.log().contains(
                "ingress at server1: denied: the client's attributes are unknown"
            )),
        "{}",
        sites.client.log()
    );
    assert_eq!(exchange_from("127.0.0.2", port, b"x"), served_by("server1"));
}

#[test]
fn an_egress_policy_selects_imports_by_their_labels_as_export_labels() {
    let sites = Sites::with_known_clients(&["server1"]);
    let port = sites.import("round-robin");
    sites.servers[0].apply(&allow_all("allow-all"));
    sites.client.apply(&policy(
        "AccessPolicy",
        "gold-only",
        "allow",
        "{}",
        "{matchLabels: {export.clusterlink.net/labels.tier: gold}}",
    ));
    assert!(eventually(CONVERGE, || exchange(port, b"x")
        == Exchange::Reset
        && sites.client.log().contains("egress denied by default")));
    // The same import, labelled tier=gold: the egress policy now matches it.
    let labelled = import("svc", port, &["server1"], "round-robin").replace(
        "metadata: {name: svc}",
        "metadata: {name: svc, labels: {tier: gold}}",
    );
    sites.client.apply(&labelled);
    assert!(
        eventually(CONVERGE, || exchange(port, b"x") == served_by("server1")),
        "{}",
        sites.client.log()
    );
}

#[test]
fn names_follow_kubernetes_rules_per_kind_and_a_dotted_export_carries_traffic() {
    let sites = Sites::with_known_clients(&["server1"]);
    let server = &sites.servers[0];
    let client = &sites.client;
    // A policy name of 74 characters (a DNS subdomain part may be longer than a DNS label) and a
    // Peer whose name has dots are admitted.
    let long = format!("allow-{}", "x".repeat(68));
    server.apply(&allow_all(&long));
    client.apply(&allow_all("allow-all"));
    client.apply(
        "apiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {name: cluster17.us-east}\nspec: {gateways: [{host: 10.0.0.9, port: 443}]}\n",
    );
    // An export with a host may have dots in its name; one without a host is a Service's name.
    server.apply(&export("db.eu-west", Backend::start("server1").port));
    let no_host = std::env::temp_dir().join(format!("export-{}.yaml", support::rand_u64()));
    std::fs::write(
        &no_host,
        "apiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {name: db.eu-west}\nspec: {port: 80}\n",
    )
    .unwrap();
    let out = server.gwctl(&["apply", "-f", no_host.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        support::stderr(&out)
            .contains("an export without spec.host is the Service of the same name"),
        "{}",
        support::stderr(&out)
    );

    // Traffic reaches the dotted export through a tunnel.
    let port = free_port();
    client.apply(&format!(
        "apiVersion: clusterlink.net/v1alpha1\nkind: Import\nmetadata: {{name: db}}\nspec: {{port: {port}, sources: [{{peer: server1, exportName: db.eu-west, exportNamespace: default}}]}}\n"
    ));
    client.wait_listening("db");
    assert!(
        eventually(CONVERGE, || exchange(port, b"x") == served_by("server1")),
        "{}",
        client.log()
    );
}

#[test]
fn an_export_named_by_dns_carries_traffic_once_its_backend_is_up() {
    let sites = Sites::with_known_clients(&["server1"]);
    let (server, client) = (&sites.servers[0], &sites.client);
    server.apply(&allow_all("allow-all"));
    client.apply(&allow_all("allow-all"));
    // Nothing listens on the backend's port yet: the name is looked up, its address refuses.
    let backend_port = free_port();
    server.apply(&format!(
        "apiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {{name: named}}\nspec: {{host: localhost, port: {backend_port}}}\n"
    ));
    let port = free_port();
    client.apply(&format!(
        "apiVersion: clusterlink.net/v1alpha1\nkind: Import\nmetadata: {{name: named}}\nspec: {{port: {port}, sources: [{{peer: server1, exportName: named, exportNamespace: default}}]}}\n"
    ));
    client.wait_listening("named");
    assert!(eventually(CONVERGE, || exchange(port, b"x") == Exchange::Reset));
    assert!(
        eventually(CONVERGE, || server.log().contains("BackendUnreachable")),
        "{}",
        server.log()
    );
    // The backend comes up at once after the refusal: the address looked up for the refused
    // tunnel serves the next one.
    let listener = std::net::TcpListener::bind(("127.0.0.1", backend_port)).unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut conn in listener.incoming().flatten() {
            let mut data = Vec::new();
            if conn.read_to_end(&mut data).is_ok() {
                let _ = conn.write_all(format!("named {}\n", data.len()).as_bytes());
                let _ = conn.write_all(&data);
            }
        }
    });
    assert_eq!(
        exchange(port, b"hello"),
        served_by("named"),
        "{}",
        server.log()
    );
}

#[test]
fn a_gateways_own_labels_reach_policies_on_the_other_side_and_the_administrator_wins() {
    let f = Fabric::new(&["server1", "client1"]);
    let table = clients_table(&["{cidr: 127.0.0.0/8, namespace: default}"]);
    let listen = [
        "--management-address",
        "127.0.0.1:0",
        "--peer-address",
        "127.0.0.1:0",
    ];
    let server = f.start_with("server1", &[&listen[..], &["--label", "env=prod"]].concat());
    let client = f.start_with(
        "client1",
        &[
            &listen[..],
            &[
                "--label",
                "tier=gold",
                "--client-attributes",
                table.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    server.apply(&export("svc", Backend::start("server1").port));
    client.apply(&peer("server1", &server));
    let port = free_port();
    client.apply(&import("svc", port, &["server1"], "round-robin"));
    client.wait_listening("svc");
    // Egress sees the labels server1 reports in its probe answers; ingress sees the labels
    // client1 sends with its tunnel request. Neither side labelled the other's Peer object.
    client.apply(&policy(
        "AccessPolicy",
        "to-prod",
        "allow",
        "{}",
        "{matchLabels: {peer.clusterlink.net/labels.env: prod}}",
    ));
    server.apply(&policy(
        "AccessPolicy",
        "from-gold",
        "allow",
        "{matchLabels: {peer.clusterlink.net/labels.tier: gold}}",
        "{}",
    ));
    assert!(
        eventually(CONVERGE, || exchange(port, b"hi") == served_by("server1")),
        "client:\n{}\nserver:\n{}",
        client.log(),
        server.log()
    );
    let shown = client.gwctl_ok(&["get", "peer", "server1", "-o", "yaml"]);
    assert!(shown.contains("labels:\n    env: prod"), "{shown}");

    // The administrator's own label on the Peer object wins over what the peer reports.
    let relabelled = peer("server1", &server).replace(
        "metadata: {name: server1}",
        "metadata: {name: server1, labels: {env: dev}}",
    );
    client.apply(&relabelled);
    assert!(
        eventually(CONVERGE, || exchange(port, b"hi") == Exchange::Reset
            && client.log().contains("egress denied by default")),
        "{}",
        client.log()
    );
}

/// The environment variable `name` of a running process, as it was when the process started
/// (what glibc read).
fn environment_of(pid: u32, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let prefix = format!("{name}=");
    environ
        .split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// On an AMD processor with fast short `rep movsb` a gateway runs itself again with glibc's
/// memory copies tuned (`memory_copies`) and serves as started; an operator's own threshold is
/// kept. Elsewhere it runs as started.
#[test]
fn a_gateway_runs_with_memory_copies_tuned_for_its_processor() {
    use clusterlink_dataplane::memory_copies::{Processor, TUNABLES, tuned};
    let f = Fabric::new(&["p1", "p2"]);
    let processor = Processor::from_cpuinfo(&std::fs::read_to_string("/proc/cpuinfo").unwrap());
    let ours = std::env::var(TUNABLES).ok();
    let gateway = f.start("p1");
    assert_eq!(
        environment_of(gateway.child.id(), TUNABLES),
        tuned(ours.as_deref(), processor).or(ours),
        "on {processor:?}"
    );
    // Restarted with its arguments: it answers on the addresses it was told.
    gateway.gwctl_ok(&["get", "peers"]);

    let operator = "glibc.cpu.x86_rep_movsb_threshold=8192";
    let mut command = std::process::Command::new(support::CL_GATEWAY);
    command
        .args(["--peer", "p2", "--allow-loopback-backends"])
        .args([
            "--management-address",
            "127.0.0.1:0",
            "--peer-address",
            "127.0.0.1:0",
        ])
        .env(TUNABLES, operator);
    let gateway = GatewayProcess::spawn_command(None, f.root(), command);
    assert_eq!(
        environment_of(gateway.child.id(), TUNABLES).as_deref(),
        Some(operator)
    );
}
