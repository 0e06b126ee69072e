//! Joining and leaving the fabric, through the real binaries in network-namespace sites: a site
//! joins with one token, its certificate renews itself under live traffic, a revocation reaches
//! every gateway and cuts the revoked peer's tunnels, and the CA rolls over with no tunnel lost.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clusterlink_testbed::netns::Wan;
use support::manifests::{allow_all, export, import, peer};
use support::sites::{Conversation, EchoService, PEER_PORT, SiteBed, can_run, talk};
use support::{
    CLUSTERLINK, Exchange, Fabric, GatewayProcess, eventually, metric, run, stderr, stdout,
};

/// Convergence that should take well under this; generous for a loaded 2-core machine.
const CONVERGE: Duration = Duration::from_secs(20);
/// The import port of the n-th source on a site's loopback.
const IMPORT_PORT: u16 = 9000;

/// Sites on a WAN where only `issuer` has a certificate (made by file, as today); the others
/// have nothing until they join.
fn bed(issuer: &str, sites: &[&str]) -> SiteBed {
    let fabric = Fabric::new(&[issuer]);
    let wan = Wan::create(sites, &[PEER_PORT]).expect("create the sites");
    SiteBed { wan, fabric }
}

/// The issuing gateway of `bed`, in its site, signing certificates that last `lifetime`.
fn start_issuer(bed: &SiteBed, name: &str, lifetime: &str) -> GatewayProcess {
    bed.start_with(name, &["--issuer", "--certificate-lifetime", lifetime])
}

/// `clusterlink create join-token` for `name`, redeemed at `issuer`'s peer port.
fn token(bed: &SiteBed, name: &str, issuer: &GatewayProcess, expires: &str) -> String {
    let o = run(
        CLUSTERLINK,
        &[
            "create",
            "join-token",
            "--name",
            name,
            "--at",
            &issuer.peer_address,
            "--expires",
            expires,
        ],
        bed.fabric.root(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o).trim().to_string()
}

fn join_args<'a>(token: &'a str, data_dir: &'a str, peer_address: &'a str) -> Vec<&'a str> {
    vec![
        "--join",
        token,
        "--data-dir",
        data_dir,
        "--peer-address",
        peer_address,
        "--management-address",
        "127.0.0.1:0",
    ]
}

/// Site `name` joins with a new token: the one command, and how long it took to be ready.
fn join(bed: &SiteBed, name: &str, issuer: &GatewayProcess) -> (GatewayProcess, Duration) {
    let token = token(bed, name, issuer, "15m");
    let site = bed.site(name);
    let peer_address = format!("{}:{PEER_PORT}", site.address);
    let data_dir = bed.fabric.data_dir(name);
    let started = Instant::now();
    let gw = GatewayProcess::spawn_in(
        Some(site),
        bed.fabric.root(),
        &join_args(&token, data_dir.to_str().unwrap(), &peer_address),
    );
    (gw, started.elapsed())
}

/// `cl-gateway --join` that must fail; its stderr.
fn join_refused(bed: &SiteBed, site: &str, token: &str) -> String {
    let data_dir = bed
        .fabric
        .root()
        .join(format!("refused-{}", support::rand_u64()));
    let o = support::command_in(Some(bed.site(site)), support::CL_GATEWAY)
        .args(join_args(token, data_dir.to_str().unwrap(), "127.0.0.1:0"))
        .current_dir(bed.fabric.root())
        .output()
        .unwrap();
    assert!(!o.status.success(), "the join succeeded: {}", stdout(&o));
    // Only the key of the attempt stays, for a retry with the same token.
    assert!(
        !data_dir.join("tls/identity.pem").exists() && !data_dir.join("enrollment.json").exists(),
        "a refused join left an identity behind"
    );
    stderr(&o)
}

/// An Import named `name` of `export` from `peer` alone.
fn import_of(name: &str, export: &str, port: u16, peer: &str) -> String {
    format!(
        "---\napiVersion: clusterlink.net/v1alpha1\nkind: Import\nmetadata: {{name: {name}}}\nspec: {{port: {port}, sources: [{{peer: {peer}, exportName: {export}, exportNamespace: default}}]}}\n"
    )
}

fn link(from: &GatewayProcess, to: &GatewayProcess, name: &str) {
    from.apply(&peer(name, to));
}

#[test]
fn a_site_joins_with_one_token_and_each_bad_token_is_refused_its_own_way() {
    if !can_run("a_site_joins_with_one_token", &[]) {
        return;
    }
    let bed = bed("hub", &["hub", "site3", "elsewhere"]);
    let hub = start_issuer(&bed, "hub", "24h");
    hub.apply(&allow_all("allow-all"));
    let service = EchoService::start(bed.site("hub"), "hub-echo");
    hub.apply(&export("echo", service.port));

    let (site3, took) = join(&bed, "site3", &hub);
    eprintln!("site3 joined and was ready in {took:?}");
    assert!(site3.gwctl_ok(&["version"]).contains("site3"));
    // The key was made at the site and stays owner-only; the fabric's ledger has the new
    // certificate, and nothing else of the site.
    let key = bed.fabric.data_dir("site3").join("tls/identity.pem");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let ledger =
        std::fs::read_to_string(bed.fabric.fabric_dir().join("authority/issued.jsonl")).unwrap();
    assert!(ledger.contains("\"name\":\"site3\""), "{ledger}");

    // It carries traffic at once.
    site3.apply(&allow_all("allow-all"));
    link(&site3, &hub, "hub");
    site3.apply(&import("echo", IMPORT_PORT, &["hub"], "round-robin"));
    site3.wait_listening("echo");
    let served = eventually(CONVERGE, || {
        talk(bed.site("site3"), IMPORT_PORT, b"joined")
            == Exchange::Served {
                backend: "hub-echo".into(),
            }
    });
    assert!(served, "{}\n{}", site3.log(), hub.log());

    // Restarted without the token, it is the same site.
    drop(site3);
    let again = bed.start("site3");
    assert!(again.gwctl_ok(&["version"]).contains("site3"));

    // Reuse, forgery and expiry: each refused with its own message, nothing written.
    let used = std::fs::read_dir(bed.fabric.fabric_dir().join("authority/redeemed"))
        .unwrap()
        .count();
    assert_eq!(used, 1);
    let reused = token(&bed, "site4", &hub, "15m");
    let _first = GatewayProcess::spawn_in(
        Some(bed.site("elsewhere")),
        bed.fabric.root(),
        &join_args(
            &reused,
            bed.fabric.data_dir("site4").to_str().unwrap(),
            "127.0.0.1:0",
        ),
    );
    let err = join_refused(&bed, "elsewhere", &reused);
    assert!(err.contains("already redeemed"), "{err}");
    assert!(err.contains("TokenReused"), "{err}");

    let fresh = token(&bed, "site5", &hub, "15m");
    // A token whose body was changed (another name, say) no longer matches its MAC.
    let (body, mac) = fresh.rsplit_once('.').unwrap();
    let payload = String::from_utf8(base64_decode(body.strip_prefix("cljoin1.").unwrap()))
        .unwrap()
        .replace("site5", "admin");
    let forged = format!("cljoin1.{}.{mac}", base64_encode(payload.as_bytes()));
    let err = join_refused(&bed, "elsewhere", &forged);
    assert!(err.contains("forged"), "{err}");
    // One from another fabric (its own CA) is refused by the pin before anything is sent.
    let other = Fabric::new(&[]);
    // Its own issuing gateway bears the same name as ours.
    std::fs::create_dir_all(other.fabric_dir().join("authority")).unwrap();
    std::fs::write(other.fabric_dir().join("authority/issuer"), "hub").unwrap();
    let o = run(
        CLUSTERLINK,
        &[
            "create",
            "join-token",
            "--name",
            "site5",
            "--at",
            &hub.peer_address,
        ],
        other.root(),
    );
    let foreign = stdout(&o).trim().to_string();
    let err = join_refused(&bed, "elsewhere", &foreign);
    assert!(err.contains("not of the fabric the token pins"), "{err}");

    let expiring = token(&bed, "site6", &hub, "1s");
    let expires = clusterlink_pki::authority::JoinToken::read(&expiring)
        .unwrap()
        .expires;
    // Waits for the wall clock to pass the token's expiry (tokens count Unix seconds).
    assert!(eventually(Duration::from_secs(5), || unix_now() > expires));
    let err = join_refused(&bed, "elsewhere", &expiring);
    assert!(err.contains("expired at"), "{err}");
    assert!(err.contains("TokenExpired"), "{err}");
    // The fresh token was never redeemed by the forgery: it still works.
    let site5 = GatewayProcess::spawn_in(
        Some(bed.site("elsewhere")),
        bed.fabric.root(),
        &join_args(
            &fresh,
            bed.fabric.data_dir("site5").to_str().unwrap(),
            "127.0.0.1:0",
        ),
    );
    assert!(site5.gwctl_ok(&["version"]).contains("site5"));
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// How many times a gateway logged `line`.
fn logged(gw: &GatewayProcess, line: &str) -> usize {
    gw.log().matches(line).count()
}

/// How many times a gateway has renewed its certificate.
fn renewals(gw: &GatewayProcess) -> usize {
    logged(gw, "certificate renewed")
}

#[test]
fn two_minute_certificates_renew_under_a_long_transfer_and_no_connection_drops() {
    if !can_run("two_minute_certificates_renew", &[]) {
        return;
    }
    let bed = bed("hub", &["hub", "east", "west"]);
    let hub = start_issuer(&bed, "hub", "2m");
    let (east, _) = join(&bed, "east", &hub);
    let (west, _) = join(&bed, "west", &hub);
    for gw in [&east, &west] {
        gw.apply(&allow_all("allow-all"));
    }
    let service = EchoService::start(bed.site("west"), "west-echo");
    west.apply(&export("echo", service.port));
    link(&east, &west, "west");
    link(&west, &east, "east");
    east.apply(&import("echo", IMPORT_PORT, &["west"], "round-robin"));
    east.wait_listening("echo");
    assert!(eventually(CONVERGE, || {
        matches!(
            talk(bed.site("east"), IMPORT_PORT, b"x"),
            Exchange::Served { .. }
        )
    }));

    // One connection streams through the whole test while both ends renew three times each;
    // a fresh tunnel is opened after each renewal too.
    let mut long = Conversation::open(bed.site("east"), IMPORT_PORT);
    let mut sent = 0u64;
    let mut fresh = 0;
    let started = Instant::now();
    let mut seen = 0;
    while renewals(&east) < 3 || renewals(&west) < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(480),
            "east renewed {} times, west {}:\n{}\n{}",
            renewals(&east),
            renewals(&west),
            east.log(),
            west.log()
        );
        let chunk = format!("chunk {sent} of a long transfer\n").repeat(64);
        assert!(
            long.echoes(chunk.as_bytes()),
            "the long transfer dropped after {sent} chunks:\n{}\n{}",
            east.log(),
            west.log()
        );
        sent += 1;
        let now = renewals(&east) + renewals(&west);
        if now > seen {
            seen = now;
            let served = eventually(CONVERGE, || {
                matches!(
                    talk(bed.site("east"), IMPORT_PORT, b"after"),
                    Exchange::Served { .. }
                )
            });
            assert!(served, "no fresh tunnel after a renewal:\n{}", east.log());
            fresh += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(long.echoes(b"still here"));
    // Both ends often renew within the same moment: at least one fresh tunnel per round.
    assert!(fresh >= 3, "{fresh} fresh tunnels");
    // Renewal is reported: the last one's time, and no failure.
    assert!(metric(&east, "clusterlink_certificate_renewed_timestamp_seconds") > 0.0);
    assert_eq!(
        metric(&east, "clusterlink_certificate_renewal_failures_total"),
        0.0
    );
    eprintln!("{sent} chunks over one connection across 6 renewals, {fresh} fresh tunnels between");
}

/// A fabric of `names.len()` sites, each linked to every other, all allowing everything: the
/// first is the issuing gateway (a file-made certificate), the others joined.
struct Mesh {
    bed: SiteBed,
    gateways: Vec<GatewayProcess>,
    names: Vec<String>,
}

impl Mesh {
    fn new(names: &[&str]) -> Mesh {
        let bed = bed(names[0], names);
        let mut gateways = vec![start_issuer(&bed, names[0], "24h")];
        for name in &names[1..] {
            let (gw, _) = join(&bed, name, &gateways[0]);
            gateways.push(gw);
        }
        for (i, gw) in gateways.iter().enumerate() {
            gw.apply(&allow_all("allow-all"));
            for (j, other) in gateways.iter().enumerate() {
                if i != j {
                    link(gw, other, names[j]);
                }
            }
        }
        Mesh {
            bed,
            gateways,
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    fn gateway(&self, name: &str) -> &GatewayProcess {
        let i = self.names.iter().position(|n| n == name).unwrap();
        &self.gateways[i]
    }
}

fn revoke(bed: &SiteBed, what: &[&str]) -> String {
    let mut args = vec!["revoke"];
    args.extend_from_slice(what);
    let o = run(CLUSTERLINK, &args, bed.fabric.root());
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

fn revoked_here(gw: &GatewayProcess) -> bool {
    metric(gw, "clusterlink_revoked_certificates") >= 1.0
}

#[test]
fn revoking_a_peer_cuts_its_tunnels_everywhere_and_an_offline_gateway_learns_it_on_return() {
    if !can_run("revoking_a_peer", &[]) {
        return;
    }
    let names = ["hub", "s1", "s2", "s3", "thief"];
    let mut mesh = Mesh::new(&names);
    let exporters = ["hub", "s1", "s2", "s3"];
    let mut services = Vec::new();
    for (i, name) in exporters.iter().enumerate() {
        let service = EchoService::start(mesh.bed.site(name), &format!("{name}-echo"));
        mesh.gateway(name).apply(&export("echo", service.port));
        services.push(service);
        let port = IMPORT_PORT + i as u16;
        mesh.gateway("thief")
            .apply(&import_of(&format!("echo-{name}"), "echo", port, name));
    }
    // Live tunnels from the thief's site into every other site.
    let thief_site = mesh.bed.site("thief");
    let mut live = Vec::new();
    for (i, name) in exporters.iter().enumerate() {
        mesh.gateway("thief")
            .wait_listening(&format!("echo-{name}"));
        let port = IMPORT_PORT + i as u16;
        assert!(eventually(CONVERGE, || matches!(
            talk(thief_site, port, b"x"),
            Exchange::Served { .. }
        )));
        live.push(Conversation::open(thief_site, port));
    }
    // s3 is offline during the revocation (its store and stored lists stay).
    let s3 = mesh.names.iter().position(|n| n == "s3").unwrap();
    mesh.gateways[s3].terminate();
    drop(live.pop());

    let before = Instant::now();
    let out = revoke(&mesh.bed, &["--peer", "thief"]);
    assert!(out.contains("revoked 1 certificate"), "{out}");
    let online = ["hub", "s1", "s2"];
    let mut spread = Vec::new();
    for name in online {
        assert!(
            eventually(CONVERGE, || revoked_here(mesh.gateway(name))),
            "{name} never learned the revocation:\n{}",
            mesh.gateway(name).log()
        );
        spread.push(before.elapsed());
    }
    let mut cut = Vec::new();
    for conversation in &mut live {
        assert!(
            eventually(CONVERGE, || conversation.is_closed()),
            "a tunnel of the revoked peer stayed open"
        );
        cut.push(before.elapsed());
    }
    eprintln!("revocation known at {spread:?}; tunnels cut by {cut:?}");
    // New tunnels are refused (at handshake: the exporting side no longer accepts the thief).
    for (i, _) in online.iter().enumerate() {
        let port = IMPORT_PORT + i as u16;
        assert!(
            !matches!(talk(thief_site, port, b"x"), Exchange::Served { .. }),
            "the revoked peer opened a new tunnel"
        );
    }
    assert!(
        mesh.gateway("hub").log().contains("certificate revoked")
            || support::metric_with(
                mesh.gateway("hub"),
                "clusterlink_connections_unserved_total",
                &[("reason", "HandshakeRefused")]
            ) > 0.0,
        "{}",
        mesh.gateway("hub").log()
    );

    // s3 comes back: it learns the list from the first peer it probes, and refuses the thief.
    let back = mesh.bed.start("s3");
    assert!(
        eventually(CONVERGE, || revoked_here(&back)),
        "{}",
        back.log()
    );
    assert!(!matches!(
        talk(thief_site, IMPORT_PORT + 3, b"x"),
        Exchange::Served { .. }
    ));
    mesh.gateways[s3] = back;
    // Everyone else still works with everyone: s1 reaches s2's export.
    let s1 = mesh.gateway("s1");
    s1.apply(&import("echo", IMPORT_PORT + 10, &["s2"], "round-robin"));
    s1.wait_listening("echo");
    assert!(eventually(CONVERGE, || talk(
        mesh.bed.site("s1"),
        IMPORT_PORT + 10,
        b"ok"
    ) == Exchange::Served {
        backend: "s2-echo".into()
    }));
}

/// Replaces `path` whole (a rename), as an operator's tooling would.
fn replace(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn reloads(gw: &GatewayProcess) -> usize {
    logged(gw, "certificates reloaded")
}

#[test]
fn the_ca_rolls_over_with_no_tunnel_dropped() {
    if !can_run("the_ca_rolls_over", &[]) {
        return;
    }
    let bed = SiteBed::new(&["a", "b"]);
    let root = bed.fabric.root().to_path_buf();
    let old = bed.fabric.fabric_dir();
    // Each gateway reads its own copies, so that each step replaces them under it.
    let files = |name: &str| -> PathBuf { root.join(format!("{name}-tls")) };
    let mut gateways = Vec::new();
    for name in ["a", "b"] {
        let dir = files(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(old.join("cert.pem"), dir.join("ca.pem")).unwrap();
        std::fs::copy(old.join(name).join("cert.pem"), dir.join("cert.pem")).unwrap();
        std::fs::copy(old.join(name).join("key.pem"), dir.join("key.pem")).unwrap();
        let site = bed.site(name);
        let gw = GatewayProcess::spawn_in(
            Some(site),
            &root,
            &[
                "--ca",
                dir.join("ca.pem").to_str().unwrap(),
                "--cert",
                dir.join("cert.pem").to_str().unwrap(),
                "--key",
                dir.join("key.pem").to_str().unwrap(),
                "--data-dir",
                bed.fabric.data_dir(name).to_str().unwrap(),
                "--peer-address",
                &format!("{}:{PEER_PORT}", site.address),
                "--management-address",
                "127.0.0.1:0",
            ],
        );
        gw.apply(&allow_all("allow-all"));
        gateways.push(gw);
    }
    let (a, b) = (&gateways[0], &gateways[1]);
    let service = EchoService::start(bed.site("a"), "a-echo");
    a.apply(&export("echo", service.port));
    link(b, a, "a");
    link(a, b, "b");
    b.apply(&import("echo", IMPORT_PORT, &["a"], "round-robin"));
    b.wait_listening("echo");
    let fresh_tunnel = || {
        eventually(CONVERGE, || {
            talk(bed.site("b"), IMPORT_PORT, b"fresh")
                == Exchange::Served {
                    backend: "a-echo".into(),
                }
        })
    };
    assert!(fresh_tunnel());
    let mut long = Conversation::open(bed.site("b"), IMPORT_PORT);

    // The new CA, and each site's certificate from it.
    for args in [
        vec!["create", "fabric", "--name", "new_fabric"],
        vec![
            "create",
            "peer-cert",
            "--fabric",
            "new_fabric",
            "--name",
            "a",
        ],
        vec![
            "create",
            "peer-cert",
            "--fabric",
            "new_fabric",
            "--name",
            "b",
        ],
    ] {
        let o = run(CLUSTERLINK, &args, &root);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let new = root.join("new_fabric");
    let old_ca = std::fs::read(old.join("cert.pem")).unwrap();
    let new_ca = std::fs::read(new.join("cert.pem")).unwrap();
    let step = |n: usize, what: &str, change: &dyn Fn(&str)| {
        for name in ["a", "b"] {
            change(name);
        }
        for gw in [a, b] {
            assert!(
                eventually(CONVERGE, || reloads(gw) >= n),
                "step {n} ({what}) not loaded:\n{}",
                gw.log()
            );
        }
        assert!(fresh_tunnel(), "no fresh tunnel after step {n} ({what})");
    };
    // 1. Every site trusts both CAs.
    step(1, "bundle of both CAs", &|name| {
        replace(
            &files(name).join("ca.pem"),
            &[old_ca.clone(), new_ca.clone()].concat(),
        );
    });
    assert!(long.echoes(b"after the bundle"));
    // 2. Every site moves to a certificate of the new CA (key first, then certificate).
    step(2, "certificates of the new CA", &|name| {
        let dir = files(name);
        replace(
            &dir.join("key.pem"),
            &std::fs::read(new.join(name).join("key.pem")).unwrap(),
        );
        replace(
            &dir.join("cert.pem"),
            &std::fs::read(new.join(name).join("cert.pem")).unwrap(),
        );
    });
    assert!(long.echoes(b"after the new certificates"));
    // 3. The old CA leaves the bundle.
    step(3, "the new CA alone", &|name| {
        replace(&files(name).join("ca.pem"), &new_ca);
    });
    assert!(long.echoes(b"after the old CA left"));
    // The old CA is gone from a's trust: b's old certificate is refused, its new one answered.
    let probe_as = |fabric: &Path| {
        let files = clusterlink_pki::tls::TlsFiles::in_fabric(fabric, &fabric.join("b"));
        let mut credentials = clusterlink_pki::tls::Credentials::load(&files).unwrap();
        // The client trusts a's new certificate either way: only a's judgement is tested.
        credentials.roots = clusterlink_pki::tls::load_roots(&new.join("cert.pem")).unwrap();
        let mut config = clusterlink_pki::tls::mutual_client_config(&credentials).unwrap();
        config.alpn_protocols = vec![clusterlink_pki::tls::PEER_ALPN.to_vec()];
        let address = a.peer_address.clone();
        bed.site("b")
            .enter(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async move {
                        use tokio::io::AsyncWriteExt;
                        let tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
                        let name = rustls_pki_types::ServerName::try_from("a").unwrap();
                        let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                            .connect(name, tcp)
                            .await
                            .map_err(|e| e.to_string())?;
                        tls.write_all(clusterlink_dataplane::tunnel::HEALTH_REQUEST)
                            .await
                            .map_err(|e| e.to_string())?;
                        clusterlink_dataplane::tunnel::read_head(&mut tls)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    })
            })
            .unwrap()
    };
    assert_eq!(probe_as(&new), Ok(()));
    let refused = probe_as(&old);
    let refused = refused.expect_err("a certificate of the old CA was answered");
    assert!(
        refused.contains("UnknownCA") || refused.contains("BadCertificate"),
        "{refused}"
    );
}

/// Ten sites join, and a revocation reaches all of them; the figures are printed (`cargo test -p
/// clusterlink --test membership ten_sites -- --nocapture`), never asserted as times.
#[test]
fn ten_sites_join_and_a_revocation_reaches_every_gateway() {
    if !can_run("ten_sites", &[]) {
        return;
    }
    let names = [
        "hub", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "thief",
    ];
    let bed = bed(names[0], &names);
    let mut gateways = vec![start_issuer(&bed, names[0], "24h")];
    let mut joins = Vec::new();
    for name in &names[1..] {
        let (gw, took) = join(&bed, name, &gateways[0]);
        joins.push(took);
        gateways.push(gw);
    }
    for (i, gw) in gateways.iter().enumerate() {
        gw.apply(&allow_all("allow-all"));
        for (j, other) in gateways.iter().enumerate() {
            if i != j {
                link(gw, other, names[j]);
            }
        }
    }
    // Every link probed once before the revocation.
    for (i, gw) in gateways.iter().enumerate() {
        let next = names[(i + 1) % names.len()];
        assert!(eventually(CONVERGE, || {
            support::metric_with(gw, "clusterlink_peer_reachable", &[("peer", next)]) > 0.0
        }));
    }
    let started = Instant::now();
    revoke(&bed, &["--peer", "thief"]);
    let mut known: Vec<Option<Duration>> = vec![None; names.len() - 1];
    while known.iter().any(Option::is_none) {
        assert!(started.elapsed() < CONVERGE, "{known:?}");
        for (i, gw) in gateways[..names.len() - 1].iter().enumerate() {
            if known[i].is_none() && revoked_here(gw) {
                known[i] = Some(started.elapsed());
            }
        }
    }
    let mut spread: Vec<Duration> = known.into_iter().flatten().collect();
    spread.sort();
    joins.sort();
    eprintln!(
        "join: p50 {:?}, max {:?}; revocation known: p50 {:?}, max {:?} ({} gateways)",
        joins[joins.len() / 2],
        joins[joins.len() - 1],
        spread[spread.len() / 2],
        spread[spread.len() - 1],
        spread.len()
    );
}
