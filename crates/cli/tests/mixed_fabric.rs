//! A fabric that mixes this project's gateway with the Go ClusterLink's: one site of each, in
//! network namespaces, the Go one as its real `cl-controlplane` and `cl-go-dataplane` against a
//! real API server (`clusterlink_testbed::go_clusterlink`). Traffic both ways, a deny on each
//! side, revocation cutting live tunnels, and the Go gateway killed and started again.

mod support;

use std::time::Duration;

use clusterlink_testbed::go_clusterlink::{self, GoSite, GoSiteSpec};
use clusterlink_testbed::netns::Wan;
use support::sites::{Conversation, EchoService, PEER_PORT, can_run, talk};
use support::{Exchange, Fabric, GatewayProcess, eventually, reachable};

/// Namespace changes reach both gateways' decisions within a second or two; the Go control plane
/// watches its API server, then pushes to its data plane.
const CONVERGE: Duration = Duration::from_secs(30);
/// The Go gateway marks a peer unreachable after its heartbeats fail for several seconds, and
/// probes every 10 s once it has.
const GO_HEARTBEATS: Duration = Duration::from_secs(60);

const RUST: &str = "rust1";
const GO: &str = "go1";

/// What a client of the Go site's import sees when a gateway refuses it: the Go data plane
/// takes the connection, then closes it when its authorization fails.
fn refused_at_go(exchange: Exchange) -> bool {
    matches!(&exchange, Exchange::Other(e) if e == "closed without a greeting")
}

fn allow_all(name: &str) -> String {
    format!(
        "---\napiVersion: clusterlink.net/v1alpha1\nkind: AccessPolicy\nmetadata: {{name: {name}, namespace: default}}\n\
         spec: {{action: allow, from: [{{workloadSelector: {{}}}}], to: [{{workloadSelector: {{}}}}]}}\n"
    )
}

fn deny(name: &str, from: &str) -> String {
    format!(
        "---\napiVersion: clusterlink.net/v1alpha1\nkind: AccessPolicy\nmetadata: {{name: {name}, namespace: default}}\n\
         spec: {{action: deny, from: [{{workloadSelector: {from}}}], to: [{{workloadSelector: {{}}}}]}}\n"
    )
}

fn export(name: &str, host: &str, port: u16) -> String {
    format!(
        "---\napiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {{name: {name}, namespace: default}}\nspec: {{host: '{host}', port: {port}}}\n"
    )
}

fn import(name: &str, port: u16, peer: &str, export: &str) -> String {
    format!(
        "---\napiVersion: clusterlink.net/v1alpha1\nkind: Import\nmetadata: {{name: {name}, namespace: default}}\n\
         spec: {{port: {port}, sources: [{{peer: {peer}, exportName: {export}, exportNamespace: default}}]}}\n"
    )
}

fn peer(name: &str, host: &str, port: u16, protocol: &str) -> String {
    format!(
        "---\napiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {{name: {name}, namespace: clusterlink-system}}\n\
         spec: {{gateways: [{{host: '{host}', port: {port}}}]{protocol}}}\n"
    )
}

#[test]
fn a_rust_site_and_a_go_site_link_both_ways() {
    if !can_run(
        "a_rust_site_and_a_go_site_link_both_ways",
        &["unshare", "mount"],
    ) {
        return;
    }
    let k8s = clusterlink_testbed::cluster::testenv_bin().expect("the Kubernetes test environment");
    let go_bin = match go_clusterlink::reference_bin() {
        Ok(bin) => bin,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true, so the mixed-fabric test must run, but: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED a_rust_site_and_a_go_site_link_both_ways: {e}");
            return;
        }
    };
    let fabric = Fabric::new(&[RUST, GO]);
    let control = "go1-cp";
    let ports = [
        PEER_PORT,
        go_clusterlink::PEER_PORT,
        go_clusterlink::CONTROLPLANE_PORT,
    ];
    let wan = Wan::create(&[RUST, GO, control], &ports).expect("create the sites");
    let (rust_site, go_site) = (wan.site(RUST).unwrap(), wan.site(GO).unwrap());

    let rust_peer_address = format!("{}:{PEER_PORT}", rust_site.address);
    let rust = GatewayProcess::spawn_in(
        Some(rust_site),
        fabric.root(),
        &[
            "--peer",
            RUST,
            "--data-dir",
            fabric.data_dir(RUST).to_str().unwrap(),
            "--peer-address",
            &rust_peer_address,
            "--management-address",
            "127.0.0.1:0",
            "--import-address",
            "127.0.0.1",
            "--label",
            "site=rust",
        ],
    );
    let mut go = GoSite::start(GoSiteSpec {
        k8s_bin: &k8s,
        bin: &go_bin,
        dir: &fabric.root().join("go-site"),
        data: go_site,
        control: wan.site(control).unwrap(),
        fabric_dir: &fabric.fabric_dir(),
        peer: GO,
        peer_labels: &["site=go"],
    })
    .expect("start the Go site");
    let fail = |what: &str, go: &GoSite| -> String {
        format!("{what}\n--- rust gateway:\n{}\n{}", rust.log(), go.logs())
    };

    // Each side's service, exported; each imports the other's.
    let rust_echo = EchoService::start(rust_site, "rust-echo");
    let go_echo = EchoService::start(go_site, "go-echo");
    rust.apply(&format!(
        "{}{}{}{}",
        peer(
            GO,
            &go_site.address.to_string(),
            go_clusterlink::PEER_PORT,
            ", protocol: go"
        ),
        export("rust-echo", &rust_site.address.to_string(), rust_echo.port),
        import("go-echo", 9000, GO, "go-echo"),
        allow_all("allow-all"),
    ));
    go.apply(&format!(
        "{}{}{}{}",
        peer(RUST, &rust_site.address.to_string(), PEER_PORT, ""),
        export("go-echo", "127.0.0.1", go_echo.port),
        import("rust-echo", 80, RUST, "rust-echo"),
        allow_all("allow-all"),
    ))
    .unwrap();
    rust.wait_listening("go-echo");
    let go_import = go
        .import_port("default", "rust-echo")
        .expect("the Go import's port");

    // Each probes the other with the Go heartbeat, and takes its labels from the answer.
    assert!(
        eventually(CONVERGE, || reachable(&rust, GO) == "True"),
        "{}",
        fail("the Go peer never became reachable", &go)
    );
    let labels = || {
        let json = rust.gwctl_ok(&["get", "peer", GO, "-o", "json"]);
        let peer: serde_json::Value = serde_json::from_str(&json).unwrap();
        peer["status"]["labels"]["site"] == "go"
    };
    assert!(
        eventually(CONVERGE, labels),
        "the Go peer's labels were not taken"
    );
    let go_sees = || {
        go.cluster
            .kubectl(&[
                "get",
                "peer",
                RUST,
                "-n",
                "clusterlink-system",
                "-o",
                "jsonpath={.status.labels.site}",
            ])
            .is_ok_and(|site| site == "rust")
    };
    assert!(
        eventually(CONVERGE, go_sees),
        "{}",
        fail("the Go gateway did not take our labels", &go)
    );

    // Traffic both ways: Rust imports from Go, Go imports from Rust.
    let from_go = Exchange::Served {
        backend: "go-echo".into(),
    };
    let from_rust = Exchange::Served {
        backend: "rust-echo".into(),
    };
    assert!(
        eventually(CONVERGE, || talk(rust_site, 9000, b"to go") == from_go),
        "{}",
        fail("Rust -> Go carried nothing", &go)
    );
    assert!(
        eventually(CONVERGE, || talk(go_site, go_import, b"to rust")
            == from_rust),
        "{}",
        fail("Go -> Rust carried nothing", &go)
    );

    // A deny on the Rust side: its egress for its import, its ingress for the Go site's.
    rust.apply(&deny("deny-all", "{}"));
    assert!(eventually(CONVERGE, || talk(rust_site, 9000, b"x") == Exchange::Reset));
    assert!(eventually(CONVERGE, || refused_at_go(talk(
        go_site, go_import, b"x"
    ))));
    let events = rust.gwctl_ok(&["get", "events", "--problems"]);
    let ours = "ingress at rust1: denied by AccessPolicy default/deny-all";
    assert!(events.contains(ours), "{events}");
    rust.gwctl_ok(&["delete", "policy", "deny-all"]);
    assert!(eventually(CONVERGE, || talk(rust_site, 9000, b"x") == from_go));
    assert!(eventually(CONVERGE, || talk(go_site, go_import, b"x") == from_rust));

    // A deny on the Go side: its ingress refuses our tunnels, with a reason we report as the
    // peer's; its egress keeps its own clients from ours.
    go.apply(&deny("deny-all", "{}")).unwrap();
    assert!(eventually(CONVERGE, || talk(rust_site, 9000, b"x") == Exchange::Reset));
    let events = rust.gwctl_ok(&["get", "events", "--problems"]);
    assert!(events.contains("the Go gateway answered 403"), "{events}");
    assert!(eventually(CONVERGE, || refused_at_go(talk(
        go_site, go_import, b"x"
    ))));
    go.cluster
        .kubectl(&["delete", "accesspolicy", "deny-all", "-n", "default"])
        .unwrap();
    assert!(eventually(CONVERGE, || talk(rust_site, 9000, b"x") == from_go));
    assert!(eventually(CONVERGE, || talk(go_site, go_import, b"x") == from_rust));

    // Revoking on the Rust side cuts live tunnels of both directions.
    let mut to_go = Conversation::open(rust_site, 9000);
    let mut to_rust = Conversation::open(go_site, go_import);
    assert!(to_go.echoes(b"ping") && to_rust.echoes(b"ping"));
    rust.gwctl_ok(&["delete", "policy", "allow-all"]);
    let cut = eventually(CONVERGE, || to_go.is_closed());
    assert!(
        cut,
        "{}",
        fail("Rust -> Go stayed open after revocation", &go)
    );
    let cut = eventually(CONVERGE, || to_rust.is_closed());
    assert!(
        cut,
        "{}",
        fail("Go -> Rust stayed open after revocation", &go)
    );
    rust.apply(&allow_all("allow-all"));
    assert!(eventually(CONVERGE, || talk(rust_site, 9000, b"x") == from_go));
    assert!(eventually(CONVERGE, || talk(go_site, go_import, b"x") == from_rust));

    // Revoking on the Go side: new tunnels are refused both ways. The Go gateway decides a
    // tunnel only when it opens, so one already open stays open (it is the Go side's to cut).
    let mut to_go = Conversation::open(rust_site, 9000);
    assert!(to_go.echoes(b"ping"));
    go.cluster
        .kubectl(&["delete", "accesspolicy", "allow-all", "-n", "default"])
        .unwrap();
    assert!(eventually(CONVERGE, || talk(rust_site, 9000, b"x") == Exchange::Reset));
    assert!(eventually(CONVERGE, || refused_at_go(talk(
        go_site, go_import, b"x"
    ))));
    assert!(
        to_go.echoes(b"still"),
        "the Go gateway cut a live tunnel after all: update the docs"
    );
    drop(to_go);
    go.apply(&allow_all("allow-all")).unwrap();
    assert!(eventually(CONVERGE, || talk(rust_site, 9000, b"x") == from_go));

    // The Go gateway's data plane killed: the Rust side sees it unreachable, and resets its
    // clients; started again, traffic flows both ways without anyone touching the Rust side.
    go.kill_dataplane();
    assert!(eventually(CONVERGE, || reachable(&rust, GO) == "False"));
    assert_eq!(talk(rust_site, 9000, b"x"), Exchange::Reset);
    go.restart_dataplane().expect("restart the Go data plane");
    assert!(eventually(CONVERGE, || reachable(&rust, GO) == "True"));
    assert!(
        eventually(GO_HEARTBEATS, || talk(rust_site, 9000, b"again") == from_go),
        "{}",
        fail("Rust -> Go did not come back", &go)
    );
    let go_import = go.import_port("default", "rust-echo").unwrap();
    assert!(
        eventually(GO_HEARTBEATS, || talk(go_site, go_import, b"again")
            == from_rust),
        "{}",
        fail("Go -> Rust did not come back", &go)
    );
}
