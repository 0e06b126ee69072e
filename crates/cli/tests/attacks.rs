//! Attacks on the real binaries, each asserting the behaviour that closed it: a web page driving
//! the management API, floods of strangers on the peer port, hostile bodies, a full disk,
//! forwarding loops, exports of local admin APIs, a silent server under gwctl, and unusable
//! certificates at start-up. Bounds on time are generous: the machines are shared and slow.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::manifests::{allow_all, export, import, peer};
use support::{
    Backend, CL_GATEWAY, CLUSTERLINK, Exchange, Fabric, GWCTL, GatewayProcess, connect_from,
    eventually, exchange, free_port, http_request, metric, metric_with, reachable, run, stderr,
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
    // server1 runs as shipped: no --allow-loopback-backends.
    let server = GatewayProcess::spawn_exactly(
        None,
        fabric.root(),
        &[
            "--peer",
            "server1",
            "--management-address",
            "127.0.0.1:0",
            "--peer-address",
            "127.0.0.1:0",
        ],
    );
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
        ("expired", "server1", "certificate is not valid after"),
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
