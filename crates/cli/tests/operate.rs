//! Operating a fabric without reading logs, through the real binaries: events, describe,
//! explain, check, the warnings of create and apply, and bytes counted while they move.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use support::manifests::{allow_all, export, import, peer, policy};
use support::{
    Backend, Exchange, Fabric, GatewayProcess, eventually, exchange, free_port, metric, stderr,
    stdout,
};

const CONVERGE: Duration = Duration::from_secs(10);

/// Asserts that a command's standard error says `text`.
fn says(output: &std::process::Output, text: &str) {
    let said = stderr(output);
    assert!(said.contains(text), "{text:?} not in:\n{said}");
}

/// `server1` exporting `svc` (allowed by `allow-all`), and `client1` importing it (allowed by
/// `allow-all`), with `server1` known to the client.
struct Pair {
    _fabric: Fabric,
    server: GatewayProcess,
    client: GatewayProcess,
    port: u16,
}

impl Pair {
    fn new() -> Pair {
        Pair::started_with(&[])
    }

    /// Both gateways started with `extra` arguments.
    fn started_with(extra: &[&str]) -> Pair {
        let fabric = Fabric::new(&["server1", "client1"]);
        let mut args = vec![
            "--management-address",
            "127.0.0.1:0",
            "--peer-address",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let server = fabric.start_with("server1", &args);
        let client = fabric.start_with("client1", &args);
        server.apply(&export("svc", Backend::start("server1").port));
        server.apply(&allow_all("allow-all"));
        client.apply(&peer("server1", &server));
        client.apply(&allow_all("allow-all"));
        let port = free_port();
        client.apply(&import("svc", port, &["server1"], "round-robin"));
        client.wait_listening("svc");
        assert!(eventually(CONVERGE, || exchange(port, b"x")
            == Exchange::Served {
                backend: "server1".into()
            }));
        Pair {
            _fabric: fabric,
            server,
            client,
            port,
        }
    }
}

fn events(gw: &GatewayProcess, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["get", "events", "-o", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&gw.gwctl_ok(&all)).unwrap()
}

#[test]
fn a_denial_is_explained_by_events_describe_and_explain_on_both_sides() {
    let pair = Pair::new();
    pair.server.apply(&policy(
        "AccessPolicy",
        "deny-web",
        "deny",
        "{}",
        "{matchLabels: {export.clusterlink.net/name: svc}}",
    ));
    assert!(eventually(CONVERGE, || exchange(pair.port, b"x") == Exchange::Reset));

    // The importing side: who refused, why, and under which policy, without a log line.
    let refused = events(&pair.client, &["--import", "svc", "--problems"]);
    let by_peer = refused
        .iter()
        .find(|e| e["reason"] == "PolicyDenied")
        .unwrap_or_else(|| panic!("no PolicyDenied event: {refused:?}"));
    assert_eq!(by_peer["side"], "egress");
    assert_eq!(by_peer["refusedBy"], "peer");
    assert_eq!(by_peer["policy"], "default/deny-web");
    assert_eq!(by_peer["import"], "default/svc");
    assert_eq!(by_peer["peer"], "server1");
    // The exporting side: its own refusal, decided locally.
    let served = events(&pair.server, &["--peer", "client1"]);
    assert!(
        served.iter().any(|e| e["side"] == "ingress"
            && e["refusedBy"] == "local"
            && e["policy"] == "default/deny-web"),
        "{served:?}"
    );
    // The refusal is counted under the side that refused, with bounded labels.
    assert!(
        metric(
            &pair.client,
            "clusterlink_connections_refused_total{side=\"egress\",refused_by=\"peer\",reason=\"PolicyDenied\",import=\"default/svc\",export=\"default/svc\",peer=\"server1\",policy=\"\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &pair.server,
            "clusterlink_connections_refused_total{side=\"ingress\",refused_by=\"local\",reason=\"PolicyDenied\",import=\"\",export=\"default/svc\",peer=\"client1\",policy=\"default/deny-web\"}"
        ) >= 1.0
    );

    // describe shows the source's reachability and the latest refusals.
    let described = pair.client.gwctl_ok(&["describe", "import", "svc"]);
    for needle in [
        "Sources:",
        "server1",
        "yes",
        "Recent refusals:",
        "PolicyDenied",
        "default/deny-web",
        "ImportValid",
        "SourcesReady",
    ] {
        assert!(described.contains(needle), "{needle} missing:\n{described}");
    }

    // explain: the chain, both sides, and no connection made to decide it.
    let accepted = "clusterlink_connections_accepted_total{side=\"ingress\"}";
    let before = metric(&pair.server, accepted);
    let explained = pair
        .client
        .gwctl(&["explain", "svc", "--client", "127.0.0.1"]);
    let text = stdout(&explained);
    assert!(!explained.status.success(), "a denial exits non-zero");
    assert!(
        text.contains(
            "egress@client1: allow (default/allow-all) → ingress@server1: DENY (default/deny-web)"
        ),
        "{text}"
    );
    says(&explained, "would be refused");
    assert_eq!(
        metric(&pair.server, accepted),
        before,
        "a dry run is no connection"
    );

    // Lifted, the same question is answered yes, as JSON too.
    pair.server
        .gwctl_ok(&["delete", "accesspolicy", "deny-web"]);
    let allowed = pair
        .client
        .gwctl_ok(&["explain", "svc", "--client", "127.0.0.1", "-o", "json"]);
    let allowed: serde_json::Value = serde_json::from_str(&allowed).unwrap();
    assert_eq!(
        allowed["sources"][0]["ingress"]["allowed"], true,
        "{allowed}"
    );
    assert_eq!(
        allowed["sources"][0]["ingress"]["policy"],
        "default/allow-all"
    );
    // A client attribute a peer may not carry is refused by name.
    let bad = pair.client.gwctl(&[
        "explain",
        "svc",
        "--client-attribute",
        "peer.clusterlink.net/name=x",
    ]);
    says(&bad, "is not a client attribute");
}

#[test]
fn bytes_are_counted_while_a_tunnel_is_open_and_each_tunnel_is_reported_when_it_ends() {
    // Every tunnel logged, as an operator asks for with --access-log all.
    let pair = Pair::started_with(&["--access-log", "all"]);
    let mut tunnel = std::net::TcpStream::connect(("127.0.0.1", pair.port)).unwrap();
    let chunk = vec![7u8; 256 * 1024];
    tunnel.write_all(&chunk).unwrap();
    let sent = "clusterlink_import_bytes_total{name=\"default/svc\",direction=\"sent\"}";
    // The first exchange in `Pair::new` sent one byte; these are counted before the tunnel ends.
    assert!(
        eventually(CONVERGE, || metric(&pair.client, sent)
            >= 1.0 + chunk.len() as f64),
        "open tunnel's bytes not counted: {}",
        metric(&pair.client, sent)
    );
    let traffic = pair.client.gwctl_ok(&["describe", "import", "svc"]);
    assert!(traffic.contains("Tunnels:    1 open"), "{traffic}");
    tunnel.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    tunnel.read_to_end(&mut answer).unwrap();
    assert!(answer.starts_with(b"server1 262144\n"));
    // One event and one log line per tunnel, with its bytes.
    let closed = eventually(CONVERGE, || {
        events(&pair.client, &["--import", "svc"])
            .iter()
            .any(|e| e["outcome"] == "Closed" && e["sent"] == 262_144)
    });
    assert!(closed, "{:?}", events(&pair.client, &[]));
    let logged = pair
        .client
        .log()
        .lines()
        .any(|l| l.contains("tunnel closed") && l.contains("sent=262144"));
    assert!(logged, "{}", pair.client.log());
    let exporting = pair.server.log();
    assert!(
        exporting
            .lines()
            .any(|l| l.contains("tunnel closed") && l.contains("export=default/svc")),
        "{exporting}"
    );
}

#[test]
fn check_and_the_warnings_of_create_and_apply_name_what_is_not_working() {
    let pair = Pair::new();
    // An import on a port something else holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port().to_string();
    let created = pair.client.gwctl(&[
        "create",
        "import",
        "--name",
        "busy",
        "--port",
        &taken_port,
        "--peer",
        "server1",
        "--export-name",
        "svc",
    ]);
    assert!(created.status.success(), "{}", stderr(&created));
    says(&created, "import default/busy created, but NOT listening");
    // A source on a Peer nobody defined.
    let orphan = pair.client.gwctl(&[
        "create",
        "import",
        "--name",
        "orphan",
        "--port",
        &free_port().to_string(),
        "--peer",
        "p9",
    ]);
    says(&orphan, "source peer \"p9\" is not defined");
    // An import of an export the peer does not have, and a policy with a typo, applied.
    let manifests = format!(
        "{}{}",
        import("ghost", free_port(), &["server1"], "static"),
        policy(
            "AccessPolicy",
            "typo",
            "allow",
            "{}",
            "{matchLabels: {export.clusterlink.net/nmae: svc}}"
        )
    );
    let file = std::env::temp_dir().join(format!("cl-check-{}.yaml", support::rand_u64()));
    std::fs::write(&file, manifests).unwrap();
    let applied = pair.client.gwctl(&["apply", "-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(applied.status.success(), "{}", stderr(&applied));
    says(&applied, "did you mean \"export.clusterlink.net/name\"");
    says(&applied, "peer server1 has no export default/ghost");

    // Tables say why at a glance; -o wide says it in full.
    let table = pair.client.gwctl_ok(&["get", "imports"]);
    assert!(table.lines().next().unwrap().contains("REASON"), "{table}");
    let busy_row = table.lines().find(|l| l.starts_with("busy")).unwrap();
    assert!(busy_row.contains("PortUnavailable"), "{table}");
    let orphan_row = table.lines().find(|l| l.starts_with("orphan")).unwrap();
    assert!(
        orphan_row.contains("False") && orphan_row.contains("NoSuchPeer"),
        "{table}"
    );
    let wide = pair.client.gwctl_ok(&["get", "imports", "-o", "wide"]);
    assert!(wide.contains("is not defined"), "{wide}");
    // An import of an export its peer does not offer is not ready, in every view (its port is
    // bound, but no source can serve), once server1's catalog is here.
    let ghost_row = || {
        let table = pair.client.gwctl_ok(&["get", "imports"]);
        table
            .lines()
            .find(|l| l.starts_with("ghost"))
            .unwrap()
            .to_string()
    };
    assert!(
        eventually(CONVERGE, || ghost_row().contains("ExportNotOffered")),
        "{}",
        ghost_row()
    );
    assert!(ghost_row().contains("False"), "{}", ghost_row());
    let described = pair.client.gwctl_ok(&["describe", "import", "ghost"]);
    assert!(
        described.contains("server1 does not offer export default/ghost"),
        "{described}"
    );

    // check: every problem, each by name, and a failing exit.
    let checked = pair.client.gwctl(&["check"]);
    let report = stdout(&checked);
    assert!(!checked.status.success(), "{report}");
    let line = |needle: &str| {
        report
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle} in\n{report}"))
            .to_string()
    };
    assert!(line("peer server1").contains("ok"), "{report}");
    assert!(line("certificate").contains("expires in"), "{report}");
    assert!(
        line("import default/svc source server1").contains("ok"),
        "{report}"
    );
    assert!(line("import default/busy ").contains("FAILED"), "{report}");
    assert!(
        line("import default/orphan ").contains("FAILED"),
        "{report}"
    );
    assert!(
        line("import default/orphan ").contains("\"p9\" is not defined"),
        "{report}"
    );
    assert!(
        line("import default/ghost ").contains("ExportNotOffered"),
        "{report}"
    );
    assert!(
        line("import default/ghost source server1").contains("has no export default/ghost"),
        "{report}"
    );
    assert!(line("policy default/typo").contains("FAILED"), "{report}");
    says(&checked, "checks failed");
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&pair.client.gwctl(&["check", "-o", "json"]))).unwrap();
    let failed = json
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["result"] == "failed")
        .count();
    // busy, orphan, ghost (its import, and its source by the dry run), typo.
    assert_eq!(failed, 5, "{json:#}");
    drop(taken);
}

/// Debian's Chromium, which `scripts/install-test-deps.sh` installs.
const CHROMIUM: &str = "chromium";

/// What a headless Chromium shows of `url` once its script has run a few refreshes: the DOM,
/// and a screenshot at `screenshot`.
fn browse(url: &str, screenshot: &std::path::Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = |output: &[String]| {
        let mut command = std::process::Command::new(CHROMIUM);
        command
            .args([
                "--headless",
                // Tests run as root, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1280,1100",
                // Virtual time: the page's two-second refreshes run without waiting for them.
                "--virtual-time-budget=6000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(output)
            .arg(url);
        let out = command.output().expect("run chromium");
        assert!(out.status.success(), "chromium failed: {}", stderr(&out));
        out
    };
    run(&[format!("--screenshot={}", screenshot.display())]);
    assert!(
        std::fs::metadata(screenshot).is_ok_and(|m| m.len() > 1000),
        "no screenshot"
    );
    eprintln!("console screenshot: {}", screenshot.display());
    stdout(&run(&["--dump-dom".to_string()]))
}

#[test]
fn the_console_shows_the_fabric_and_the_latest_denial_in_a_real_browser() {
    if std::process::Command::new(CHROMIUM)
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing: run scripts/install-test-deps.sh"
        );
        eprintln!("skipped: chromium is not installed (scripts/install-test-deps.sh)");
        return;
    }
    let pair = Pair::new();
    let url = format!("http://127.0.0.1:{}/console", pair.client.port());
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let page = browse(&url, &shots.join("console.png"));
    for needle in [
        "<h1>ClusterLink gateway <span id=\"gateway\">client1</span></h1>",
        "server1",
        "reachable",
        "default/svc",
        "Listening",
        "No refusals.",
        "Last update:",
        // What server1 offers this site, not imported by any rule (the import was written).
        "Offered by peers",
        "not imported (no mirror rule selects it)",
        // The gateway's CertificateValid condition.
        "certificate expires in 364 days",
        // The fabric drawn: server1 a reachable node, its line green; the policies listed.
        "class=\"node good\" data-node=\"server1\"",
        "data-peer=\"server1\" data-state=\"good\"",
        "AccessPolicy default/allow-all",
    ] {
        assert!(page.contains(needle), "{needle} missing:\n{page}");
    }
    // The exporting gateway, which has no Peer for client1, shows it as a site that connects.
    let server_page = browse(
        &format!("http://127.0.0.1:{}/console", pair.server.port()),
        &shots.join("console-server.png"),
    );
    for needle in [
        "class=\"node inbound\" data-node=\"client1\"",
        "connects to this gateway (no Peer defined here)",
    ] {
        assert!(
            server_page.contains(needle),
            "{needle} missing:\n{server_page}"
        );
    }
    assert!(!server_page.contains("No peers defined"), "{server_page}");

    pair.server.apply(&policy(
        "AccessPolicy",
        "deny-web",
        "deny",
        "{}",
        "{matchLabels: {export.clusterlink.net/name: svc}}",
    ));
    assert!(eventually(CONVERGE, || exchange(pair.port, b"x") == Exchange::Reset));
    // A few more refusals: alike ones are one row, counted, with the client.
    for _ in 0..3 {
        assert_eq!(exchange(pair.port, b"x"), Exchange::Reset);
    }
    // The import is not ready once server1's new catalog is here (fetched after a probe).
    assert!(eventually(CONVERGE, || pair
        .client
        .gwctl_ok(&["get", "imports"])
        .contains("ExportNotOffered")));
    let page = browse(&url, &shots.join("console-denied.png"));
    for needle in [
        "PolicyDenied",
        "default/deny-web",
        "peer",
        "ingress at server1",
        "<td>127.0.0.1</td>",
        // One import, and no source can serve it now: every view says so.
        "ExportNotOffered",
    ] {
        assert!(page.contains(needle), "{needle} missing:\n{page}");
    }
    let denials = page
        .split_once("id=\"denials\"")
        .and_then(|(_, rest)| rest.split_once("</table>"))
        .unwrap()
        .0;
    let rows = denials.matches("<tr>").count() - 1;
    let most = denials
        .split("<td>×")
        .skip(1)
        .filter_map(|rest| rest.split_once('<')?.0.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    assert!(most >= 4, "refusals not grouped:\n{denials}");
    assert!(
        rows <= 2,
        "{rows} rows for one refusal repeated:\n{denials}"
    );
    // The page is the API's: another site cannot frame it or script it.
    let (code, head) = support::http_request(
        pair.client.port(),
        "GET",
        "/console",
        &[("host", "127.0.0.1"), ("sec-fetch-site", "cross-site")],
        b"",
    );
    assert_eq!(code, 403, "{head}");
}

/// What Prometheus sends when it scrapes.
const OPENMETRICS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// The metric names (as sampled: `_total`, `_bucket`, ...) and families a gateway exports.
fn exported_metrics(gw: &GatewayProcess) -> (Vec<String>, Vec<String>) {
    let (code, body) = support::raw_http(gw.port(), "GET", "/metrics", b"");
    assert_eq!(code, 200);
    let mut families = Vec::new();
    let mut samples = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.push(name.to_string());
            // The Prometheus text format names a counter's family after its `_total` series.
            let suffixes: &[&str] = match kind {
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            samples.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        }
    }
    (families, samples)
}

#[test]
fn every_metric_is_documented_and_the_dashboard_uses_only_real_ones() {
    let pair = Pair::new();
    // A metric family shows once it has a sample: a refusal on both sides, and a stranger on
    // the peer port, give every family one.
    pair.server
        .apply(&policy("AccessPolicy", "deny", "deny", "{}", "{}"));
    assert!(eventually(CONVERGE, || exchange(pair.port, b"x") == Exchange::Reset));
    let (_, peer_port) = pair.server.peer_address.rsplit_once(':').unwrap();
    let mut stranger =
        std::net::TcpStream::connect(("127.0.0.1", peer_port.parse::<u16>().unwrap())).unwrap();
    stranger.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let unserved =
        "clusterlink_connections_unserved_total{listener=\"peer\",reason=\"HandshakeRefused\"}";
    assert!(eventually(CONVERGE, || metric(&pair.server, unserved) >= 1.0));
    // Every family, in the format curl and promtool get, passes Prometheus's linter; a scraper
    // that asks for OpenMetrics gets it.
    for gateway in [&pair.client, &pair.server] {
        let (code, body) = support::raw_http(gateway.port(), "GET", "/metrics", b"");
        assert_eq!(code, 200);
        support::assert_promtool_accepts(&body);
        assert!(!body.contains("# EOF"), "{body}");
        let openmetrics = [("host", "127.0.0.1"), ("accept", OPENMETRICS_ACCEPT)];
        let (code, body) =
            support::http_request(gateway.port(), "GET", "/metrics", &openmetrics, b"");
        assert_eq!(code, 200);
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
    let (mut families, mut samples) = exported_metrics(&pair.client);
    let (server_families, server_samples) = exported_metrics(&pair.server);
    families.extend(server_families);
    samples.extend(server_samples);
    families.sort();
    families.dedup();
    assert_eq!(families.len(), 19, "{families:?}");
    // By default a tunnel that closes cleanly is counted, not logged: logs grow with problems.
    for gateway in [&pair.client, &pair.server] {
        let log = gateway.log();
        assert!(!log.contains("tunnel closed"), "{log}");
        assert!(log.contains("connection refused"), "{log}");
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let docs = std::fs::read_to_string(root.join("docs/METRICS.md")).unwrap();
    for family in &families {
        // Documented under the name people query: counters with `_total`, histograms bare.
        let documented = docs.contains(&format!("`{family}`"))
            || samples
                .iter()
                .any(|s| s.starts_with(family.as_str()) && docs.contains(&format!("`{s}`")));
        assert!(documented, "{family} is not in docs/METRICS.md");
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/clusterlink.json")).unwrap(),
    )
    .unwrap();
    let mut expressions = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            expressions.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    for variable in variables {
        if let Some(query) = variable["definition"].as_str() {
            expressions.push(query.to_string());
        }
    }
    assert!(expressions.len() >= 10, "{expressions:?}");
    let mut used = 0;
    for expr in &expressions {
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("clusterlink_"))
            .collect();
        assert!(!names.is_empty(), "no ClusterLink metric in {expr}");
        for name in names {
            assert!(
                samples.iter().any(|s| s == name),
                "the dashboard queries {name}, which a gateway does not export ({expr})"
            );
            used += 1;
        }
    }
    assert!(used >= expressions.len());
}

#[test]
fn link_prints_the_peer_manifest_another_site_applies_to_reach_this_one() {
    let fabric = Fabric::new(&["server1", "client1"]);
    let server = fabric.start("server1");
    let client = fabric.start("client1");
    let manifest = server.gwctl_ok(&["link"]);
    let (host, port) = server.peer_address.rsplit_once(':').unwrap();
    assert!(manifest.contains("kind: Peer"), "{manifest}");
    assert!(manifest.contains("name: server1"), "{manifest}");
    assert!(manifest.contains(&format!("host: {host}")), "{manifest}");
    assert!(manifest.contains(&format!("port: {port}")), "{manifest}");
    // What one site prints, the other applies as is, and reaches.
    client.apply(&manifest);
    assert!(
        eventually(CONVERGE, || support::reachable(&client, "server1")
            == "True"),
        "{}",
        client.log()
    );
    // Behind a NAT or a load balancer, the operator names the address.
    let behind = server.gwctl_ok(&["link", "--address", "gw.example.com", "--label", "env=prod"]);
    assert!(behind.contains("host: gw.example.com"), "{behind}");
    assert!(behind.contains(&format!("port: {port}")), "{behind}");
    assert!(behind.contains("env: prod"), "{behind}");
    let bad = server.gwctl(&["link", "--address", "bad host!"]);
    assert!(!bad.status.success());
    says(&bad, "would be refused");
}

#[test]
fn update_changes_single_fields_and_edit_applies_what_the_editor_saved() {
    let pair = Pair::new();
    let port = free_port();
    let updated = pair.client.gwctl(&[
        "update",
        "import",
        "svc",
        &format!("spec.port={port}"),
        "metadata.labels.tier=gold",
    ]);
    assert!(updated.status.success(), "{}", stderr(&updated));
    assert_eq!(stdout(&updated), "Import default/svc configured\n");
    assert!(eventually(CONVERGE, || exchange(port, b"x")
        == Exchange::Served {
            backend: "server1".into()
        }));
    let shown = pair
        .client
        .gwctl_ok(&["get", "import", "svc", "-o", "yaml"]);
    assert!(shown.contains("tier: gold"), "{shown}");
    // A bad value is the gateway's to refuse, naming the field; nothing changes.
    let bad = pair
        .client
        .gwctl(&["update", "import", "svc", "spec.port=0"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("spec.port"), "{}", stderr(&bad));
    let removed = pair
        .client
        .gwctl(&["update", "import", "svc", "metadata.labels.tier-"]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    let shown = pair
        .client
        .gwctl_ok(&["get", "import", "svc", "-o", "yaml"]);
    assert!(!shown.contains("tier: gold"), "{shown}");

    // An editor that changes the port in the file it is given.
    let edited_port = free_port();
    let editor = format!("sed -i 's/port: {port}/port: {edited_port}/'");
    let edit = |editor: &str| {
        pair.client
            .command(support::GWCTL)
            .args([
                "--server",
                &format!("http://127.0.0.1:{}", pair.client.port()),
            ])
            .args(["edit", "import", "svc"])
            .env("GWCTL_CONFIG", "/nonexistent/gwctl.yaml")
            .env("EDITOR", editor)
            .env_remove("VISUAL")
            .output()
            .unwrap()
    };
    let out = edit(&editor);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "Import default/svc configured\n");
    assert!(
        pair.client
            .gwctl_ok(&["get", "import", "svc", "-o", "yaml"])
            .contains(&format!("port: {edited_port}"))
    );
    // Saved unchanged: nothing is written.
    let unchanged = edit("true");
    assert!(unchanged.status.success());
    says(&unchanged, "no changes made");
    // Refused by the gateway: the edit is kept, and where is said.
    let broken = edit("sed -i 's/lbScheme: .*/lbScheme: sideways/'");
    assert!(!broken.status.success());
    says(&broken, "your edit is kept in");
}
