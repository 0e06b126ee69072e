//! Attacks on the real binaries, each asserting the behaviour that closed it: a web page driving
//! the management API, floods of strangers on the peer port, hostile bodies, a full disk,
//! forwarding loops, exports of local admin APIs, a silent server under gwctl, and unusable
//! certificates at start-up. Bounds on time are generous: the machines are shared and slow.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::hostile;
use support::manifests::{allow_all, export, import, peer};
use support::{
    Backend, CL_GATEWAY, CLUSTERLINK, Exchange, Fabric, GWCTL, GatewayProcess, connect_from,
    eventually, exchange, free_port, http_request, metric, metric_with, reachable, run, stderr,
    stdout,
};

const CONVERGE: Duration = Duration::from_secs(10);
const EXPORTS: &str = "/apis/clusterlink.net/v1alpha1/namespaces/default/exports";

/// One HTTP/1.1 request with exactly these headers; the status and body of the answer.
fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    http_request(port, method, path, headers, body.as_bytes())
}

fn export_json(name: &str, port: u16) -> String {
    format!(
        r#"{{"apiVersion":"clusterlink.net/v1alpha1","kind":"Export","metadata":{{"name":"{name}","namespace":"default"}},"spec":{{"host":"127.0.0.1","port":{port}}}}}"#
    )
}

fn served() -> Exchange {
    Exchange::Served {
        backend: "server1".into(),
    }
}

/// `client` learns `server` as server1, allows egress, and imports `name` from it on a fresh
/// port, which is returned once it listens.
fn import_from_server1(client: &GatewayProcess, server: &GatewayProcess, name: &str) -> u16 {
    let port = free_port();
    client.apply(&format!(
        "{}{}{}",
        peer("server1", server),
        allow_all("allow"),
        import(name, port, &["server1"], "static")
    ));
    client.wait_listening(name);
    port
}

/// server1 exports a backend, client1 imports it, both allow: a working tunnel on the returned
/// port.
fn tunnel() -> (Fabric, GatewayProcess, GatewayProcess, u16) {
    let fabric = Fabric::new(&["server1", "client1"]);
    let server = fabric.start("server1");
    let client = fabric.start("client1");
    let backend = Backend::start("server1").port;
    server.apply(&format!("{}{}", export("svc", backend), allow_all("allow")));
    let port = import_from_server1(&client, &server, "svc");
    assert!(
        eventually(CONVERGE, || exchange(port, b"hi") == served()),
        "{}",
        client.log()
    );
    (fabric, server, client, port)
}

/// The gateway of `peer` as it ships: without `--allow-loopback-backends`, which the harness
/// gives every other gateway for its loopback test services.
fn as_shipped(fabric: &Fabric, peer: &str) -> GatewayProcess {
    GatewayProcess::spawn_exactly(
        None,
        fabric.root(),
        &[
            "--peer",
            peer,
            "--management-address",
            "127.0.0.1:0",
            "--peer-address",
            "127.0.0.1:0",
        ],
    )
}

fn peer_port(gw: &GatewayProcess) -> u16 {
    gw.peer_address.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// Whether the far end closes `s` within `limit` (end of file, or a reset), whatever it sends
/// first. With no time left it still looks once: a connection already closed says so at once.
fn closed_within(mut s: &TcpStream, limit: Duration) -> bool {
    let end = std::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) if left.is_zero() => return false,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

#[test]
fn a_web_page_cannot_drive_the_management_api() {
    let f = Fabric::new(&["server1"]);
    let gw = f.start("server1");
    let port = gw.port();
    let ssh = export_json("ssh", 22);
    let host = ("Host", "127.0.0.1");

    // A form or a fetch without preflight can send text/plain to loopback.
    let (code, body) = request(
        port,
        "POST",
        EXPORTS,
        &[host, ("Content-Type", "text/plain")],
        &ssh,
    );
    assert_eq!(code, 415, "{body}");
    assert!(body.contains("application/json"), "{body}");
    // A page of another origin, whatever it claims as content type.
    let json = ("Content-Type", "application/json");
    for page in [
        ("Origin", "http://attacker.example"),
        ("Sec-Fetch-Site", "cross-site"),
    ] {
        let (code, body) = request(port, "POST", EXPORTS, &[host, json, page], &ssh);
        assert_eq!(code, 403, "{page:?}: {body}");
    }
    // DNS rebinding: the attacker's name, now pointing at 127.0.0.1, reads nothing.
    let rebound = format!("attacker.example:{port}");
    let (code, body) = request(port, "GET", EXPORTS, &[("Host", &rebound)], "");
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains("items"), "{body}");

    assert!(
        !gw.gwctl_ok(&["get", "exports", "-o", "json"])
            .contains("ssh")
    );
    // Command-line clients are unaffected.
    let (code, body) = request(port, "POST", EXPORTS, &[host, json], &ssh);
    assert_eq!(code, 201, "{body}");
    gw.gwctl_ok(&[
        "create",
        "export",
        "--name",
        "web",
        "--host",
        "127.0.0.1",
        "--port",
        "80",
    ]);
}

/// Far longer than a tunnel takes to open on loopback (milliseconds), far shorter than the
/// 10 s a handshake slot is held by a stranger who sends nothing.
const UNDER_ATTACK: Duration = Duration::from_secs(5);

#[test]
fn silent_strangers_on_the_peer_port_do_not_stall_tunnels() {
    let fabric = Fabric::new(&["server1", "client1"]);
    let server = fabric.start("server1");
    let backend = Backend::start("server1").port;
    server.apply(&format!("{}{}", export("svc", backend), allow_all("allow")));
    clusterlink_dataplane::process::raise_open_file_limit();
    // Another host (127.0.0.2) opens connections and sends nothing, well past the 1,024
    // unauthenticated slots of the whole port.
    let target = peer_port(&server);
    let silent: Vec<TcpStream> = (0..1500)
        .filter_map(|_| connect_from("127.0.0.2", "127.0.0.1", target).ok())
        .collect();
    assert!(
        silent.len() > 1100,
        "only {} connections opened",
        silent.len()
    );
    // A gateway that starts now has no warm connection: its probes and every tunnel it opens
    // need a handshake on the flooded port, and they get one at once.
    let client = fabric.start("client1");
    let port = import_from_server1(&client, &server, "svc");
    assert!(eventually(UNDER_ATTACK, || reachable(&client, "server1") == "True"));
    assert!(eventually(UNDER_ATTACK, || exchange(port, b"hi") == served()));
    let exchanges: Vec<_> = (0..40)
        .map(|_| {
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                (exchange(port, b"hi"), started.elapsed())
            })
        })
        .collect();
    for e in exchanges {
        let (seen, took) = e.join().unwrap();
        assert_eq!(seen, served(), "{}", server.log());
        assert!(took < UNDER_ATTACK, "a tunnel took {took:?}");
    }
    // Refused cheaply and visibly: counted, and logged with a rate limit.
    let refused = metric(
        &server,
        "clusterlink_connections_unserved_total{listener=\"peer\",reason=\"SourceLimit\"}",
    );
    assert!(refused >= 1000.0, "{refused}");
    let log = server.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("connection closed unserved") && l.contains("SourceLimit"))
        .count();
    assert!((1..=3).contains(&lines), "{lines} log lines:\n{log}");
    drop(silent);
}

#[test]
fn deeply_nested_bodies_are_refused_at_once_while_tunnels_flow() {
    let (_f, server, _client, port) = tunnel();
    let management = server.port();
    let nested = format!("{}1{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    let attackers: Vec<_> = (0..2)
        .map(|_| {
            let body = nested.clone();
            std::thread::spawn(move || {
                request(
                    management,
                    "PUT",
                    &format!("{EXPORTS}/x"),
                    &[("Host", "127.0.0.1"), ("Content-Type", "application/json")],
                    &body,
                )
            })
        })
        .collect();
    assert_eq!(exchange(port, b"during"), served());
    for a in attackers {
        let (code, body) = a.join().unwrap();
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("nested deeper than 64"), "{body}");
    }
    // Repeated keys are refused too, rather than one of the values silently winning.
    let doubled = r#"{"apiVersion":"clusterlink.net/v1alpha1","kind":"Export","metadata":{"name":"x","namespace":"default"},"spec":{"port":80,"port":22}}"#;
    let (code, body) = request(
        management,
        "PUT",
        &format!("{EXPORTS}/x"),
        &[("Content-Type", "application/json")],
        doubled,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("duplicate key \\\"port\\\""), "{body}");
}

#[test]
fn management_connections_are_bounded_in_number_and_time() {
    let (_f, server, _client, port) = tunnel();
    let management = server.port();
    // Far more silent connections than one address may hold: the extra ones are closed at once,
    // well before the 10 s header timeout would close the others too.
    let silent: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(("127.0.0.1", management)).unwrap())
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let closed = silent
        .iter()
        .filter(|s| {
            closed_within(
                s,
                deadline.saturating_duration_since(std::time::Instant::now()),
            )
        })
        .count();
    assert!(closed >= 200, "only {closed} of 300 closed");
    // The peer port is unaffected.
    assert_eq!(exchange(port, b"hi"), served());
    drop(silent);
    // The server lets go of the dropped connections as it reads their ends; until then this
    // address is still at its bound and new connections are closed unserved.
    let served_again = || http_request(management, "GET", "/healthz", &[], b"").0 == 200;
    assert!(eventually(Duration::from_secs(10), || (0..3).all(|_| served_again())));

    // A silent connection and a stalled body end on their own: the first idle, the second with
    // 408 once the request took too long.
    let idle = std::thread::spawn(move || {
        // One request answered, then nothing: a kept-alive connection left idle.
        let mut s = TcpStream::connect(("127.0.0.1", management)).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        closed_within(&s, Duration::from_secs(60))
    });
    let mut stalled = TcpStream::connect(("127.0.0.1", management)).unwrap();
    stalled
        .write_all(b"PUT /apis/clusterlink.net/v1alpha1/namespaces/default/exports/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"apiVe")
        .unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut answer = String::new();
    let _ = stalled.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        idle.join().unwrap(),
        "an idle management connection was never closed"
    );
    let unserved = |reason: &str| {
        metric(
            &server,
            &format!(
                "clusterlink_connections_unserved_total{{listener=\"management\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert!(unserved("SourceLimit") + unserved("ListenerLimit") >= 200.0);
}

#[test]
fn tls_refusals_on_the_peer_port_are_logged_and_counted() {
    let f = Fabric::new(&["server1"]);
    let gw = f.start("server1");
    let mut s = TcpStream::connect(("127.0.0.1", peer_port(&gw))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(closed_within(&s, Duration::from_secs(30)), "{}", gw.log());
    assert!(eventually(CONVERGE, || metric(
        &gw,
        "clusterlink_connections_unserved_total{listener=\"peer\",reason=\"HandshakeRefused\"}"
    ) >= 1.0));
    // The count goes up just before the warning is written: wait for the line too.
    assert!(
        eventually(CONVERGE, || gw.log().contains("TLS handshake refused")),
        "{}",
        gw.log()
    );
}

#[test]
fn a_forwarding_loop_ends_at_the_hop_limit() {
    let fabric = Fabric::new(&["server1", "client1"]);
    let (a, b) = (fabric.start("server1"), fabric.start("client1"));
    let (x, y) = (free_port(), free_port());
    // b imports x from a; a exports x as its own import y; a imports y from b; b exports y as
    // its own import x. One client connection would chase itself around forever.
    a.apply(&format!(
        "{}{}{}{}",
        peer("client1", &b),
        allow_all("allow"),
        export("x", y),
        import("y", y, &["client1"], "static")
    ));
    b.apply(&format!(
        "{}{}{}{}",
        peer("server1", &a),
        allow_all("allow"),
        export("y", x),
        import("x", x, &["server1"], "static")
    ));
    a.wait_listening("y");
    b.wait_listening("x");
    assert_ne!(exchange(x, b"round and round"), served());
    let count = |series: &str| metric(&a, series) + metric(&b, series);
    assert!(
        eventually(CONVERGE, || {
            let refused = |gw| {
                metric_with(
                    gw,
                    "clusterlink_connections_refused_total",
                    &[("side", "ingress"), ("reason", "LoopDetected")],
                )
            };
            refused(&a) + refused(&b) >= 1.0
        }),
        "{}\n{}",
        a.log(),
        b.log()
    );
    let tunnels = count("clusterlink_connections_accepted_total{side=\"ingress\"}");
    assert!(
        tunnels <= 2.0 * 8.0 + 2.0,
        "{tunnels} tunnels for one connection"
    );
}

#[test]
fn an_export_of_another_gateways_loopback_admin_api_is_refused() {
    let fabric = Fabric::new(&["server1", "client1", "victim"]);
    let victim = fabric.start("victim");
    let server = as_shipped(&fabric, "server1");
    let client = fabric.start("client1");
    server.apply(&format!(
        "{}{}",
        export("admin", victim.port()),
        allow_all("allow")
    ));
    let port = import_from_server1(&client, &server, "admin");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(format!("POST {EXPORTS} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}", export_json("ssh", 22).len(), export_json("ssh", 22)).as_bytes());
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert!(
        eventually(CONVERGE, || server
            .log()
            .contains("--allow-loopback-backends")),
        "{}",
        server.log()
    );
    assert!(
        !victim
            .gwctl_ok(&["get", "exports", "-o", "json"])
            .contains("ssh")
    );
}

#[test]
fn gwctl_gives_up_on_a_silent_server_and_bounds_what_it_reads() {
    let dir = tempfile::tempdir().unwrap();
    // Accepted by the kernel, never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("http://{}", silent.local_addr().unwrap());
    let o = run(
        GWCTL,
        &[
            "--server",
            &server,
            "--request-timeout",
            "1",
            "get",
            "exports",
        ],
        dir.path(),
    );
    failed_saying(&o, "did not answer within 1s");
    let o = run(
        GWCTL,
        &["--server", &server, "apply", "-f", "/dev/zero"],
        dir.path(),
    );
    failed_saying(&o, "/dev/zero is larger than 64 MiB");
}

/// Asserts that a command failed and said `expected` on stderr.
fn failed_saying(o: &std::process::Output, expected: &str) {
    assert!(!o.status.success(), "it succeeded: {}", stderr(o));
    assert!(stderr(o).contains(expected), "{}", stderr(o));
}

#[test]
fn unusable_certificates_are_refused_before_anything_is_bound_or_created() {
    use clusterlink_pki::Validity;
    use clusterlink_pki::issue::FabricCa;
    let f = Fabric::new(&["server1"]);
    let root = f.root();
    assert!(
        run(CLUSTERLINK, &["create", "fabric", "--name", "other"], root)
            .status
            .success()
    );
    assert!(
        run(
            CLUSTERLINK,
            &[
                "create",
                "peer-cert",
                "--name",
                "server1",
                "--fabric",
                "other"
            ],
            root
        )
        .status
        .success()
    );
    let now = time::OffsetDateTime::now_utc();
    let expired = FabricCa::load(&f.fabric_dir())
        .unwrap()
        .issue_peer(
            "server1",
            Validity::between(now - time::Duration::days(2), now - time::Duration::days(1))
                .unwrap(),
        )
        .unwrap();
    std::fs::create_dir(root.join("expired")).unwrap();
    std::fs::write(root.join("expired/cert.pem"), expired.cert_pem).unwrap();
    std::fs::write(root.join("expired/key.pem"), expired.key_pem).unwrap();
    // server1's certificate with another peer's key.
    std::fs::create_dir(root.join("mixed")).unwrap();
    std::fs::copy(
        root.join("default_fabric/server1/cert.pem"),
        root.join("mixed/cert.pem"),
    )
    .unwrap();
    std::fs::copy(
        root.join("other/server1/key.pem"),
        root.join("mixed/key.pem"),
    )
    .unwrap();
    // A port held here: a gateway that bound before checking would fail on it instead.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let management = held.local_addr().unwrap().to_string();
    let ca = f.fabric_dir().join("cert.pem").display().to_string();
    for (dir, peer, expect) in [
        (
            "other/server1",
            "server1",
            "cannot be used with the fabric CA",
        ),
        // Its end as a date, not as Unix seconds.
        ("expired", "server1", "the certificate expired at 20"),
        ("mixed", "server1", "is not the private key of"),
        ("default_fabric/server1", "client1", "names \"server1\""),
    ] {
        let data = root.join(format!("data-{}", dir.replace('/', "-")));
        let o = run(
            CL_GATEWAY,
            &[
                "--peer",
                peer,
                "--ca",
                &ca,
                "--cert",
                &format!("{dir}/cert.pem"),
                "--key",
                &format!("{dir}/key.pem"),
                "--data-dir",
                data.to_str().unwrap(),
                "--management-address",
                &management,
                "--peer-address",
                "127.0.0.1:0",
            ],
            root,
        );
        let err = stderr(&o);
        assert!(!o.status.success(), "{dir}: started");
        assert!(err.contains(expect), "{dir}: {err}");
        assert!(!err.contains("cannot listen"), "{dir}: {err}");
        assert!(!err.contains("(UNIX)"), "{dir}: {err}");
        assert!(!data.exists(), "{dir}: the data directory was created");
        // Said once, not once per layer of the error.
        assert_eq!(err.matches(expect).count(), 1, "{dir}: {err}");
    }
}

#[test]
fn fabric_directories_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "umask 000; {CLUSTERLINK} create fabric && {CLUSTERLINK} create peer-cert --name p1"
    );
    let o = std::process::Command::new("sh")
        .args(["-c", &script])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    for d in ["default_fabric", "default_fabric/p1"] {
        let mode = std::fs::metadata(dir.path().join(d))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700, "{d}: {mode:o}");
    }
}

/// Whether this test, which needs root, can run; under `CI=true` it must.
fn as_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(!ci, "{test}: CI=true, so it must run, but it needs root");
    eprintln!("SKIPPED {test}: needs root");
    false
}

#[test]
fn a_full_disk_fails_writes_only_until_space_is_freed() {
    if !as_root("a_full_disk_fails_writes_only_until_space_is_freed") {
        return;
    }
    let f = Fabric::new(&["server1"]);
    let data = f.root().join("server1-data");
    std::fs::create_dir(&data).unwrap();
    // The store on a small tmpfs of its own, in a mount namespace that dies with the gateway.
    let mut command = std::process::Command::new("unshare");
    command.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs -o size=4m,mode=0700 tmpfs \"$0\" && exec \"$@\"",
    ]);
    command.arg(&data).args([
        CL_GATEWAY,
        "--peer",
        "server1",
        "--management-address",
        "127.0.0.1:0",
        "--peer-address",
        "127.0.0.1:0",
    ]);
    let gw = GatewayProcess::spawn_command(None, f.root(), command);
    let port = gw.port();
    let put = |name: &str| {
        let body = export_json(name, 80);
        request(
            port,
            "PUT",
            &format!("{EXPORTS}/{name}"),
            &[("Content-Type", "application/json")],
            &body,
        )
    };
    assert_eq!(put("kept").0, 201);
    // Fill the tmpfs through the gateway's own view of it.
    let filler = format!("/proc/{}/root{}/filler", gw.child.id(), data.display());
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![7u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    drop(file);
    let (code, body) = (0..20)
        .map(|i| put(&format!("more{i}")))
        .find(|(c, _)| *c != 201 && *c != 200)
        .expect("a write failed on the full disk");
    assert_eq!(code, 507, "{body}");
    assert!(body.contains("free space"), "{body}");
    let (code, health) = request(port, "GET", "/healthz", &[], "");
    assert_eq!(code, 503, "{health}");

    std::fs::remove_file(&filler).unwrap();
    // No restart: health recovers, revocations and writes go through, nothing half-written.
    assert!(eventually(CONVERGE, || request(
        port,
        "GET",
        "/healthz",
        &[],
        ""
    )
    .0 == 200));
    let (code, body) = request(port, "DELETE", &format!("{EXPORTS}/kept"), &[], "");
    assert_eq!(code, 200, "{body}");
    assert_eq!(put("after").0, 201);
    let names = gw.gwctl_ok(&["get", "exports"]);
    assert!(
        names.contains("after") && !names.contains("kept"),
        "{names}"
    );
}

/// A stranger who keeps `keep` connections open to `target` from `sources`, opening new ones (at
/// most `per_second`) as the gateway closes them, until dropped. Half say nothing; half send the
/// first byte of a TLS handshake and nothing more.
struct Flood {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(sources: Vec<String>, target: SocketAddr, keep: usize, per_second: usize) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::spawn({
            let (stop, opened) = (stop.clone(), opened.clone());
            move || {
                let mut held: Vec<TcpStream> = Vec::new();
                let mut next = 0;
                while !stop.load(Ordering::Relaxed) {
                    let round = std::time::Instant::now();
                    let mut budget = per_second / 10;
                    while held.len() < keep && budget > 0 {
                        let source = &sources[next % sources.len()];
                        next += 1;
                        budget -= 1;
                        if let Ok(mut s) = hostile::silent_connection(source, target) {
                            if next % 2 == 0 {
                                let _ = s.write_all(b"\x16");
                            }
                            held.push(s);
                            opened.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    held.retain(|s| !hostile::is_closed(s));
                    std::thread::sleep(Duration::from_millis(100).saturating_sub(round.elapsed()));
                }
            }
        });
        Flood {
            stop,
            opened,
            thread: Some(thread),
        }
    }

    fn opened(&self) -> usize {
        self.opened.load(Ordering::Relaxed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn strangers_on_many_networks_and_on_the_peers_own_address_never_keep_a_configured_peer_out() {
    let fabric = Fabric::new(&["server1", "client1"]);
    let server = fabric.start("server1");
    let backend = Backend::start("server1").port;
    server.apply(&format!("{}{}", export("svc", backend), allow_all("allow")));
    clusterlink_dataplane::process::raise_open_file_limit();
    let started = std::time::Instant::now();
    // 3,000 sockets from 32 networks and from the peer's own address (an attacker behind the
    // same NAT), reopened as the gateway closes them.
    let mut sources = hostile::networks(32);
    sources.push("127.0.0.1".into());
    let target: SocketAddr = server.peer_address.parse().unwrap();
    let flood = Flood::start(sources, target, 3000, 3000);
    assert!(
        eventually(Duration::from_secs(30), || flood.opened() >= 3000),
        "only {} opened",
        flood.opened()
    );
    // A gateway that starts now has no warm connection: its probes and its first tunnels need
    // handshakes on the flooded port.
    let client = fabric.start("client1");
    // server1 knows client1's gateway: its address has places the strangers cannot take.
    server.apply(&peer("client1", &client));
    let port = import_from_server1(&client, &server, "svc");
    assert!(eventually(UNDER_ATTACK, || reachable(&client, "server1") == "True"));
    let mut took = Vec::new();
    for _ in 0..5 {
        // 16 at once: more than the warm connections, so new ones are set up under the flood.
        let round: Vec<_> = (0..16)
            .map(|_| {
                std::thread::spawn(move || {
                    let started = std::time::Instant::now();
                    (exchange(port, b"hi"), started.elapsed())
                })
            })
            .collect();
        for e in round {
            let (seen, t) = e.join().unwrap();
            assert_eq!(seen, served(), "{}", client.log());
            took.push(t);
        }
    }
    took.sort();
    let p99 = took[took.len() * 99 / 100 - 1];
    eprintln!(
        "{} tunnels under {} silent connections: p50 {:?}, p99 {:?}, max {:?}",
        took.len(),
        flood.opened(),
        took[took.len() / 2],
        p99,
        took[took.len() - 1]
    );
    assert!(took[took.len() - 1] < UNDER_ATTACK, "{took:?}");
    // The peer was never taken for unreachable, and the strangers were closed: to make room,
    // or at their (shortened) deadline.
    assert!(
        !client.log().contains("peer unreachable"),
        "{}",
        client.log()
    );
    let closed = metric_with(
        &server,
        "clusterlink_connections_unserved_total",
        &[("listener", "peer")],
    );
    assert!(closed >= 1000.0, "{closed}");
    let lines = server
        .log()
        .lines()
        .filter(|l| l.contains("connection closed unserved"))
        .count();
    // At most one line per 10 s for each of the reasons a flood meets.
    let allowed = 4 * (started.elapsed().as_secs() / 10 + 1) as usize;
    assert!(lines <= allowed, "{lines} log lines:\n{}", server.log());
    drop(flood);
}

/// Tunnels open now on `gw`, both sides.
fn open_tunnels(gw: &GatewayProcess) -> f64 {
    metric(gw, "clusterlink_connections_active{side=\"egress\"}")
        + metric(gw, "clusterlink_connections_active{side=\"ingress\"}")
}

/// Whether `gw` serves again: `client` (a gateway importing from it, or itself) carries a fresh
/// tunnel to a backend it exports.
fn serves_again(server: &GatewayProcess, client: &GatewayProcess, name: &str) -> bool {
    let backend = Backend::start("server1").port;
    server.apply(&format!("{}{}", export(name, backend), allow_all("allow")));
    let port = free_port();
    client.apply(&import(name, port, &["server1"], "static"));
    client.wait_listening(name);
    eventually(CONVERGE, || exchange(port, b"hi") == served())
}

#[test]
fn a_loop_through_another_gateways_import_is_detected_and_both_serve_again() {
    let fabric = Fabric::new(&["server1", "client1"]);
    let (a, b) = (fabric.start("server1"), fabric.start("client1"));
    // b imports x from a; a's export x is b's import itself. Neither gateway's own imports are
    // in the loop: each sees a client of its import come from the other.
    let x = free_port();
    a.apply(&format!(
        "{}{}{}",
        peer("client1", &b),
        allow_all("allow"),
        export("x", x)
    ));
    b.apply(&format!(
        "{}{}{}",
        peer("server1", &a),
        allow_all("allow"),
        import("x", x, &["server1"], "static")
    ));
    b.wait_listening("x");
    assert_ne!(exchange(x, b"round and round"), served());
    let refused = metric_with(
        &a,
        "clusterlink_connections_refused_total",
        &[("side", "ingress"), ("reason", "LoopDetected")],
    );
    assert!(refused >= 1.0, "{}\n{}", a.log(), b.log());
    let tunnels = metric(
        &a,
        "clusterlink_connections_accepted_total{side=\"ingress\"}",
    );
    assert!(tunnels <= 8.0 + 1.0, "{tunnels} tunnels for one connection");
    // Nothing left behind: every tunnel of the loop closed, and both gateways serve.
    assert!(eventually(CONVERGE, || open_tunnels(&a) + open_tunnels(&b) == 0.0));
    assert!(serves_again(&a, &b, "after"), "{}", b.log());
}

#[test]
fn a_loop_no_gateway_can_see_collapses_at_the_tunnel_bounds_and_every_gateway_serves_again() {
    let fabric = Fabric::new(&["server1", "east", "west", "north"]);
    let bounded = [
        "--management-address",
        "127.0.0.1:0",
        "--peer-address",
        "127.0.0.1:0",
        "--max-tunnels-per-peer",
        "40",
    ];
    let [east, west, north] = ["east", "west", "north"].map(|p| fabric.start_with(p, &bounded));
    let [e, w, n] = [free_port(), free_port(), free_port()];
    // A ring of three: each export leads into the next gateway's import, and each import comes
    // from the gateway after. A gateway's ingress never dials its own import, and no tunnel
    // goes back to the gateway that dialed its client: no hop count sees it.
    let ring = |me: &GatewayProcess, from: (&str, &GatewayProcess), import_port, export_port| {
        me.apply(&format!(
            "{}{}{}{}",
            peer(from.0, from.1),
            allow_all("allow"),
            import("ring", import_port, &[from.0], "static"),
            export("ring", export_port)
        ));
    };
    ring(&east, ("west", &west), e, w);
    ring(&west, ("north", &north), w, n);
    ring(&north, ("east", &east), n, e);
    for gw in [&east, &west, &north] {
        gw.wait_listening("ring");
    }
    let started = std::time::Instant::now();
    assert_ne!(exchange(e, b"round and round"), served());
    let limited: f64 = [&east, &west, &north]
        .iter()
        .map(|gw| {
            metric_with(
                gw,
                "clusterlink_connections_refused_total",
                &[("reason", "TunnelLimit")],
            )
        })
        .sum();
    assert!(limited >= 1.0, "{}", east.log());
    // The chain unwinds from where it was refused: within seconds every tunnel is gone.
    assert!(
        eventually(CONVERGE, || [&east, &west, &north]
            .iter()
            .all(|gw| open_tunnels(gw) == 0.0)),
        "{}",
        east.log()
    );
    eprintln!("the loop grew and unwound in {:?}", started.elapsed());
    // No restart: each gateway carries a fresh tunnel.
    let server = fabric.start("server1");
    for gw in [&east, &west, &north] {
        gw.apply(&peer("server1", &server));
    }
    for (gw, name) in [(&east, "e2"), (&west, "w2"), (&north, "n2")] {
        assert!(serves_again(&server, gw, name), "{}", gw.log());
    }
}

#[test]
fn a_peers_forged_hop_count_never_turns_against_other_clients() {
    let fabric = Fabric::new(&["server1", "server2", "client1"]);
    // server1 exports svc, and imports other from server2 for its own local clients.
    let server = fabric.start("server1");
    let other = fabric.start("server2");
    let backend = Backend::start("server1").port;
    server.apply(&format!("{}{}", export("svc", backend), allow_all("allow")));
    other.apply(&format!(
        "{}{}",
        export("other", Backend::start("server1").port),
        allow_all("allow")
    ));
    let port = free_port();
    server.apply(&format!(
        "{}{}",
        peer("server2", &other),
        import("other", port, &["server2"], "static")
    ));
    server.wait_listening("other");
    // client1, played by hand, holds 1,500 tunnels that claim 7 hops: each holds a backend
    // connection from a port of this host that other clients' connections may reuse.
    let attacker = hostile::HandPlayedPeer::new(&fabric, "client1");
    let forged = b"CONNECT svc.default:443 HTTP/1.1\r\nhost: svc.default:443\r\nx-clusterlink-hops: 7\r\n\r\n";
    let held: Vec<_> = (0..1500)
        .map(|_| {
            let (stream, answer) = attacker.ask(&server.peer_address, "server1", forged);
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            stream
        })
        .collect();
    // 300 clients of server1's import, from ports of the same host: none is taken for a loop.
    for _ in 0..300 {
        assert_eq!(exchange(port, b"hi"), served(), "{}", server.log());
    }
    let loops = metric_with(
        &other,
        "clusterlink_connections_refused_total",
        &[("reason", "LoopDetected")],
    );
    assert_eq!(loops, 0.0, "{}", other.log());
    drop(held);
}

/// Characters that change what a terminal shows or forge a line: none may reach an operator raw.
fn has_control_characters(text: &str) -> bool {
    text.chars()
        .any(|c| c != '\n' && c != '\t' && clusterlink_api::text::is_unsafe_char(c))
}

#[test]
fn a_peers_text_cannot_forge_log_lines_or_take_over_the_operators_terminal() {
    use clusterlink_dataplane::tunnel::{RefusalReason, TunnelResponse};
    let fabric = Fabric::new(&["client1", "evil"]);
    let forged_line = "2026-12-06T00:00:00.000000Z  INFO clusterlink: all tunnels healthy";
    let message = format!("denied\n{forged_line}\r\x1b]0;pwned\x07\x1b[2J\u{9b}31m");
    let evil = hostile::HostileExporter::start(&fabric, "evil", move |_| {
        TunnelResponse::Refused {
            reason: RefusalReason::PolicyDenied,
            message: message.clone(),
            policy: Some("default/x\n\x1b[8mhidden".into()),
        }
        .encode()
    });
    let client = fabric.start("client1");
    let port = free_port();
    client.apply(&format!(
        "{}{}{}",
        evil.peer_manifest("evil"),
        allow_all("allow"),
        import("svc", port, &["evil"], "static")
    ));
    client.wait_listening("svc");
    assert!(eventually(CONVERGE, || reachable(&client, "evil") == "True"));
    assert_eq!(exchange(port, b"hi"), Exchange::Reset);
    assert!(eventually(CONVERGE, || client
        .log()
        .contains("all tunnels healthy")));
    // The log: the peer's words are in the refusal's line, escaped; no line of their own.
    let log = client.log();
    assert!(!has_control_characters(&log), "{log:?}");
    for line in log.lines().filter(|l| l.contains("all tunnels healthy")) {
        assert!(line.contains("connection refused"), "forged line: {line:?}");
    }
    // gwctl's views of the refusal: no raw escape sequence reaches the terminal.
    for args in [
        &["get", "events"][..],
        &["get", "events", "-o", "json"],
        &["describe", "import", "svc"],
        &["explain", "svc", "--client", "127.0.0.1"],
        &["check"],
    ] {
        let o = client.gwctl(args);
        let shown = format!("{}{}", stdout(&o), stderr(&o));
        assert!(!has_control_characters(&shown), "{args:?}: {shown:?}");
        assert!(
            shown.contains("pwned") || args[0] == "check",
            "{args:?}: {shown}"
        );
    }
    // JSON stays JSON, and still says what was sent (escaped once, at the gateway).
    let events: serde_json::Value =
        serde_json::from_str(&client.gwctl_ok(&["get", "events", "-o", "json"])).unwrap();
    let text = events.to_string();
    assert!(text.contains("\\\\u{1b}]0;pwned"), "{text}");
}

#[test]
fn a_peer_cannot_flood_the_log_and_dry_runs_are_counted_limited_and_sampled() {
    let fabric = Fabric::new(&["server1", "client1"]);
    let server = fabric.start("server1");
    server.apply(&format!(
        "{}{}",
        export("svc", Backend::start("server1").port),
        allow_all("allow")
    ));
    let attacker = hostile::HandPlayedPeer::new(&fabric, "client1");
    // Refused requests naming a 15 KB export: each refusal quotes the name.
    let long = "x".repeat(15_000);
    let refused = format!("CONNECT {long}.default:443 HTTP/1.1\r\n\r\n");
    let started = std::time::Instant::now();
    for _ in 0..400 {
        let (_, answer) = attacker.ask(&server.peer_address, "server1", refused.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    }
    let elapsed = started.elapsed();
    let counted = metric_with(
        &server,
        "clusterlink_connections_refused_total",
        &[("reason", "NoSuchExport")],
    );
    assert_eq!(counted, 400.0, "every refusal is counted");
    let log = server.log();
    let lines: Vec<_> = log.lines().filter(|l| l.contains("NoSuchExport")).collect();
    // A burst of 20, then one line every 500 ms, each saying how many it stands for.
    let allowed = 20 + (elapsed.as_millis() / 500) as usize + 1;
    assert!(
        lines.len() <= allowed,
        "{} lines in {elapsed:?}",
        lines.len()
    );
    assert!(lines.iter().all(|l| l.len() < 2048), "a line too long");
    if lines.len() < 400 {
        // Lines that were left out are counted in the next one.
        let counted = |l: &&&str| l.contains("suppressed=") && !l.contains("suppressed=0");
        assert!(lines.iter().any(|l| counted(&l)), "{log}");
    }

    // Dry runs asking for export names one by one: each counted, the excess refused, and a
    // few of them shown.
    let started = std::time::Instant::now();
    let mut limited: u32 = 0;
    for i in 0..700 {
        let ask =
            format!("CONNECT name{i}.default:443 HTTP/1.1\r\nx-clusterlink-dry-run: 1\r\n\r\n");
        let (_, answer) = attacker.ask(&server.peer_address, "server1", ask.as_bytes());
        if answer.starts_with("HTTP/1.1 429") {
            limited += 1;
        } else {
            assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        }
    }
    let elapsed = started.elapsed();
    let allowed = 500 + (elapsed.as_millis() / 20) as usize + 1;
    assert!(
        700 - limited as usize <= allowed,
        "{limited} limited in {elapsed:?}"
    );
    // Faster than the rate refills the burst: some must have been refused.
    if elapsed < Duration::from_millis(199 * 20) {
        assert!(limited > 0, "none limited in {elapsed:?}");
    }
    let dry = |answer: &str| {
        metric_with(
            &server,
            "clusterlink_dry_runs_total",
            &[("peer", "client1"), ("answer", answer)],
        )
    };
    assert_eq!(dry("TooManyRequests"), f64::from(limited));
    assert_eq!(dry("NoSuchExport") + dry("TooManyRequests"), 700.0);
    let events: serde_json::Value =
        serde_json::from_str(&server.gwctl_ok(&["get", "events", "-o", "json"])).unwrap();
    let samples: Vec<_> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "DryRun")
        .collect();
    // A burst of three, then one every 10 s.
    let allowed = 3 + (started.elapsed().as_secs() / 10) as usize + 1;
    assert!(
        !samples.is_empty() && samples.len() <= allowed,
        "{samples:?}"
    );
    assert!(
        server.log().contains("dry run answered"),
        "{}",
        server.log()
    );
}

#[test]
fn concurrent_updates_never_lose_a_write_and_a_stale_one_is_refused() {
    let f = Fabric::new(&["server1"]);
    let gw = f.start("server1");
    gw.apply(&export("svc", 8080));
    for round in 0..20 {
        // Four administrators change four labels of one object at once.
        let writers: Vec<_> = (0..4)
            .map(|i| {
                let (url, root) = (gw.url.clone(), f.root().to_path_buf());
                std::thread::spawn(move || {
                    let label = format!("metadata.labels.k{i}=r{round}");
                    run(
                        GWCTL,
                        &["--server", &url, "update", "export", "svc", &label],
                        &root,
                    )
                })
            })
            .collect();
        for w in writers {
            let o = w.join().unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
        }
        let now: serde_json::Value =
            serde_json::from_str(&gw.gwctl_ok(&["get", "export", "svc", "-o", "json"])).unwrap();
        for i in 0..4 {
            assert_eq!(
                now["metadata"]["labels"][format!("k{i}")],
                format!("r{round}"),
                "round {round} lost a write: {now}"
            );
        }
    }
    // A write from a stale read is refused as Kubernetes refuses it; a current one goes through.
    let path = format!("{EXPORTS}/svc");
    let current: serde_json::Value =
        serde_json::from_str(&gw.gwctl_ok(&["get", "export", "svc", "-o", "json"])).unwrap();
    let version = current["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let body = |port: u16, version: &str| {
        format!(
            r#"{{"apiVersion":"clusterlink.net/v1alpha1","kind":"Export","metadata":{{"name":"svc","namespace":"default","resourceVersion":"{version}"}},"spec":{{"host":"127.0.0.1","port":{port}}}}}"#
        )
    };
    let json = ("Content-Type", "application/json");
    let (code, answer) = request(gw.port(), "PUT", &path, &[json], &body(8081, &version));
    assert_eq!(code, 200, "{answer}");
    let (code, answer) = request(gw.port(), "PUT", &path, &[json], &body(8082, &version));
    assert_eq!(code, 409, "{answer}");
    assert!(
        answer.contains("has been changed since it was read"),
        "{answer}"
    );
    let kept = gw.gwctl_ok(&["get", "export", "svc", "-o", "json"]);
    assert!(kept.contains("8081"), "{kept}");
}

/// Runs `command`, killing it after `limit`: its output, or none if it had to be killed.
fn run_within(mut command: std::process::Command, limit: Duration) -> Option<std::process::Output> {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn a_gateway_restarts_for_its_memory_copies_once_and_never_with_file_capabilities() {
    if !as_root("a_gateway_restarts_for_its_memory_copies_once_and_never_with_file_capabilities") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mount = rustix::fs::statvfs(dir.path()).unwrap();
    if mount.f_flag.contains(rustix::fs::StatVfsMountFlags::NOSUID) {
        // File capabilities are ignored there: nothing to test on this machine.
        eprintln!("SKIPPED: {} is on a nosuid mount", dir.path().display());
        return;
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let gateway = dir.path().join("cl-gateway");
    std::fs::copy(CL_GATEWAY, &gateway).unwrap();
    // Told to tune on any processor, so the branch runs on this machine whatever it is.
    let tuned = |program: &str, args: &[&str]| {
        let mut command = std::process::Command::new(program);
        command.args(args).env("CLUSTERLINK_MEMORY_COPIES", "on");
        command
    };
    // Plainly started: one restart, said once.
    let o = run_within(
        tuned(gateway.to_str().unwrap(), &["--version"]),
        Duration::from_secs(30),
    )
    .expect("the gateway never started");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stderr(&o).matches("restarting once").count(),
        1,
        "{}",
        stderr(&o)
    );
    // With the capability to bind port 443, run by an ordinary user: glibc would drop the
    // tunable at every start, so the gateway must not restart at all.
    let set = run(
        "setcap",
        &["cap_net_bind_service+ep", gateway.to_str().unwrap()],
        dir.path(),
    );
    assert!(set.status.success(), "{}", stderr(&set));
    let o = run_within(
        tuned(
            "setpriv",
            &[
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                gateway.to_str().unwrap(),
                "--version",
            ],
        ),
        Duration::from_secs(30),
    )
    .expect("the gateway restarted itself forever");
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("raised privileges"), "{err}");
    assert!(!err.contains("restarting"), "{err}");
    assert!(stdout(&o).contains("cl-gateway"), "{}", stdout(&o));
}

#[test]
fn a_descriptor_flood_leaves_management_answering_and_ends_without_a_restart() {
    let fabric = Fabric::new(&["server1", "client1"]);
    let server = fabric.start("server1");
    // The importing gateway with 1,536 descriptors: the data path gets half, the rest stays for
    // management, probes and files.
    let mut command = std::process::Command::new("prlimit");
    command.args([
        "--nofile=1536:1536",
        CL_GATEWAY,
        "--peer",
        "client1",
        "--management-address",
        "127.0.0.1:0",
        "--peer-address",
        "127.0.0.1:0",
    ]);
    let client = GatewayProcess::spawn_command(None, fabric.root(), command);
    let port = import_from_server1(&client, &server, "svc");
    let backend = Backend::start("server1").port;
    server.apply(&format!("{}{}", export("svc", backend), allow_all("allow")));
    assert!(eventually(CONVERGE, || exchange(port, b"hi") == served()));
    clusterlink_dataplane::process::raise_open_file_limit();
    // 1,200 clients that each open a tunnel and hold it.
    let flood: Vec<TcpStream> = (0..1200)
        .filter_map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.write_all(b"held").ok()?;
            Some(s)
        })
        .collect();
    assert!(flood.len() >= 1100, "only {} connected", flood.len());
    // Past the data path's share, clients are reset at once, never left waiting.
    let reset = || flood.iter().filter(|s| hostile::is_closed(s)).count();
    assert!(
        eventually(CONVERGE, || reset() >= 600),
        "only {} of {} reset",
        reset(),
        flood.len()
    );
    assert!(
        metric_with(
            &client,
            "clusterlink_connections_refused_total",
            &[("reason", "TunnelLimit")]
        ) >= 600.0
    );
    // The reserve: the management API answers, and the peer stays reachable.
    for _ in 0..5 {
        assert_eq!(
            http_request(client.port(), "GET", "/healthz", &[], b"").0,
            200
        );
    }
    assert_eq!(reachable(&client, "server1"), "True");
    let log = client.log();
    assert!(!log.contains("Too many open files"), "{log}");
    // The flood ends: tunnels flow again at once, no restart.
    drop(flood);
    assert!(
        eventually(CONVERGE, || exchange(port, b"hi") == served()),
        "{}",
        client.log()
    );
}

#[test]
fn a_loopback_export_is_refused_before_any_connection_and_says_nothing_of_the_port() {
    let fabric = Fabric::new(&["server1", "client1"]);
    let server = as_shipped(&fabric, "server1");
    let client = fabric.start("client1");
    // A port something listens on, and one nothing does.
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    open.set_nonblocking(true).unwrap();
    let open_port = open.local_addr().unwrap().port();
    let closed_port = free_port();
    server.apply(&format!(
        "{}{}{}",
        export("open", open_port),
        export("closed", closed_port),
        allow_all("allow")
    ));
    for name in ["open", "closed"] {
        let port = import_from_server1(&client, &server, name);
        assert_eq!(exchange(port, b"probe"), Exchange::Reset);
    }
    let refusal = |name: &str, port: u16| {
        let events: serde_json::Value =
            serde_json::from_str(&server.gwctl_ok(&["get", "events", "-o", "json"])).unwrap();
        events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["export"] == format!("default/{name}"))
            .map(|e| {
                e["message"]
                    .as_str()
                    .unwrap()
                    .replace(&port.to_string(), "PORT")
            })
    };
    assert!(eventually(CONVERGE, || refusal("closed", closed_port).is_some()));
    let (seen_open, seen_closed) = (refusal("open", open_port), refusal("closed", closed_port));
    assert!(
        seen_open
            .as_deref()
            .unwrap()
            .contains("--allow-loopback-backends"),
        "{seen_open:?}"
    );
    assert_eq!(seen_open, seen_closed, "the refusal tells the ports apart");
    let accepted = open.accept().map_err(|e| e.kind());
    assert_eq!(
        accepted.err(),
        Some(std::io::ErrorKind::WouldBlock),
        "the gateway connected to the loopback service"
    );
}

#[test]
fn an_authenticated_peer_cannot_hold_more_connections_than_its_share() {
    let fabric = Fabric::new(&["server1", "client1", "client2"]);
    // 10 tunnels per peer: with the idle connections its gateways may keep, 1,034 connections.
    let server = fabric.start_with(
        "server1",
        &[
            "--management-address",
            "127.0.0.1:0",
            "--peer-address",
            "127.0.0.1:0",
            "--max-tunnels-per-peer",
            "10",
        ],
    );
    server.apply(&format!(
        "{}{}",
        export("svc", Backend::start("server1").port),
        allow_all("allow")
    ));
    clusterlink_dataplane::process::raise_open_file_limit();
    // client1, played by hand, authenticates 1,100 connections and asks nothing on them.
    let attacker = hostile::HandPlayedPeer::new(&fabric, "client1");
    let held: Vec<_> = (0..1100)
        .map(|_| attacker.connect(&server.peer_address, "server1"))
        .collect();
    let over = || {
        metric(
            &server,
            "clusterlink_connections_unserved_total{listener=\"peer\",reason=\"PeerLimit\"}",
        )
    };
    assert!(eventually(CONVERGE, || over() >= 60.0), "{}", over());
    // Another peer is served meanwhile.
    let client = fabric.start("client2");
    let port = import_from_server1(&client, &server, "svc");
    assert!(eventually(CONVERGE, || exchange(port, b"hi") == served()));
    drop(held);
}
