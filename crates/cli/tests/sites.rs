//! Sites as network namespaces: each with its own address on a shared WAN, a firewall that lets in
//! only the peer port, a gateway, and real programs (nginx, curl, iperf3, redis) as services and
//! clients. These need root; see `support::sites::can_run` for when they skip.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use clusterlink_testbed::netns::{Site, Wan};
use support::manifests::{allow_all, export, import, peer};
use support::sites::{
    Conversation, EchoService, PEER_PORT, SiteBed, can_run, open_echoing, open_fds, reaches, talk,
};
use support::{Exchange, GatewayProcess, eventually, metric, metric_with, reachable, stdout};

/// Convergence that should take well under this; generous for a loaded 2-core machine.
const CONVERGE: Duration = Duration::from_secs(15);
/// Services inside a site use fixed ports: each site is a namespace of its own, so nothing else
/// can hold them.
const SERVICE_PORT: u16 = 8080;
/// Clients (curl, iperf3, redis) run under `timeout` with this, so a stalled tunnel fails the test
/// instead of hanging it.
const TIME_LIMIT: [&str; 2] = ["--signal=KILL", "120"];
/// Where the importing site's clients reach an import (its gateway's loopback).
const IMPORT_PORT: u16 = 9000;

fn served_by(name: &str) -> Exchange {
    Exchange::Served {
        backend: name.to_string(),
    }
}

/// Gateways for `servers` and `client`; the client knows every server as a peer, and every
/// gateway allows everything (so each test decides only what it is about).
fn start_linked(
    bed: &SiteBed,
    servers: &[&str],
    client: &str,
) -> (Vec<GatewayProcess>, GatewayProcess) {
    let client_gw = bed.start(client);
    client_gw.apply(&allow_all("allow-all"));
    let server_gws = servers
        .iter()
        .map(|name| {
            let gw = bed.start(name);
            gw.apply(&allow_all("allow-all"));
            client_gw.apply(&peer(name, &gw));
            gw
        })
        .collect();
    (server_gws, client_gw)
}

/// Each of `servers` exports `name` (a service on `port` in its site); `client` imports it from
/// all of them on [`IMPORT_PORT`] + `offset`.
fn export_and_import(
    servers: &[(&str, &GatewayProcess)],
    client: &GatewayProcess,
    name: &str,
    port: u16,
    scheme: &str,
    offset: u16,
) -> u16 {
    for (_, gw) in servers {
        gw.apply(&export(name, port));
    }
    let import_port = IMPORT_PORT + offset;
    let peers: Vec<&str> = servers.iter().map(|(n, _)| *n).collect();
    client.apply(&import(name, import_port, &peers, scheme));
    client.wait_listening(name);
    import_port
}

/// A program running inside a site until dropped.
struct SiteProcess(std::process::Child);

impl SiteProcess {
    /// Starts `args` in `site` and waits until `port` on the site's loopback accepts.
    fn start(site: &Site, args: &[&str], port: u16, log: &Path) -> SiteProcess {
        let child = site
            .command(args[0])
            .args(&args[1..])
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", args[0]));
        let process = SiteProcess(child);
        let local: SocketAddr = ([127, 0, 0, 1], port).into();
        assert!(
            eventually(CONVERGE, || reaches(site, local)),
            "{} did not start listening on {port}: {}",
            args[0],
            std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
        );
        process
    }
}

impl Drop for SiteProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_service_inside_a_site_is_reached_from_another_site_only_through_clusterlink() {
    if !can_run(
        "a_service_inside_a_site_is_reached_from_another_site_only_through_clusterlink",
        &["nginx", "curl"],
    ) {
        return;
    }
    let bed = SiteBed::new(&["web", "office"]);
    let (servers, office) = start_linked(&bed, &["web"], "office");
    let (web_site, office_site) = (bed.site("web"), bed.site("office"));

    // nginx in the web site, on every address of the site, serving a 4 MiB file.
    let dir = bed.fabric.root().join("nginx");
    let conf = support::sites::nginx_config(&dir, SERVICE_PORT);
    let page: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("www/data.bin"), &page).unwrap();
    let _nginx = SiteProcess::start(
        web_site,
        &[
            "nginx",
            "-c",
            conf.to_str().unwrap(),
            "-p",
            dir.to_str().unwrap(),
        ],
        SERVICE_PORT,
        &dir.join("nginx.out"),
    );

    // The site's edge: nginx answers on the web site's WAN address from inside the site, but not
    // from the office; only the gateway's peer port gets through.
    let nginx_on_wan = SocketAddr::from((web_site.address, SERVICE_PORT));
    assert!(reaches(web_site, nginx_on_wan));
    assert!(
        !reaches(office_site, nginx_on_wan),
        "the web site's firewall let a service through"
    );
    assert!(reaches(
        office_site,
        SocketAddr::from((web_site.address, PEER_PORT))
    ));

    let port = export_and_import(
        &[("web", &servers[0])],
        &office,
        "www",
        SERVICE_PORT,
        "round-robin",
        0,
    );
    let fetched = dir.join("fetched.bin");
    let url = format!("http://127.0.0.1:{port}/data.bin");
    let o = office_site
        .command("timeout")
        .args(TIME_LIMIT)
        .arg("curl")
        .args([
            "-sS",
            "--fail",
            "-o",
            fetched.to_str().unwrap(),
            "-w",
            "%{http_code} %{size_download}",
            &url,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "curl: {}", support::stderr(&o));
    assert_eq!(stdout(&o), format!("200 {}", page.len()));
    assert!(
        std::fs::read(&fetched).unwrap() == page,
        "the page arrived altered"
    );

    // Several requests on one kept-alive connection, and a 404 passed through as it is.
    let missing = format!("http://127.0.0.1:{port}/missing");
    let o = office_site
        .command("timeout")
        .args(TIME_LIMIT)
        .arg("curl")
        .args(["-s", "-w", "%{http_code} %{num_connects}\n"])
        .args(["-o", "/dev/null", &url, "-o", "/dev/null", &url])
        .args(["-o", "/dev/null", &missing])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&o),
        "200 1\n200 0\n404 0\n",
        "{}",
        support::stderr(&o)
    );
}

#[test]
fn iperf3_runs_across_sites_both_ways() {
    if !can_run("iperf3_runs_across_sites_both_ways", &["iperf3"]) {
        return;
    }
    let bed = SiteBed::new(&["lab", "office"]);
    let (servers, office) = start_linked(&bed, &["lab"], "office");
    let _server = SiteProcess::start(
        bed.site("lab"),
        &["iperf3", "--server", "--port", &SERVICE_PORT.to_string()],
        SERVICE_PORT,
        &bed.fabric.root().join("iperf3.out"),
    );
    let port = export_and_import(
        &[("lab", &servers[0])],
        &office,
        "iperf",
        SERVICE_PORT,
        "round-robin",
        0,
    );
    for reverse in [false, true] {
        let mut cmd = bed.site("office").command("timeout");
        cmd.args(TIME_LIMIT).arg("iperf3");
        cmd.args([
            "--client",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--time",
            "2",
            "--parallel",
            "2",
            "--json",
        ]);
        if reverse {
            cmd.arg("--reverse");
        }
        let o = cmd.output().unwrap();
        let report: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("iperf3 printed no JSON ({e}): {}", support::stderr(&o)));
        assert!(
            o.status.success() && report.get("error").is_none(),
            "iperf3: {report}"
        );
        let received = &report["end"]["sum_received"];
        let bytes = received["bytes"].as_f64().unwrap();
        assert!(bytes > 0.0, "nothing arrived: {received}");
        eprintln!(
            "iperf3 across sites{}: {:.2} Gbit/s, {bytes} bytes",
            if reverse { " (reverse)" } else { "" },
            received["bits_per_second"].as_f64().unwrap() / 1e9
        );
    }
}

#[test]
fn redis_benchmark_across_sites_reports_no_errors() {
    if !can_run(
        "redis_across_sites",
        &["redis-server", "redis-benchmark", "redis-cli"],
    ) {
        return;
    }
    let bed = SiteBed::new(&["db", "app"]);
    let (servers, app) = start_linked(&bed, &["db"], "app");
    let _redis = SiteProcess::start(
        bed.site("db"),
        &[
            "redis-server",
            "--port",
            &SERVICE_PORT.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        SERVICE_PORT,
        &bed.fabric.root().join("redis.out"),
    );
    let port = export_and_import(
        &[("db", &servers[0])],
        &app,
        "cache",
        SERVICE_PORT,
        "round-robin",
        0,
    )
    .to_string();
    let app_site = bed.site("app");
    let cli = |args: &[&str]| {
        let o = app_site
            .command("timeout")
            .args(TIME_LIMIT)
            .arg("redis-cli")
            .args(["-p", &port])
            .args(args)
            .output()
            .unwrap();
        stdout(&o).trim().to_string()
    };
    assert_eq!(cli(&["set", "greeting", "hello from db"]), "OK");
    assert_eq!(cli(&["get", "greeting"]), "hello from db");

    let o = app_site
        .command("timeout")
        .args(TIME_LIMIT)
        .arg("redis-benchmark")
        .args([
            "-p",
            &port,
            "-n",
            "20000",
            "-c",
            "20",
            "-t",
            "set,get,incr,lpush",
            "--csv",
        ])
        .output()
        .unwrap();
    let (out, err) = (stdout(&o), support::stderr(&o));
    assert!(o.status.success(), "redis-benchmark failed: {out}{err}");
    assert!(
        !format!("{out}{err}").to_lowercase().contains("error"),
        "redis-benchmark reported errors: {out}{err}"
    );
    let rows: Vec<(String, f64)> = out
        .lines()
        .skip(1) // the header
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(',').map(|f| f.trim_matches('"')).collect();
            Some((fields.first()?.to_string(), fields.get(1)?.parse().ok()?))
        })
        .collect();
    assert_eq!(rows.len(), 4, "one row per command: {out}");
    for (test, rps) in &rows {
        assert!(*rps > 0.0, "{test}: {rps} requests/s");
        eprintln!("redis-benchmark across sites: {test} {rps:.0} requests/s");
    }
}

/// Deterministic bytes for bulk transfers: `block` with its index in the first 8 bytes, so a
/// reordered or repeated block changes the checksum.
fn bulk_block(template: &[u8], index: u64) -> Vec<u8> {
    let mut block = template.to_vec();
    block[..8].copy_from_slice(&index.to_le_bytes());
    block
}

fn sha256() -> aws_lc_rs::digest::Context {
    aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256)
}

fn hex(digest: aws_lc_rs::digest::Digest) -> String {
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_gibibyte_arrives_intact_and_the_reply_after_a_half_close_arrives_whole() {
    if !can_run(
        "a_gibibyte_arrives_intact_and_the_reply_after_a_half_close_arrives_whole",
        &[],
    ) {
        return;
    }
    const BLOCK: usize = 1 << 20;
    const BLOCKS: u64 = 1024; // 1 GiB
    const REPLY_BLOCKS: u64 = 32;
    let bed = SiteBed::new(&["store", "office"]);
    let (servers, office) = start_linked(&bed, &["store"], "office");
    let template: Vec<u8> = (0..BLOCK as u32)
        .map(|i| (i.wrapping_mul(2246822519) >> 11) as u8)
        .collect();

    // The receiver, inside the store site: hashes everything until EOF, then answers with what it
    // counted and hashed, followed by a reply of its own.
    let listener = bed
        .site("store")
        .bind(([0, 0, 0, 0], SERVICE_PORT).into())
        .unwrap();
    let receiver = {
        let template = template.clone();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let (mut hash, mut count, mut buf) = (sha256(), 0u64, vec![0u8; BLOCK]);
            loop {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                count += n as u64;
            }
            conn.write_all(format!("{count} {}\n", hex(hash.finish())).as_bytes())
                .unwrap();
            for i in 0..REPLY_BLOCKS {
                conn.write_all(&bulk_block(&template, u64::MAX - i))
                    .unwrap();
            }
        })
    };
    let port = export_and_import(
        &[("store", &servers[0])],
        &office,
        "bulk",
        SERVICE_PORT,
        "round-robin",
        0,
    );

    let conn = bed
        .site("office")
        .connect(([127, 0, 0, 1], port).into(), CONVERGE)
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let started = Instant::now();
    let mut writer = conn.try_clone().unwrap();
    let sent = {
        let template = template.clone();
        std::thread::spawn(move || {
            let mut hash = sha256();
            for i in 0..BLOCKS {
                let block = bulk_block(&template, i);
                hash.update(&block);
                writer.write_all(&block).unwrap();
            }
            writer.shutdown(std::net::Shutdown::Write).unwrap();
            hex(hash.finish())
        })
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let took = started.elapsed();
    let sent = sent.join().unwrap();
    assert_eq!(
        line.trim(),
        format!("{} {sent}", BLOCKS * BLOCK as u64),
        "the far end counted or hashed something else"
    );

    let mut expected = sha256();
    for i in 0..REPLY_BLOCKS {
        expected.update(&bulk_block(&template, u64::MAX - i));
    }
    let mut reply = Vec::new();
    reader.read_to_end(&mut reply).unwrap();
    assert_eq!(
        reply.len() as u64,
        REPLY_BLOCKS * BLOCK as u64,
        "the reply after the half-close was cut short"
    );
    let mut got = sha256();
    got.update(&reply);
    assert_eq!(hex(got.finish()), hex(expected.finish()));
    receiver.join().unwrap();
    eprintln!(
        "1 GiB across sites in {took:.2?} ({:.2} Gbit/s), sha256 {sent} at both ends",
        (BLOCKS * BLOCK as u64 * 8) as f64 / took.as_secs_f64() / 1e9
    );
}

#[test]
fn a_cut_link_marks_its_peer_unreachable_the_other_source_serves_and_the_site_returns() {
    if !can_run(
        "a_cut_link_marks_its_peer_unreachable_the_other_source_serves_and_the_site_returns",
        &[],
    ) {
        return;
    }
    let bed = SiteBed::new(&["east", "west", "office"]);
    let (servers, office) = start_linked(&bed, &["east", "west"], "office");
    let _services = [
        EchoService::start(bed.site("east"), "east"),
        EchoService::start(bed.site("west"), "west"),
    ];
    let east_port = _services[0].port;
    let west_port = _services[1].port;
    // Each site's service is on its own port; one import with both as sources.
    servers[0].apply(&export("svc", east_port));
    servers[1].apply(&export("svc", west_port));
    office.apply(&import(
        "svc",
        IMPORT_PORT,
        &["east", "west"],
        "round-robin",
    ));
    office.wait_listening("svc");
    let office_site = bed.site("office");
    assert!(eventually(CONVERGE, || reachable(&office, "east")
        == "True"
        && reachable(&office, "west") == "True"));
    let both = |n: usize| {
        let served: std::collections::HashSet<Exchange> = (0..n)
            .map(|_| talk(office_site, IMPORT_PORT, b"ping"))
            .collect();
        served
    };
    assert_eq!(
        both(6),
        [served_by("east"), served_by("west")].into_iter().collect()
    );

    bed.site("east").cut().unwrap();
    let cut = Instant::now();
    assert!(
        eventually(CONVERGE, || reachable(&office, "east") == "False"),
        "{}",
        office.log()
    );
    let detected = cut.elapsed();
    for _ in 0..10 {
        assert_eq!(talk(office_site, IMPORT_PORT, b"ping"), served_by("west"));
    }

    bed.site("east").restore().unwrap();
    let restored = Instant::now();
    assert!(
        eventually(CONVERGE, || reachable(&office, "east") == "True"),
        "{}",
        office.log()
    );
    let reachable_again = restored.elapsed();
    assert!(eventually(CONVERGE, || talk(
        office_site,
        IMPORT_PORT,
        b"ping"
    ) == served_by("east")));
    let used_again = restored.elapsed();
    eprintln!(
        "cut link: unreachable after {detected:.2?}; restored: reachable after {reachable_again:.2?}, serving after {used_again:.2?}"
    );
}

#[test]
fn a_gateway_killed_mid_transfer_resets_the_client_and_comes_back_with_its_configuration() {
    if !can_run(
        "a_gateway_killed_mid_transfer_resets_the_client_and_comes_back_with_its_configuration",
        &[],
    ) {
        return;
    }
    let bed = SiteBed::new(&["east", "west", "office"]);
    let (mut servers, office) = start_linked(&bed, &["east", "west"], "office");
    let services = [
        EchoService::start(bed.site("east"), "east"),
        EchoService::start(bed.site("west"), "west"),
    ];
    servers[0].apply(&export("svc", services[0].port));
    servers[1].apply(&export("svc", services[1].port));
    // static: east first while it is there.
    office.apply(&import("svc", IMPORT_PORT, &["east", "west"], "static"));
    office.wait_listening("svc");
    let office_site = bed.site("office");
    assert!(eventually(CONVERGE, || talk(
        office_site,
        IMPORT_PORT,
        b"ping"
    ) == served_by("east")));
    // What the gateway holds, without the status it recomputes at start-up.
    let configuration = |gw: &GatewayProcess| {
        ["peers", "exports", "imports", "accesspolicies"].map(|kind| {
            let mut list: serde_json::Value =
                serde_json::from_str(&gw.gwctl_ok(&["get", kind, "-o", "json"])).unwrap();
            for item in list["items"].as_array_mut().into_iter().flatten() {
                item.as_object_mut().unwrap().remove("status");
            }
            list
        })
    };
    let before = configuration(&servers[0]);

    // A transfer in full flow, on one thread so that the first error the socket reports is seen
    // (with a reader and a writer, only one of them gets the reset; the other sees a plain EOF).
    let transfer = Conversation::open(office_site, IMPORT_PORT);
    assert_eq!(transfer.backend, "east");
    let echoed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let flowing = {
        let (mut conn, echoed) = (transfer.conn, echoed.clone());
        std::thread::spawn(move || -> (std::io::Error, Instant) {
            let chunk = vec![7u8; 64 * 1024];
            let mut back = vec![0u8; chunk.len()];
            loop {
                if let Err(e) = conn
                    .write_all(&chunk)
                    .and_then(|()| conn.read_exact(&mut back))
                {
                    return (e, Instant::now());
                }
                echoed.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let flowed = eventually(CONVERGE, || {
        flowing.is_finished() || echoed.load(std::sync::atomic::Ordering::Relaxed) >= 64 << 20
    });
    if !flowed || flowing.is_finished() {
        let ended = flowing
            .is_finished()
            .then(|| flowing.join().map(|(e, _)| e));
        panic!(
            "the transfer stalled after {} bytes: {ended:?}",
            echoed.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    let killed = Instant::now();
    servers[0].kill9();
    let (error, seen) = flowing.join().unwrap();
    let seen_after = seen - killed;
    assert_eq!(
        error.kind(),
        std::io::ErrorKind::ConnectionReset,
        "the client saw {error}, not a reset:\n{}",
        office.log()
    );
    let echoed = echoed.load(std::sync::atomic::Ordering::Relaxed);

    // New connections go to the other source at once.
    for _ in 0..5 {
        assert_eq!(talk(office_site, IMPORT_PORT, b"ping"), served_by("west"));
    }

    // The same gateway again, on the same store: everything it held is back.
    servers[0] = bed.start("east");
    assert_eq!(configuration(&servers[0]), before);
    let restarted = Instant::now();
    assert!(eventually(CONVERGE, || talk(
        office_site,
        IMPORT_PORT,
        b"ping"
    ) == served_by("east")));
    eprintln!(
        "kill -9 mid-transfer: client reset {seen_after:.2?} after the kill (after {} MiB echoed); restarted gateway serving again after {:.2?}",
        echoed >> 20,
        restarted.elapsed()
    );
}

#[test]
fn removing_an_export_or_a_peer_refuses_new_connections_with_the_reason_and_disturbs_nothing_else()
{
    if !can_run(
        "removing_an_export_or_a_peer_refuses_new_connections_with_the_reason_and_disturbs_nothing_else",
        &[],
    ) {
        return;
    }
    let bed = SiteBed::new(&["east", "west", "office"]);
    let (servers, office) = start_linked(&bed, &["east", "west"], "office");
    let (east, west) = (&servers[0], &servers[1]);
    let one = EchoService::start(bed.site("east"), "east/one");
    let two = EchoService::start(bed.site("east"), "east/two");
    let three = EchoService::start(bed.site("west"), "west/three");
    east.apply(&export("one", one.port));
    east.apply(&export("two", two.port));
    west.apply(&export("three", three.port));
    for (i, (name, peer)) in [("one", "east"), ("two", "east"), ("three", "west")]
        .into_iter()
        .enumerate()
    {
        office.apply(&import(
            name,
            IMPORT_PORT + i as u16,
            &[peer],
            "round-robin",
        ));
        office.wait_listening(name);
    }
    let office_site = bed.site("office");
    let [one_port, two_port, three_port] = [IMPORT_PORT, IMPORT_PORT + 1, IMPORT_PORT + 2];
    let mut open_two = Conversation::open(office_site, two_port);
    let mut open_three = Conversation::open(office_site, three_port);
    let open_one = Conversation::open(office_site, one_port);
    assert_eq!(
        (open_two.backend.as_str(), open_three.backend.as_str()),
        ("east/two", "west/three")
    );

    // The export goes: its import is refused for the reason east gave.
    // Counted by each gateway under its own side, naming who refused.
    let refused = |gw: &GatewayProcess, side: &str, by: &str, reason: &str| {
        metric_with(
            gw,
            "clusterlink_connections_refused_total",
            &[("side", side), ("refused_by", by), ("reason", reason)],
        )
    };
    let no_such_export = refused(&office, "egress", "peer", "NoSuchExport");
    east.gwctl_ok(&["delete", "export", "one"]);
    assert!(eventually(CONVERGE, || talk(
        office_site,
        one_port,
        b"ping"
    ) == Exchange::Reset));
    assert!(refused(&office, "egress", "peer", "NoSuchExport") > no_such_export);
    assert!(refused(east, "ingress", "local", "NoSuchExport") >= 1.0);
    assert!(
        office.log().contains("has no export default/one"),
        "{}",
        office.log()
    );
    drop(open_one);
    // Everything else goes on: the open conversations, and new ones.
    assert!(open_two.echoes(b"still here") && open_three.echoes(b"still here"));
    assert_eq!(talk(office_site, two_port, b"ping"), served_by("east/two"));
    assert_eq!(
        talk(office_site, three_port, b"ping"),
        served_by("west/three")
    );

    // The Peer goes: imports from it are refused, saying why; the other peer is untouched.
    office.gwctl_ok(&["delete", "peer", "east"]);
    assert!(eventually(CONVERGE, || talk(
        office_site,
        two_port,
        b"ping"
    ) == Exchange::Reset));
    assert!(
        office.log().contains("no Peer \"east\" is defined"),
        "{}",
        office.log()
    );
    assert!(refused(&office, "egress", "local", "AllSourcesFailed") >= 1.0);
    assert!(open_three.echoes(b"still here"));
    assert_eq!(
        talk(office_site, three_port, b"ping"),
        served_by("west/three")
    );
    assert!(
        !open_two.echoes(b"gone?"),
        "a tunnel from a deleted peer stayed open"
    );
}

#[test]
fn a_thousand_concurrent_connections_leave_no_descriptors_or_tasks_behind() {
    if !can_run(
        "a_thousand_concurrent_connections_leave_no_descriptors_or_tasks_behind",
        &[],
    ) {
        return;
    }
    const CONNECTIONS: usize = 1000;
    // Concurrent connection attempts: enough to overlap, few enough for the backlogs.
    const CONNECTING: usize = 64;
    clusterlink_dataplane::process::raise_open_file_limit();
    let bed = SiteBed::new(&["east", "office"]);
    let (servers, office) = start_linked(&bed, &["east"], "office");
    let east = &servers[0];
    let service = EchoService::start(bed.site("east"), "east");
    let port = export_and_import(
        &[("east", east)],
        &office,
        "svc",
        service.port,
        "round-robin",
        0,
    );
    let office_site = bed.site("office");
    assert_eq!(talk(office_site, port, b"warm up"), served_by("east"));

    let active = |gw: &GatewayProcess, side: &str| {
        metric(
            gw,
            &format!("clusterlink_connections_active{{side=\"{side}\"}}"),
        )
    };
    let tasks = |gw: &GatewayProcess| metric(gw, "clusterlink_runtime_alive_tasks");
    // Peer connections kept between tunnels are no leak: office keeps each (a descriptor), and
    // east waits on each for the next request (a descriptor and a task). Both are bounded.
    let idle = |gw: &GatewayProcess, side: &str| {
        metric(
            gw,
            &format!("clusterlink_peer_connections_idle{{side=\"{side}\"}}"),
        ) as usize
    };
    let at_rest = || active(&office, "egress") == 0.0 && active(east, "ingress") == 0.0;
    assert!(eventually(CONVERGE, at_rest));
    let sample = || loop {
        // The gauges and the descriptor count are read moments apart, and warm connections may
        // expire in between: a sample counts only if the gauges held still around it.
        let (kept, waiting) = (idle(&office, "egress"), idle(east, "ingress"));
        let fds = (open_fds(&office), open_fds(east));
        let task_counts = (tasks(&office), tasks(east));
        if (kept, waiting) == (idle(&office, "egress"), idle(east, "ingress")) {
            break [
                (fds.0.saturating_sub(kept), task_counts.0),
                (
                    fds.1.saturating_sub(waiting),
                    task_counts.1 - waiting as f64,
                ),
            ];
        }
    };
    // Health probes come and go every 0.5 s, each with a task and a socket: the level at rest is
    // the lowest seen over a few probe rounds.
    let mut before = sample();
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(100));
        for (low, now) in before.iter_mut().zip(sample()) {
            *low = (low.0.min(now.0), low.1.min(now.1));
        }
    }
    assert!(
        before.iter().all(|(_, tasks)| *tasks > 0.0),
        "no task gauge: {before:?}"
    );

    // All open at once, each greeted and echoing, from inside the office site.
    let conns = open_echoing(office_site, port, CONNECTIONS, CONNECTING, "east");
    assert_eq!(conns.len(), CONNECTIONS);
    let peak = [active(&office, "egress"), active(east, "ingress")];
    let peak_fds = [open_fds(&office), open_fds(east)];
    assert_eq!(
        peak, [CONNECTIONS as f64; 2],
        "every connection is a live tunnel on both sides"
    );
    drop(conns);

    assert!(eventually(CONVERGE, at_rest), "tunnels stayed open");
    let kept = idle(&office, "egress");
    assert!(
        (1..=64).contains(&kept),
        "finished tunnels leave a bounded set of warm connections, not {kept}"
    );
    let after = sample;
    assert!(
        eventually(CONVERGE, || after() == before),
        "left behind: before {before:?}, after {:?}",
        after()
    );
    eprintln!(
        "{CONNECTIONS} connections: (descriptors, tasks) office {:?} -> peak {} -> {:?}; east {:?} -> peak {} -> {:?}",
        before[0],
        peak_fds[0],
        after()[0],
        before[1],
        peak_fds[1],
        after()[1]
    );
}

/// Set in the child process that [`an_interrupted_test_bed_leaves_nothing_behind`] kills.
const HELPER: &str = "CLUSTERLINK_SITES_HELPER";

#[test]
fn an_interrupted_test_bed_leaves_nothing_behind() {
    if std::env::var_os(HELPER).is_some() {
        // The helper: a test bed with a process in a site, then wait to be killed.
        let wan = Wan::create(&["left", "behind"], &[PEER_PORT]).unwrap();
        let mut sleeper = wan.sites()[0].command("sleep").arg("600").spawn().unwrap();
        println!("HELPER {} {}", sleeper.id(), wan.namespaces().join(" "));
        std::io::stdout().flush().unwrap();
        std::thread::sleep(Duration::from_secs(600));
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        return;
    }
    if !can_run("an_interrupted_test_bed_leaves_nothing_behind", &["sleep"]) {
        return;
    }
    let listed = || {
        let o = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap();
        stdout(&o)
    };
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or_default()
                .trim_start()
                .starts_with('Z')
        })
    };

    // Dropped: every namespace and process goes with it.
    let wan = Wan::create(&["dropped"], &[PEER_PORT]).unwrap();
    let namespaces = wan.namespaces();
    let mut sleeper = wan.sites()[0].command("sleep").arg("600").spawn().unwrap();
    assert!(namespaces.iter().all(|n| listed().contains(n.as_str())));
    drop(wan);
    assert!(
        sleeper.try_wait().unwrap().is_some(),
        "a process outlived its site"
    );
    assert!(
        !namespaces.iter().any(|n| listed().contains(n.as_str())),
        "{}",
        listed()
    );

    // Killed: the processes die with it, and the next test bed sweeps its namespaces away.
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "an_interrupted_test_bed_leaves_nothing_behind",
            "--exact",
            "--nocapture",
        ])
        .env(HELPER, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = BufReader::new(helper.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("HELPER "))
        .expect("the helper's test bed");
    let mut fields = line.split_whitespace().skip(1);
    let sleeper: u32 = fields.next().unwrap().parse().unwrap();
    let namespaces: Vec<String> = fields.map(String::from).collect();
    assert_eq!(namespaces.len(), 3);
    assert!(alive(sleeper));
    helper.kill().unwrap();
    helper.wait().unwrap();
    assert!(
        eventually(CONVERGE, || !alive(sleeper)),
        "a site's process outlived its killed test"
    );
    let _next = Wan::create(&["next"], &[PEER_PORT]).unwrap();
    assert!(
        !namespaces.iter().any(|n| listed().contains(n.as_str())),
        "{}",
        listed()
    );
}

#[test]
fn an_export_keeps_serving_after_more_new_connections_than_its_site_has_ports() {
    if !can_run(
        "an_export_keeps_serving_after_more_new_connections_than_its_site_has_ports",
        &[],
    ) {
        return;
    }
    let bed = SiteBed::new(&["busy", "caller"]);
    // 64 ephemeral ports in the exporting site. The gateway closes each backend connection
    // first, so each leaves a TIME_WAIT for a minute. A port bound before connecting cannot be
    // bound again in that time; a connect that picks its own port may reuse one whose TIME_WAIT
    // is over a second old (the kernel's `tcp_tw_reuse` on loopback).
    // A network sysctl opened from inside the site is the site's own.
    bed.site("busy")
        .enter(|| std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "40000 40063"))
        .unwrap()
        .unwrap();
    let range = bed
        .site("busy")
        .enter(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range"))
        .unwrap()
        .unwrap();
    assert_eq!(
        range.split_whitespace().collect::<Vec<_>>(),
        ["40000", "40063"]
    );
    let host = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    assert_ne!(host, range, "the host's own range must not change");
    let (servers, caller) = start_linked(&bed, &["busy"], "caller");
    let echo = EchoService::start(bed.site("busy"), "busy");
    let port = export_and_import(
        &[("busy", &servers[0])],
        &caller,
        "echo",
        echo.port,
        "round-robin",
        0,
    );
    for burst in 0..3 {
        for i in 0..50 {
            let answer = talk(bed.site("caller"), port, b"hello");
            assert_eq!(answer, served_by("busy"), "burst {burst}, connection {i}");
        }
        // Not a wait for readiness: the age a TIME_WAIT needs before its port is reused.
        std::thread::sleep(TIME_WAIT_REUSE);
    }
}

/// Longer than the kernel's `net.ipv4.tcp_tw_reuse_delay` (1 s by default).
const TIME_WAIT_REUSE: Duration = Duration::from_millis(1500);
