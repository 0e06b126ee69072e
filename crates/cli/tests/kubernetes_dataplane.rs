//! Data-plane replicas as they run on Kubernetes, without a cluster: two real `cl-dataplane`
//! processes follow one snapshot stream (served here, as `cl-controlplane` serves it) and carry
//! real tunnels to a standalone gateway. They keep serving when the control plane goes away,
//! and client attributes that arrive with a snapshot (the pods) decide policy.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use clusterlink_api::clients::ClientHosts;
use clusterlink_gateway::model::ControlPlane;
use clusterlink_pki::reload::GatewayTls;
use clusterlink_pki::tls::{Credentials, TlsFiles};
use clusterlink_store::MemoryStore;
use support::*;
use tokio::sync::watch;

/// How long replicas get to follow a snapshot (they do in milliseconds).
const CONVERGE: Duration = Duration::from_secs(20);

/// Denies clients whose pod is labelled `app: blocked`, allows everything else.
const POLICIES: &str = "\
apiVersion: clusterlink.net/v1alpha1
kind: AccessPolicy
metadata: {name: deny-blocked, namespace: default}
spec:
  action: deny
  from: [{workloadSelector: {matchLabels: {client.clusterlink.net/labels.app: blocked}}}]
  to: [{workloadSelector: {}}]
";

struct Replica {
    child: Child,
    log: std::path::PathBuf,
    peer_port: u16,
    /// /healthz, /readyz and /metrics.
    ops_port: u16,
}

impl Replica {
    fn start(
        dir: &std::path::Path,
        fabric: &std::path::Path,
        control_plane: &str,
        import_address: &str,
    ) -> Replica {
        let log = dir.join(format!("dataplane-{import_address}.log"));
        let peer_port = free_port();
        let ops_port = free_port();
        let child = Command::new(cl_dataplane())
            .args([
                "--ca",
                fabric.join("cert.pem").to_str().unwrap(),
                "--cert",
                fabric.join("client/cert.pem").to_str().unwrap(),
                "--key",
                fabric.join("client/key.pem").to_str().unwrap(),
                "--control-plane",
                control_plane,
                "--peer-address",
                &format!("127.0.0.1:{peer_port}"),
                "--import-address",
                import_address,
                "--ops-address",
                &format!("127.0.0.1:{ops_port}"),
                "--allow-loopback-backends",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Replica {
            child,
            log,
            peer_port,
            ops_port,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a log line containing `text`.
    fn wait_for(&self, text: &str) {
        assert!(
            eventually(CONVERGE, || self.log().contains(text)),
            "no {text:?} in:\n{}",
            self.log()
        );
    }
}

impl Replica {
    /// A client at 127.0.0.9 reaches the echo backend through this replica's import.
    async fn assert_serves(&self, ip: &'static str, port: u16, payload: &'static [u8]) {
        let served =
            tokio::task::spawn_blocking(move || exchange_between("127.0.0.9", ip, port, payload));
        let echo = Exchange::Served {
            backend: "echo".into(),
        };
        assert_eq!(served.await.unwrap(), echo, "{}", self.log());
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn objects(yaml: &str) -> Vec<clusterlink_api::Object> {
    let mut objects: Vec<_> = clusterlink_api::parse_manifests(yaml)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for o in &mut objects {
        o.default_namespace("default");
    }
    objects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_the_streamed_snapshot_and_keep_it_when_the_control_plane_is_away() {
    let f = Fabric::new(&["server", "client"]);
    let backend = Backend::start("echo");
    let server = f.start("server");
    server.apply(&clusterlink_testbed::manifests::export(
        "echo",
        backend.port,
    ));
    server.apply(clusterlink_testbed::manifests::ALLOW_ALL);

    // The client peer's control plane, as `cl-controlplane` runs it: a model, the client hosts
    // from the pod cache, and the snapshot stream, authenticated with the client's certificate.
    let fabric = f.fabric_dir();
    let credentials =
        Credentials::load(&TlsFiles::in_fabric(&fabric, &fabric.join("client"))).unwrap();
    let tls = watch::channel(Arc::new(GatewayTls::new(&credentials).unwrap())).1;
    let model = ControlPlane::open(Arc::new(MemoryStore::default())).unwrap();
    let target = free_port();
    let config = format!(
        "{}---\n{}---\n{}---\n{POLICIES}",
        clusterlink_testbed::manifests::peer("server", &server.peer_address),
        clusterlink_testbed::manifests::import("echo", target, &["server"]),
        clusterlink_testbed::manifests::ALLOW_ALL,
    );
    model.replace_all(objects(&config)).await.unwrap();
    // The client pods: the policies select clients by label, so a client with no pod would be
    // refused whatever its label.
    let pods = |first: &str| {
        let mut pods = ClientHosts::default();
        for (address, app) in [("127.0.0.9", first), ("127.0.0.10", "web")] {
            pods.insert(
                address.parse().unwrap(),
                "default".into(),
                "web".into(),
                [("app".to_string(), app.to_string())].into(),
            );
        }
        pods
    };
    let (hosts_tx, hosts) = watch::channel(Arc::new(pods("web")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();

    // Replicas started before the control plane serves wait for their first snapshot with the
    // peer port (the readiness probe's target) closed.
    let replicas = [
        Replica::start(f.root(), &fabric, &address.to_string(), "127.0.0.2"),
        Replica::start(f.root(), &fabric, &address.to_string(), "127.0.0.3"),
    ];
    for replica in &replicas {
        replica.wait_for("waiting for the first snapshot");
        let refused =
            std::net::TcpStream::connect(("127.0.0.1", replica.peer_port)).map_err(|e| e.kind());
        assert_eq!(
            refused.err(),
            Some(std::io::ErrorKind::ConnectionRefused),
            "the peer port is open without a snapshot"
        );
        // Alive, but not ready for traffic: the probes Kubernetes would send say so.
        replica.wait_for("operations endpoint");
        assert_eq!(raw_http(replica.ops_port, "GET", "/healthz", b"").0, 200);
        let (status, why) = raw_http(replica.ops_port, "GET", "/readyz", b"");
        assert_eq!(status, 503, "{why}");
    }
    let (stop, shutdown) = watch::channel(false);
    let stream = tokio::spawn(clusterlink_dataplane::replica::serve(
        listener,
        "client".into(),
        tls.clone(),
        model.subscribe(),
        hosts.clone(),
        Default::default(),
        shutdown,
    ));
    for (replica, ip) in replicas.iter().zip(["127.0.0.2", "127.0.0.3"]) {
        replica.wait_for("import listening");
        replica.assert_serves(ip, target, b"hello").await;
        let log = replica.log();
        let at = |line: &str| {
            log.find(line)
                .unwrap_or_else(|| panic!("no {line:?} in:\n{log}"))
        };
        assert!(
            at("first snapshot applied") < at("peer port open"),
            "the peer port opened before there was anything to serve:\n{log}"
        );
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", replica.peer_port)).is_ok(),
            "the peer port opens with the first snapshot"
        );
        assert_eq!(raw_http(replica.ops_port, "GET", "/readyz", b"").0, 200);
        // A stranger holding many idle connections to the operations port is cut to its share
        // at accept, and the kubelet's probe (from another address) still gets its answer.
        let ops_port = replica.ops_port;
        // On a thread of its own: `connect_from` runs a runtime of its own.
        let strangers: Vec<_> = std::thread::spawn(move || {
            (0..40)
                .filter_map(|_| connect_from("127.0.0.7", "127.0.0.1", ops_port).ok())
                .collect()
        })
        .join()
        .unwrap();
        let closed = strangers
            .iter()
            .filter(|stranger| {
                // Closed at accept: EOF or reset at once. Held: the read times out.
                stranger
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                match std::io::Read::read(&mut &**stranger, &mut [0u8; 1]) {
                    Ok(0) => true,
                    Err(e) => !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    Ok(_) => false,
                }
            })
            .count();
        assert!(closed >= 20, "only {closed} of 40 were closed");
        assert_eq!(raw_http(replica.ops_port, "GET", "/healthz", b"").0, 200);
        drop(strangers);
        let (status, metrics) = raw_http(replica.ops_port, "GET", "/metrics", b"");
        assert_eq!(status, 200);
        assert_promtool_accepts(&metrics);
        assert!(
            metrics.contains("clusterlink_connections_accepted_total{side=\"egress\"} 1"),
            "the tunnel is not counted:\n{metrics}"
        );
    }

    // The control plane goes away: both replicas notice, and go on serving their snapshot.
    stop.send(true).unwrap();
    stream.await.unwrap();
    for (replica, ip) in replicas.iter().zip(["127.0.0.2", "127.0.0.3"]) {
        replica.wait_for("serving the last snapshot");
        replica.assert_serves(ip, target, b"still here").await;
    }

    // It comes back on the same address, now knowing the pod at 127.0.0.9 is labelled
    // app=blocked (it was app=web): the replicas reconnect and the deny policy applies to that client.
    hosts_tx.send_replace(Arc::new(pods("blocked")));
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let (_stop, shutdown) = watch::channel(false);
    tokio::spawn(clusterlink_dataplane::replica::serve(
        listener,
        "client".into(),
        tls,
        model.subscribe(),
        hosts,
        Default::default(),
        shutdown,
    ));
    for ip in ["127.0.0.2", "127.0.0.3"] {
        let denied = tokio::task::spawn_blocking(move || {
            eventually(CONVERGE, || {
                exchange_between("127.0.0.9", ip, target, b"x") == Exchange::Reset
            })
        });
        assert!(
            denied.await.unwrap(),
            "the blocked pod was never denied at {ip}"
        );
        // Another pod, labelled app=web, is still served.
        let other =
            tokio::task::spawn_blocking(move || exchange_between("127.0.0.10", ip, target, b"ok"));
        assert_eq!(
            other.await.unwrap(),
            Exchange::Served {
                backend: "echo".into()
            }
        );
    }
}

/// Everything this test binary logs, for a test to count lines in.
fn captured_log() -> Arc<parking_lot::Mutex<Vec<u8>>> {
    static LOG: std::sync::OnceLock<Arc<parking_lot::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Captured(writer.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        log
    })
    .clone()
}

struct Captured(Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_on_the_snapshot_stream_and_the_operations_port_never_keep_a_replica_out() {
    let log = captured_log();
    let f = Fabric::new(&["client"]);
    let fabric = f.fabric_dir();
    let credentials =
        Credentials::load(&TlsFiles::in_fabric(&fabric, &fabric.join("client"))).unwrap();
    let tls = watch::channel(Arc::new(GatewayTls::new(&credentials).unwrap())).1;
    let model = ControlPlane::open(Arc::new(MemoryStore::default())).unwrap();
    model
        .replace_all(objects(clusterlink_testbed::manifests::ALLOW_ALL))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let metrics = Arc::new(clusterlink_dataplane::metrics::Metrics::default());
    let (_stop, shutdown) = watch::channel(false);
    tokio::spawn(clusterlink_dataplane::replica::serve(
        listener,
        "client".into(),
        tls,
        model.subscribe(),
        watch::channel(Arc::default()).1,
        metrics.clone(),
        shutdown,
    ));
    // Every place of the stream taken by silent strangers from 32 networks, and some that
    // start a TLS handshake and give up: then a new replica starts.
    let stream_flood = tokio::task::spawn_blocking(move || {
        hostile::silent_flood(&hostile::networks(32), address, 300)
    })
    .await
    .unwrap();
    for source in hostile::networks(32) {
        let mut s = hostile::silent_connection(&source, address).unwrap();
        let _ = std::io::Write::write_all(&mut s, b"\x16\x03\x01 not a handshake");
    }
    let started = std::time::Instant::now();
    let replica = Replica::start(f.root(), &fabric, &address.to_string(), "127.0.0.2");
    replica.wait_for("peer port open");
    // In, not waiting for a stranger's place to time out.
    let took = started.elapsed();
    eprintln!(
        "a new replica got its snapshot in {took:?} past {} silent connections",
        stream_flood.len()
    );
    assert!(
        took < clusterlink_dataplane::Limits::DEFAULT.handshake,
        "{took:?}"
    );
    // Its operations port, flooded the same way, still answers the kubelet every time.
    replica.wait_for("operations endpoint");
    let ops = SocketAddr::from(([127, 0, 0, 1], replica.ops_port));
    let ops_flood = tokio::task::spawn_blocking(move || {
        hostile::silent_flood(&hostile::networks(32), ops, 100)
    })
    .await
    .unwrap();
    assert!(ops_flood.len() >= 90);
    let ops_port = replica.ops_port;
    let probes = tokio::task::spawn_blocking(move || {
        (0..10)
            .map(|_| raw_http(ops_port, "GET", "/healthz", b"").0)
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(probes.iter().all(|code| *code == 200), "{probes:?}");
    assert_eq!(raw_http(ops_port, "GET", "/readyz", b"").0, 200);
    // The strangers are counted, and cost a line or two, not one each.
    let unserved = metrics.encode();
    assert!(
        unserved.contains("listener=\"replica\",reason=\"ListenerLimit\"")
            || unserved.contains("listener=\"replica\",reason=\"SourceLimit\""),
        "{unserved}"
    );
    // This test's strangers come from 127.N.0.1, N > 0: lines about them only.
    let text = String::from_utf8_lossy(&log.lock()).into_owned();
    let lines = text
        .lines()
        .filter(|l| l.contains("remote=127.") && !l.contains("remote=127.0."))
        .count();
    assert!(lines <= 6, "{lines} lines:\n{text}");
    drop((stream_flood, ops_flood));
}
