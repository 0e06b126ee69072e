//! Two Kubernetes clusters, end to end. Each cluster is a site of the sites test bed (a network
//! namespace playing the cluster's node) running a real API server and etcd, its
//! `cl-controlplane` (authenticated with its own ServiceAccount's token) and two `cl-dataplane`
//! replicas, all as processes. No kubelet runs: pods are objects whose status the test writes,
//! as a kubelet would, and the pod addresses are addresses of the site reachable only inside it.
//! The replicas' peer ports face the WAN, and the site's firewall lets in only those.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clusterlink_testbed::cluster::{TestCluster, testenv_bin};
use clusterlink_testbed::netns::{Site, Wan};
use support::sites::{EchoService, can_run};
use support::{CLUSTERLINK, Fabric, cl_dataplane, eventually, stderr, stdout};

const SYSTEM: &str = "clusterlink-system";
const CL_CONTROLPLANE: &str = env!("CARGO_BIN_EXE_cl-controlplane");
/// Each replica's peer port on the site's WAN address: two replicas share the site's one
/// address, where in a cluster each pod has its own.
const REPLICA_PEER_PORTS: [u16; 2] = [4443, 4444];
/// The replicas' pod addresses: their import listeners and operations endpoints bind there, and
/// their Pod objects carry them as `status.podIP`.
const REPLICA_ADDRESSES: [&str; 2] = ["10.244.0.2", "10.244.0.3"];
/// The client pods of the importing cluster, by address.
const FRONTEND: &str = "10.244.0.10";
const INTRUDER: &str = "10.244.0.11";
/// A client with no pod at all.
const STRANGER: &str = "10.244.0.12";
/// nginx in the exporting site.
const WEB_PORT: u16 = 8080;
/// Bounds on waits that end on an event; generous for a loaded 2-core machine.
const CONVERGE: Duration = Duration::from_secs(60);
/// How many imports the figure "import created → port accepting" is measured over.
const MEASURED_IMPORTS: usize = 20;

/// One cluster in its site: the API server, the controller and two data-plane replicas.
struct Cluster {
    peer: String,
    site: Site,
    dir: PathBuf,
    fabric: PathBuf,
    api: TestCluster,
    controller: Option<Child>,
    replicas: [Option<Child>; 2],
    /// The peer's labels, `KEY=VALUE`, as `deploy peer --label` passes them to its replicas.
    labels: Vec<String>,
    /// Deployed with the Multi-Cluster Services API (`--mcs-api`).
    mcs_api: bool,
}

impl Cluster {
    /// Deploys peer `peer` into a new cluster in `site`, as `clusterlink deploy peer` would,
    /// then starts its processes where the kubelet would run its pods.
    fn start(bin: &Path, site: &Site, fabric: &Fabric, peer: &str, labels: &[&str]) -> Cluster {
        Cluster::start_with(bin, site, fabric, peer, labels, false)
    }

    /// [`Cluster::start`], with the Multi-Cluster Services API's CRDs installed and turned on
    /// when `mcs_api`.
    fn start_with(
        bin: &Path,
        site: &Site,
        fabric: &Fabric,
        peer: &str,
        labels: &[&str],
        mcs_api: bool,
    ) -> Cluster {
        let dir = fabric.root().join(format!("cluster-{peer}"));
        for address in REPLICA_ADDRESSES
            .iter()
            .chain(&[FRONTEND, INTRUDER, STRANGER])
        {
            site.add_local_address(address.parse().unwrap()).unwrap();
        }
        let api = TestCluster::start_in(bin, &dir.join("api"), Some(site)).expect("a cluster");
        let mut cluster = Cluster {
            peer: peer.to_string(),
            site: site.clone(),
            dir,
            fabric: fabric.fabric_dir(),
            api,
            controller: None,
            replicas: [None, None],
            labels: labels.iter().map(|l| l.to_string()).collect(),
            mcs_api,
        };
        if mcs_api {
            let crds = clusterlink_testbed::cluster::mcs_api_crds(bin);
            cluster.kubectl(&["apply", "-f", crds.to_str().unwrap()]);
        }
        let deploy = cluster
            .in_site(Path::new(CLUSTERLINK))
            .args(["deploy", "peer", "--name", peer, "--path"])
            .arg(fabric.root())
            .arg("--kubeconfig")
            .arg(&cluster.api.kubeconfig)
            .args(mcs_api.then_some("--mcs-api"))
            .output()
            .unwrap();
        assert!(deploy.status.success(), "{}", stderr(&deploy));
        cluster.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "-l",
            "app.kubernetes.io/part-of=clusterlink",
        ]);
        for (i, address) in REPLICA_ADDRESSES.iter().enumerate() {
            let labels = format!(
                "{{app.kubernetes.io/name: cl-dataplane, app.kubernetes.io/instance: {peer}}}"
            );
            cluster.pod(
                SYSTEM,
                &format!("cl-dataplane-{i}"),
                &labels,
                "cl-dataplane",
            );
            cluster.set_pod_status(SYSTEM, &format!("cl-dataplane-{i}"), address, true);
        }
        cluster.start_controller();
        for i in 0..2 {
            cluster.start_replica(i);
        }
        cluster
    }

    fn in_site(&self, program: &Path) -> Command {
        self.site.command(program)
    }

    fn kubectl(&self, args: &[&str]) -> String {
        self.api
            .kubectl(args)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    fn apply(&self, yaml: &str) {
        self.api
            .kubectl_with(&["apply", "-f", "-"], Some(yaml))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// A Pod object, as a Deployment's controller would create it (no kubelet will run it).
    fn pod(&self, namespace: &str, name: &str, labels: &str, account: &str) {
        self.apply(&format!(
            "{{apiVersion: v1, kind: Pod, metadata: {{name: {name}, namespace: {namespace}, labels: {labels}}}, spec: {{serviceAccountName: {account}, containers: [{{name: main, image: example.invalid/none}}]}}}}"
        ));
    }

    /// What the kubelet reports for a pod: running at `address`, ready or not.
    fn set_pod_status(&self, namespace: &str, name: &str, address: &str, ready: bool) {
        let ready = if ready { "True" } else { "False" };
        let status = format!(
            r#"{{"status":{{"phase":"Running","podIP":"{address}","podIPs":[{{"ip":"{address}"}}],"conditions":[{{"type":"Ready","status":"{ready}"}}]}}}}"#
        );
        self.kubectl(&[
            "patch",
            "pod",
            name,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ]);
    }

    fn tls_args(&self) -> Vec<String> {
        let peer = self.fabric.join(&self.peer);
        vec![
            format!("--ca={}", self.fabric.join("cert.pem").display()),
            format!("--cert={}", peer.join("cert.pem").display()),
            format!("--key={}", peer.join("key.pem").display()),
        ]
    }

    /// `cl-controlplane` with a token of its own ServiceAccount, from the TokenRequest API.
    fn start_controller(&mut self) {
        let kubeconfig = self
            .api
            .service_account_kubeconfig(SYSTEM, "cl-controlplane")
            .unwrap();
        let selector = format!(
            "app.kubernetes.io/name=cl-dataplane,app.kubernetes.io/instance={}",
            self.peer
        );
        let child = self
            .in_site(Path::new(CL_CONTROLPLANE))
            .env("KUBECONFIG", kubeconfig)
            .args(self.tls_args())
            .args([
                "--namespace",
                SYSTEM,
                "--snapshot-address",
                "127.0.0.1:8444",
                "--ops-address",
                "127.0.0.1:9090",
                "--dataplane-selector",
                &selector,
            ])
            .args(self.mcs_api.then_some("--mcs-api"))
            .stdout(Stdio::null())
            .stderr(self.log_file("controller"))
            .spawn()
            .unwrap();
        self.controller = Some(child);
    }

    fn start_replica(&mut self, i: usize) {
        let address = REPLICA_ADDRESSES[i];
        let child = self
            .in_site(&cl_dataplane())
            .args(self.tls_args())
            .args([
                "--control-plane",
                "127.0.0.1:8444",
                "--peer-address",
                &format!("{}:{}", self.site.address, REPLICA_PEER_PORTS[i]),
                "--import-address",
                address,
                "--ops-address",
                &format!("{address}:9090"),
            ])
            .args(self.labels.iter().map(|l| format!("--label={l}")))
            .stdout(Stdio::null())
            .stderr(self.log_file(&format!("replica-{i}")))
            .spawn()
            .unwrap();
        self.replicas[i] = Some(child);
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .unwrap()
    }

    /// Every process's log, for a failure message.
    fn logs(&self) -> String {
        ["controller", "replica-0", "replica-1"]
            .iter()
            .map(|name| {
                let log = std::fs::read_to_string(self.dir.join(format!("{name}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(12)..].join("\n");
                format!("--- {} {name}:\n{tail}\n", self.peer)
            })
            .collect()
    }

    fn kill(child: &mut Option<Child>) {
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `GET http://address:9090/path` from inside the site: the status code and body.
    fn ops_get(&self, address: &str, path: &str) -> (u16, String) {
        let to: SocketAddr = format!("{address}:9090").parse().unwrap();
        let Ok(mut conn) = self.site.connect(to, Duration::from_secs(2)) else {
            return (0, String::new());
        };
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: {address}:9090\r\nConnection: close\r\n\r\n"
        );
        let mut response = String::new();
        let _ = conn.read_to_string(&mut response);
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// `curl` from a client at `source` to `address:port` in this site: the page, or why not.
    fn curl(&self, source: &str, address: &str, port: u16) -> Result<String, String> {
        let out = self
            .in_site(Path::new("curl"))
            .args(["-sS", "--fail", "--max-time", "10", "--interface", source])
            .arg(format!("http://{address}:{port}/"))
            .output()
            .unwrap();
        if out.status.success() {
            Ok(stdout(&out))
        } else {
            Err(stderr(&out))
        }
    }

    fn import_target_port(&self, name: &str) -> Option<u16> {
        self.api
            .kubectl(&[
                "get",
                "import",
                name,
                "-n",
                "default",
                "-o",
                "jsonpath={.spec.targetPort}",
            ])
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        Cluster::kill(&mut self.controller);
        for replica in &mut self.replicas {
            Cluster::kill(replica);
        }
    }
}

/// A TCP connection from `source` to `to`, made inside `site`.
fn connect_from(site: &Site, source: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    site.enter(|| support::connect_from(source, &to.ip().to_string(), to.port()))?
}

/// A live conversation with the echo service: its greeting read, then it echoes.
struct Conversation(TcpStream);

impl Conversation {
    fn open(site: &Site, source: &str, to: SocketAddr) -> Option<Conversation> {
        let conn = connect_from(site, source, to).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let mut greeting = [0u8; 5];
        (&conn).read_exact(&mut greeting).ok()?;
        (&greeting == b"echo\n").then_some(Conversation(conn))
    }

    fn echoes(&mut self, message: &[u8]) -> bool {
        let mut back = vec![0u8; message.len()];
        self.0.write_all(message).is_ok() && self.0.read_exact(&mut back).is_ok() && back == message
    }

    /// Waits (up to the read timeout) for the far end to close or reset the connection.
    fn closed(&mut self) -> bool {
        match self.0.read(&mut [0u8; 64]) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
        }
    }
}

/// A process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nginx(site: &Site, dir: &Path) -> Running {
    let conf = support::sites::nginx_config(dir, WEB_PORT);
    let page = format!("served by nginx in {}\n", site.name);
    std::fs::write(dir.join("www/index.html"), page).unwrap();
    let child = site
        .command("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Running(child)
}

fn policy(name: &str, action: &str, from_app: &str) -> String {
    format!(
        "{{apiVersion: clusterlink.net/v1alpha1, kind: AccessPolicy, metadata: {{name: {name}, namespace: default}}, spec: {{action: {action}, from: [{{workloadSelector: {{matchLabels: {{client.clusterlink.net/labels.app: {from_app}}}}}}}], to: [{{workloadSelector: {{}}}}]}}}}"
    )
}

fn import(name: &str, port: u16, target: Option<u16>) -> String {
    let target = target.map_or(String::new(), |t| format!(", targetPort: {t}"));
    format!(
        "{{apiVersion: clusterlink.net/v1alpha1, kind: Import, metadata: {{name: {name}, namespace: default}}, spec: {{port: {port}{target}, sources: [{{peer: west, exportName: {name}, exportNamespace: default}}]}}}}"
    )
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

#[test]
fn two_clusters_carry_an_import_decided_by_pod_attributes_through_replica_and_controller_loss() {
    let test = "two_clusters_carry_an_import_decided_by_pod_attributes_through_replica_and_controller_loss";
    if !can_run(test, &["nginx", "curl"]) {
        return;
    }
    let bin = testenv_bin().expect("the Kubernetes test environment");
    let fabric = Fabric::new(&["east", "west"]);
    let wan = Wan::create(&["east", "west"], &REPLICA_PEER_PORTS).expect("the sites");
    let (east_site, west_site) = (wan.site("east").unwrap(), wan.site("west").unwrap());
    let mut east = Cluster::start(&bin, east_site, &fabric, "east", &[]);
    let mut west = Cluster::start(&bin, west_site, &fabric, "west", &["env=prod"]);

    // The Peer objects point at each other's replicas, across the WAN.
    for (cluster, other) in [(&east, west_site), (&west, east_site)] {
        let gateways: Vec<String> = REPLICA_PEER_PORTS
            .iter()
            .map(|port| format!("{{host: {}, port: {port}}}", other.address))
            .collect();
        cluster.apply(&format!(
            "{{apiVersion: clusterlink.net/v1alpha1, kind: Peer, metadata: {{name: {}, namespace: {SYSTEM}}}, spec: {{gateways: [{}]}}}}",
            other.name,
            gateways.join(", ")
        ));
    }

    // East's Peer for west shows the labels west's replicas report about themselves, and its
    // conditions say which generation of the object they describe.
    let peer_status = |field: &str| {
        east.api
            .kubectl(&[
                "get",
                "peer",
                "west",
                "-n",
                SYSTEM,
                "-o",
                &format!("jsonpath={field}"),
            ])
            .unwrap_or_default()
    };
    assert!(
        eventually(CONVERGE, || peer_status("{.status.labels.env}") == "prod"),
        "west's labels never showed: {:?}\n{}",
        peer_status("{.status}"),
        east.logs()
    );
    assert_eq!(
        peer_status("{.status.conditions[0].observedGeneration}"),
        "1"
    );

    // West exports nginx and an echo service in its site, and lets every peer in.
    let _nginx = nginx(west_site, &fabric.root().join("nginx"));
    let echo = EchoService::start(west_site, "echo");
    west.apply(&format!(
        "{{apiVersion: clusterlink.net/v1alpha1, kind: Export, metadata: {{name: web, namespace: default}}, spec: {{host: {}, port: {WEB_PORT}}}}}",
        west_site.address
    ));
    west.apply(&format!(
        "{{apiVersion: clusterlink.net/v1alpha1, kind: Export, metadata: {{name: echo, namespace: default}}, spec: {{host: {}, port: {}}}}}",
        west_site.address, echo.port
    ));
    west.apply(clusterlink_testbed::manifests::ALLOW_ALL);

    // East's client pods, known only through the API: their labels decide its egress policy.
    for (name, address, app) in [
        ("frontend", FRONTEND, "frontend"),
        ("intruder", INTRUDER, "other"),
    ] {
        east.apply(&format!(
            "{{apiVersion: v1, kind: ServiceAccount, metadata: {{name: {name}, namespace: default}}}}"
        ));
        east.pod("default", name, &format!("{{app: {app}}}"), name);
        east.set_pod_status("default", name, address, true);
    }
    east.apply(&policy("frontend-only", "allow", "frontend"));
    east.apply(&import("web", 80, None));

    // The import becomes a Service whose endpoints are the two replicas.
    assert!(
        eventually(CONVERGE, || east.import_target_port("web").is_some()),
        "no target port for the import\n{}",
        east.logs()
    );
    let target = east.import_target_port("web").unwrap();
    let endpoints = || {
        east.api
            .kubectl(&[
                "get",
                "endpointslices",
                "-n",
                "default",
                "-l",
                "clusterlink.net/import=web",
                "-o",
                "jsonpath={.items[*].endpoints[*].addresses[*]}",
            ])
            .unwrap_or_default()
    };
    assert!(
        eventually(CONVERGE, || {
            let e = endpoints();
            REPLICA_ADDRESSES.iter().all(|a| e.contains(a))
        }),
        "the import's endpoints are not the replicas: {:?}\n{}\n{}\n{}",
        endpoints(),
        east.kubectl(&["get", "endpointslices", "-A", "-o", "yaml"]),
        east.kubectl(&["get", "pods", "-A", "-o", "wide", "--show-labels"]),
        east.logs() + &west.logs()
    );

    // The frontend pod gets the page through either replica; the pod labelled otherwise and an
    // address with no pod are refused by the same replicas.
    for replica in REPLICA_ADDRESSES {
        assert!(
            eventually(CONVERGE, || east.curl(FRONTEND, replica, target).is_ok()),
            "no page through {replica}: {:?}\n{}{}",
            east.curl(FRONTEND, replica, target),
            east.logs(),
            west.logs()
        );
        assert_eq!(
            east.curl(FRONTEND, replica, target).unwrap(),
            "served by nginx in west\n"
        );
        for refused in [INTRUDER, STRANGER] {
            let result = east.curl(refused, replica, target);
            assert!(result.is_err(), "{refused} was served: {result:?}");
        }
    }
    let (status, metrics) = east.ops_get(REPLICA_ADDRESSES[0], "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            "clusterlink_import_bytes_total{name=\"default/web\",direction=\"received\"}"
        ),
        "{metrics}"
    );
    assert_eq!(east.ops_get("127.0.0.1", "/readyz").0, 200);

    // An AccessPolicy applied with kubectl revokes a live connection.
    east.apply(&import("echo", 7000, None));
    assert!(eventually(CONVERGE, || east
        .import_target_port("echo")
        .is_some()));
    let echo_at: SocketAddr = format!(
        "{}:{}",
        REPLICA_ADDRESSES[0],
        east.import_target_port("echo").unwrap()
    )
    .parse()
    .unwrap();
    let mut live = None;
    assert!(
        eventually(CONVERGE, || {
            live = Conversation::open(east_site, FRONTEND, echo_at);
            live.is_some()
        }),
        "the echo import never served\n{}",
        east.logs()
    );
    let mut live = live.unwrap();
    assert!(live.echoes(b"before"));
    let applied = Instant::now();
    east.apply(&policy("deny-frontend", "deny", "frontend"));
    assert!(
        live.closed(),
        "the live connection outlived the deny policy"
    );
    let revoked = applied.elapsed();
    assert!(
        eventually(CONVERGE, || east
            .curl(FRONTEND, REPLICA_ADDRESSES[0], target)
            .is_err()),
        "new connections are still served"
    );
    east.kubectl(&["delete", "accesspolicy", "deny-frontend", "-n", "default"]);
    assert!(
        eventually(CONVERGE, || east
            .curl(FRONTEND, REPLICA_ADDRESSES[0], target)
            .is_ok()),
        "deleting the deny policy did not restore the service"
    );

    // A replica of the exporting cluster dies: the other carries every new connection.
    Cluster::kill(&mut west.replicas[0]);
    for i in 0..10 {
        let page = east.curl(FRONTEND, REPLICA_ADDRESSES[0], target);
        assert!(
            page.is_ok(),
            "request {i} after west lost a replica: {page:?}"
        );
    }

    // A replica of the importing cluster dies and its pod turns unready (as the kubelet would
    // report): the import's endpoints shrink to the other, which serves.
    Cluster::kill(&mut east.replicas[0]);
    east.set_pod_status(SYSTEM, "cl-dataplane-0", REPLICA_ADDRESSES[0], false);
    assert!(
        eventually(CONVERGE, || {
            let e = endpoints();
            !e.contains(REPLICA_ADDRESSES[0]) && e.contains(REPLICA_ADDRESSES[1])
        }),
        "the dead replica stayed an endpoint: {:?}",
        endpoints()
    );
    assert!(east.curl(FRONTEND, REPLICA_ADDRESSES[1], target).is_ok());

    // The control plane goes away: the replica keeps serving its last snapshot.
    Cluster::kill(&mut east.controller);
    for i in 0..5 {
        let page = east.curl(FRONTEND, REPLICA_ADDRESSES[1], target);
        assert!(
            page.is_ok(),
            "request {i} without a control plane: {page:?}"
        );
    }
    // Restarted, it converges and streams again: a change made after the restart reaches the
    // replica, and traffic never stopped.
    east.start_controller();
    assert!(
        eventually(CONVERGE, || east.ops_get("127.0.0.1", "/readyz").0 == 200),
        "the restarted control plane never became ready\n{}",
        east.logs()
    );
    east.apply(&policy("deny-frontend", "deny", "frontend"));
    assert!(
        eventually(CONVERGE, || east
            .curl(FRONTEND, REPLICA_ADDRESSES[1], target)
            .is_err()),
        "a policy applied after the restart never reached the replica\n{}",
        east.logs()
    );
    east.kubectl(&["delete", "accesspolicy", "deny-frontend", "-n", "default"]);
    assert!(eventually(CONVERGE, || east
        .curl(FRONTEND, REPLICA_ADDRESSES[1], target)
        .is_ok()));

    // The figure: Import created (kubectl apply returns) → its port accepting on a replica.
    let (mut took, mut applied) = (Vec::new(), Vec::new());
    for i in 0..MEASURED_IMPORTS {
        let port = 21000 + i as u16;
        let to: SocketAddr = format!("{}:{port}", REPLICA_ADDRESSES[1]).parse().unwrap();
        let began = Instant::now();
        east.apply(&import(
            &format!("measured-{i}"),
            8000 + i as u16,
            Some(port),
        ));
        applied.push(began.elapsed());
        assert!(
            eventually(CONVERGE, || east_site
                .connect(to, Duration::from_secs(1))
                .is_ok()),
            "import measured-{i} never accepted\n{}",
            east.logs()
        );
        took.push(began.elapsed());
    }
    took.sort();
    applied.sort();
    eprintln!(
        "FIGURE import created -> port accepting over {MEASURED_IMPORTS}: p50 {:?}, max {:?} \
         (kubectl apply itself: p50 {:?}); deny policy applied -> live tunnel closed: {revoked:?}",
        percentile(&took, 50),
        took[took.len() - 1],
        percentile(&applied, 50),
    );
    drop(echo);
}

#[test]
fn a_cluster_behind_nat_reaches_another_over_links_its_replicas_dial() {
    let test = "a_cluster_behind_nat_reaches_another_over_links_its_replicas_dial";
    if !can_run(test, &["nginx", "curl"]) {
        return;
    }
    let bin = testenv_bin().expect("the Kubernetes test environment");
    let fabric = Fabric::new(&["east", "west"]);
    // East has no LoadBalancer and no inbound path at all: it sits behind a masquerading NAT.
    let wan =
        Wan::create_with_nat(&["east", "west"], &["east"], &REPLICA_PEER_PORTS).expect("the sites");
    let (east_site, west_site) = (wan.site("east").unwrap(), wan.site("west").unwrap());
    let east = Cluster::start(&bin, east_site, &fabric, "east", &[]);
    let west = Cluster::start(&bin, west_site, &fabric, "west", &[]);
    let gateways: Vec<String> = REPLICA_PEER_PORTS
        .iter()
        .map(|port| format!("{{host: {}, port: {port}}}", west_site.address))
        .collect();
    east.apply(&format!(
        "{{apiVersion: clusterlink.net/v1alpha1, kind: Peer, metadata: {{name: west, namespace: {SYSTEM}}}, spec: {{gateways: [{}], dial: true}}}}",
        gateways.join(", ")
    ));
    west.apply(&format!(
        "{{apiVersion: clusterlink.net/v1alpha1, kind: Peer, metadata: {{name: east, namespace: {SYSTEM}}}, spec: {{}}}}"
    ));
    let _nginx = nginx(west_site, &fabric.root().join("nginx"));
    west.apply(&format!(
        "{{apiVersion: clusterlink.net/v1alpha1, kind: Export, metadata: {{name: web, namespace: default}}, spec: {{host: {}, port: {WEB_PORT}}}}}",
        west_site.address
    ));
    west.apply(clusterlink_testbed::manifests::ALLOW_ALL);
    east.apply(
        "{apiVersion: v1, kind: ServiceAccount, metadata: {name: frontend, namespace: default}}",
    );
    east.pod("default", "frontend", "{app: frontend}", "frontend");
    east.set_pod_status("default", "frontend", FRONTEND, true);
    east.apply(&policy("frontend-only", "allow", "frontend"));
    east.apply(&import("web", 80, None));
    assert!(
        eventually(CONVERGE, || east.import_target_port("web").is_some()),
        "no target port for the import\n{}",
        east.logs()
    );
    let target = east.import_target_port("web").unwrap();
    // Every replica of east dialed a link of its own, and serves over it.
    for replica in REPLICA_ADDRESSES {
        assert!(
            eventually(CONVERGE, || east.curl(FRONTEND, replica, target).is_ok()),
            "no page through {replica}: {:?}\n{}{}",
            east.curl(FRONTEND, replica, target),
            east.logs(),
            west.logs()
        );
        assert_eq!(
            east.curl(FRONTEND, replica, target).unwrap(),
            "served by nginx in west\n"
        );
    }
    for i in 0..2 {
        let log = std::fs::read_to_string(east.dir.join(format!("replica-{i}.log"))).unwrap();
        assert!(
            log.contains("link up"),
            "replica {i} dialed no link:\n{log}"
        );
    }

    // The other way: each replica of east dialed each replica of west (both are listed), so
    // west's clients reach east's export through either west replica.
    let _east_nginx = nginx(east_site, &fabric.root().join("east-nginx"));
    east.apply(&format!(
        "{{apiVersion: clusterlink.net/v1alpha1, kind: Export, metadata: {{name: shop, namespace: default}}, spec: {{host: {}, port: {WEB_PORT}}}}}",
        east_site.address
    ));
    east.apply(clusterlink_testbed::manifests::ALLOW_ALL);
    west.apply(
        "{apiVersion: v1, kind: ServiceAccount, metadata: {name: frontend, namespace: default}}",
    );
    west.pod("default", "frontend", "{app: frontend}", "frontend");
    west.set_pod_status("default", "frontend", FRONTEND, true);
    west.apply(&policy("frontend-only", "allow", "frontend"));
    west.apply(
        "{apiVersion: clusterlink.net/v1alpha1, kind: Import, metadata: {name: shop, namespace: default}, spec: {port: 80, sources: [{peer: east, exportName: shop, exportNamespace: default}]}}",
    );
    assert!(
        eventually(CONVERGE, || west.import_target_port("shop").is_some()),
        "no target port for west's import\n{}",
        west.logs()
    );
    let target = west.import_target_port("shop").unwrap();
    for replica in REPLICA_ADDRESSES {
        assert!(
            eventually(CONVERGE, || west.curl(FRONTEND, replica, target).is_ok()),
            "west's client got no page through its replica {replica}: {:?}\n{}{}",
            west.curl(FRONTEND, replica, target),
            west.logs(),
            east.logs()
        );
        assert_eq!(
            west.curl(FRONTEND, replica, target).unwrap(),
            "served by nginx in east\n"
        );
    }
    // West's control plane holds no link: it does not call a peer it cannot probe unreachable.
    let reachable = || {
        west.api
            .kubectl(&[
                "get",
                "peer",
                "east",
                "-n",
                SYSTEM,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"PeerReachable\")].status}",
            ])
            .unwrap_or_default()
    };
    assert!(
        eventually(CONVERGE, || reachable() == "Unknown"),
        "west's Peer east: {:?}",
        reachable()
    );
}

/// Names of Services in a site resolve to the site's own address, as cluster DNS would resolve
/// them to the Service: `ip netns exec` puts `/etc/netns/<namespace>/hosts` in place of the
/// site's `/etc/hosts`. Removed when dropped.
struct ServiceNames(PathBuf);

impl ServiceNames {
    fn new(site: &Site, names: &[String]) -> ServiceNames {
        let dir = PathBuf::from("/etc/netns").join(&site.namespace);
        std::fs::create_dir_all(&dir).unwrap();
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for name in names {
            hosts.push_str(&format!("{} {name}.default.svc\n", site.address));
        }
        std::fs::write(dir.join("hosts"), hosts).unwrap();
        ServiceNames(dir)
    }
}

impl Drop for ServiceNames {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Service without pods (no kubelet runs them) on `port`, labelled `labels`.
fn service(name: &str, port: u16, labels: &str) -> String {
    format!(
        "{{apiVersion: v1, kind: Service, metadata: {{name: {name}, namespace: default, labels: {labels}}}, spec: {{ports: [{{port: {port}}}]}}}}"
    )
}

const EXPORTED: &str = "{clusterlink.net/export: \"true\"}";

/// Who greets a client at `FRONTEND` connecting to `to` in `site` (an echo service's name).
fn greeted_by(site: &Site, to: SocketAddr) -> Option<String> {
    let conn = connect_from(site, FRONTEND, to).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut greeting = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(conn), &mut greeting).ok()?;
    let name = greeting.trim();
    (!name.is_empty()).then(|| name.to_string())
}

#[test]
fn labelled_services_in_two_clusters_are_mirrored_into_a_third_and_follow_their_labels() {
    let test =
        "labelled_services_in_two_clusters_are_mirrored_into_a_third_and_follow_their_labels";
    if !can_run(test, &[]) {
        return;
    }
    let bin = testenv_bin().expect("the Kubernetes test environment");
    let fabric = Fabric::new(&["east", "west1", "west2"]);
    let wan = Wan::create(&["east", "west1", "west2"], &REPLICA_PEER_PORTS).expect("the sites");
    let (east_site, west1_site, west2_site) = (
        wan.site("east").unwrap(),
        wan.site("west1").unwrap(),
        wan.site("west2").unwrap(),
    );
    // West1 runs MEASURED_IMPORTS services and a copy of `shared`; west2 another copy.
    let services: Vec<String> = (1..=MEASURED_IMPORTS)
        .map(|i| format!("svc-{i:02}"))
        .collect();
    let by_mcs = EchoService::start(west1_site, "by-mcs");
    let echoes: Vec<EchoService> = services
        .iter()
        .map(|name| EchoService::start(west1_site, name))
        .collect();
    let shared1 = EchoService::start(west1_site, "west1");
    let shared2 = EchoService::start(west2_site, "west2");
    let mut west1_names = services.clone();
    west1_names.extend(["shared".into(), "by-mcs".into()]);
    let _west1_names = ServiceNames::new(west1_site, &west1_names);
    let _west2_names = ServiceNames::new(west2_site, &["shared".to_string()]);
    // East and west1 speak the Multi-Cluster Services API too; west2 does not.
    let east = Cluster::start_with(&bin, east_site, &fabric, "east", &[], true);
    let mut west1 = Cluster::start_with(&bin, west1_site, &fabric, "west1", &[], true);
    let west2 = Cluster::start(&bin, west2_site, &fabric, "west2", &[]);
    for west in [&west1, &west2] {
        west.apply(clusterlink_testbed::manifests::ALLOW_ALL);
    }
    east.apply(clusterlink_testbed::manifests::ALLOW_ALL);
    // East mirrors everything each west cluster offers.
    for (name, site) in [("west1", west1_site), ("west2", west2_site)] {
        let gateways: Vec<String> = REPLICA_PEER_PORTS
            .iter()
            .map(|port| format!("{{host: {}, port: {port}}}", site.address))
            .collect();
        east.apply(&format!(
            "{{apiVersion: clusterlink.net/v1alpha1, kind: Peer, metadata: {{name: {name}, namespace: {SYSTEM}}}, spec: {{gateways: [{}], mirror: {{}}}}}}",
            gateways.join(", ")
        ));
    }
    let through = |name: &str| -> Option<SocketAddr> {
        let target = east.import_target_port(name)?;
        Some(
            format!("{}:{target}", REPLICA_ADDRESSES[0])
                .parse()
                .unwrap(),
        )
    };

    // Label a Service in west1: east gets an Import (and its Service) that carries traffic.
    let mut took = Vec::new();
    for (name, echo) in services.iter().zip(&echoes) {
        let labelled = Instant::now();
        west1.apply(&service(name, echo.port, EXPORTED));
        assert!(
            eventually(CONVERGE, || through(name)
                .and_then(|to| greeted_by(east_site, to))
                .as_deref()
                == Some(name.as_str())),
            "{name} not served in east\n{}{}",
            east.logs(),
            west1.logs()
        );
        took.push(labelled.elapsed());
    }
    took.sort();
    eprintln!(
        "label in west1 → first byte served in east, over {} Services: p50 {:?}, max {:?}",
        took.len(),
        percentile(&took, 50),
        took.last().unwrap()
    );
    let mirrored = east.kubectl(&[
        "get",
        "import",
        "svc-01",
        "-n",
        "default",
        "-o",
        "jsonpath={.metadata.labels.clusterlink\\.net/mirrored} {.spec.sources[*].peer}",
    ]);
    assert_eq!(mirrored, "true west1");
    assert!(
        east.kubectl(&["get", "service", "svc-01", "-n", "default"])
            .contains("svc-01")
    );

    // Taking the label off withdraws it: the Import and its Service go.
    west1.apply(&service(&services[0], echoes[0].port, "{}"));
    assert!(
        eventually(CONVERGE, || east
            .api
            .kubectl(&["get", "import", "svc-01", "-n", "default"])
            .is_err()),
        "svc-01 still imported"
    );
    assert!(eventually(CONVERGE, || east
        .api
        .kubectl(&["get", "service", "svc-01", "-n", "default"])
        .is_err()));

    // A ServiceExport works as the label does, and east publishes a ServiceImport for it that
    // points at the Import's Service.
    west1.apply(&service("by-mcs", by_mcs.port, "{}"));
    let service_export = "{apiVersion: multicluster.x-k8s.io/v1alpha1, kind: ServiceExport, metadata: {name: by-mcs, namespace: default}}";
    west1.apply(service_export);
    assert!(
        eventually(CONVERGE, || through("by-mcs")
            .and_then(|to| greeted_by(east_site, to))
            .as_deref()
            == Some("by-mcs")),
        "by-mcs not served in east\n{}{}",
        east.logs(),
        west1.logs()
    );
    let published = || {
        east.api
            .kubectl(&[
                "get",
                "serviceimport",
                "by-mcs",
                "-n",
                "default",
                "-o",
                "jsonpath={.spec.type} {.spec.ips[0]} {.spec.ports[0].port}",
            ])
            .unwrap_or_default()
    };
    let cluster_ip = east.kubectl(&[
        "get",
        "service",
        "by-mcs",
        "-n",
        "default",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert!(
        eventually(CONVERGE, || published()
            == format!("ClusterSetIP {cluster_ip} {}", by_mcs.port)),
        "{:?}",
        published()
    );
    west1.kubectl(&["delete", "serviceexport", "by-mcs", "-n", "default"]);
    assert!(
        eventually(CONVERGE, || east
            .api
            .kubectl(&["get", "import", "by-mcs", "-n", "default"])
            .is_err()
            && published().is_empty()),
        "by-mcs not withdrawn"
    );

    // One name exported by both west clusters: one Import with two sources, served by both.
    west1.apply(&service("shared", shared1.port, EXPORTED));
    west2.apply(&service("shared", shared2.port, EXPORTED));
    let sources = || {
        east.api
            .kubectl(&[
                "get",
                "import",
                "shared",
                "-n",
                "default",
                "-o",
                "jsonpath={.spec.sources[*].peer}",
            ])
            .unwrap_or_default()
    };
    assert!(
        eventually(CONVERGE, || sources() == "west1 west2"),
        "{:?}",
        sources()
    );
    let mut seen = std::collections::BTreeSet::new();
    assert!(
        eventually(CONVERGE, || {
            seen.extend(through("shared").and_then(|to| greeted_by(east_site, to)));
            seen.len() == 2
        }),
        "shared served by {seen:?} only"
    );
    // West1 is cut off (its data plane gone): every connection reaches west2.
    for replica in &mut west1.replicas {
        Cluster::kill(replica);
    }
    assert!(
        eventually(CONVERGE, || (0..5).all(|_| through("shared")
            .and_then(|to| greeted_by(east_site, to))
            .as_deref()
            == Some("west2"))),
        "no failover to west2\n{}",
        east.logs()
    );
}
