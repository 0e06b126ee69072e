//! Test harness: real binaries, real certificates, listeners on port 0.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

pub mod hostile;
pub mod manifests;
pub mod sites;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const CLUSTERLINK: &str = env!("CARGO_BIN_EXE_clusterlink");
pub const GWCTL: &str = env!("CARGO_BIN_EXE_gwctl");
pub const CL_GATEWAY: &str = env!("CARGO_BIN_EXE_cl-gateway");

/// `cl-dataplane` is built by its own crate (`clusterlink-dataplane`, which links no store, HTTP
/// server or Kubernetes client), next to this crate's binaries in the same target directory.
pub fn cl_dataplane() -> PathBuf {
    let binary = Path::new(GWCTL).with_file_name("cl-dataplane");
    assert!(
        binary.exists(),
        "{} is not built: cargo build -p clusterlink-dataplane (scripts/test builds it)",
        binary.display()
    );
    binary
}

/// How long a gateway may take to print its ready line; generous for a loaded CI machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub fn run(bin: &str, args: &[&str], cwd: &Path) -> Output {
    Command::new(bin)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("spawn")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fabric on disk made with the real `clusterlink` binary.
pub struct Fabric {
    pub dir: tempfile::TempDir,
}

impl Fabric {
    pub fn new(peers: &[&str]) -> Fabric {
        let dir = tempfile::tempdir().unwrap();
        let o = run(CLUSTERLINK, &["create", "fabric"], dir.path());
        assert!(o.status.success(), "{}", stderr(&o));
        for p in peers {
            let o = run(
                CLUSTERLINK,
                &["create", "peer-cert", "--name", p],
                dir.path(),
            );
            assert!(o.status.success(), "{}", stderr(&o));
        }
        Fabric { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn fabric_dir(&self) -> PathBuf {
        self.dir.path().join("default_fabric")
    }

    pub fn data_dir(&self, peer: &str) -> PathBuf {
        self.dir.path().join(format!("{peer}-data"))
    }

    /// The gateway of `peer`, management API on a free loopback port.
    pub fn start(&self, peer: &str) -> GatewayProcess {
        self.start_with(
            peer,
            &[
                "--management-address",
                "127.0.0.1:0",
                "--peer-address",
                "127.0.0.1:0",
            ],
        )
    }

    /// The TLS material of `peer`'s gateway, as a hand-driven client presents it.
    pub fn credentials(&self, peer: &str) -> clusterlink_pki::tls::Credentials {
        use clusterlink_pki::tls::{Credentials, TlsFiles};
        let fabric = self.fabric_dir();
        Credentials::load(&TlsFiles::in_fabric(&fabric, &fabric.join(peer))).unwrap()
    }

    /// The gateway of `peer` with these further arguments.
    pub fn start_with(&self, peer: &str, extra: &[&str]) -> GatewayProcess {
        let mut args = vec!["--peer", peer];
        args.extend_from_slice(extra);
        GatewayProcess::spawn(self.root(), &args)
    }
}

/// A running `cl-gateway`; killed when dropped.
pub struct GatewayProcess {
    pub child: Child,
    /// `http://127.0.0.1:PORT` or `https://…`, from the ready line.
    pub url: String,
    /// Where other gateways reach this one (`127.0.0.1:PORT`).
    pub peer_address: String,
    pub stderr_path: PathBuf,
    /// The site it runs in; its management API and gwctl live there too.
    pub site: Option<clusterlink_testbed::netns::Site>,
}

impl GatewayProcess {
    pub fn spawn(cwd: &Path, args: &[&str]) -> GatewayProcess {
        GatewayProcess::spawn_in(None, cwd, args)
    }

    /// A gateway inside `site` (`ip netns exec` execs, so the child is the gateway itself).
    /// Test services listen on loopback, so exports of loopback services are allowed.
    pub fn spawn_in(
        site: Option<&clusterlink_testbed::netns::Site>,
        cwd: &Path,
        args: &[&str],
    ) -> GatewayProcess {
        let mut args = args.to_vec();
        args.push("--allow-loopback-backends");
        GatewayProcess::spawn_exactly(site, cwd, &args)
    }

    /// A gateway with exactly these arguments.
    pub fn spawn_exactly(
        site: Option<&clusterlink_testbed::netns::Site>,
        cwd: &Path,
        args: &[&str],
    ) -> GatewayProcess {
        let mut command = command_in(site, CL_GATEWAY);
        command.args(args);
        GatewayProcess::spawn_command(site, cwd, command)
    }

    /// A gateway started by `command` (which ends by running cl-gateway), waited for until ready.
    pub fn spawn_command(
        site: Option<&clusterlink_testbed::netns::Site>,
        cwd: &Path,
        mut command: Command,
    ) -> GatewayProcess {
        let stderr_path = cwd.join(format!("gateway-{:016x}.log", rand_u64()));
        let stderr_file = std::fs::File::create(&stderr_path).unwrap();
        let mut child = command
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(stderr_file)
            .spawn()
            .expect("spawn cl-gateway");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(READY_TIMEOUT).unwrap_or_default();
        let ready: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!(
                "gateway did not become ready; stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            )
        });
        let url = ready["management"].as_str().unwrap().to_string();
        let peer_address = ready["peer_address"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        GatewayProcess {
            child,
            url,
            peer_address,
            stderr_path,
            site: site.cloned(),
        }
    }

    /// Runs `f` where this gateway runs (inside its site, or here), for sockets to reach it.
    pub fn in_site<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match &self.site {
            Some(site) => site.enter(f).expect("enter the gateway's site"),
            None => f(),
        }
    }

    /// Waits until import `name` (namespace `default`) is listening.
    pub fn wait_listening(&self, name: &str) {
        let listening = eventually(Duration::from_secs(10), || {
            self.gwctl_ok(&["get", "import", name, "-o", "json"])
                .contains("\"Listening\"")
        });
        assert!(
            listening,
            "import {name} did not start listening:\n{}",
            self.log()
        );
    }

    /// `program` where this gateway runs.
    pub fn command(&self, program: &str) -> Command {
        command_in(self.site.as_ref(), program)
    }

    /// `gwctl --server URL ARGS…`, with an empty config so nothing leaks between tests.
    pub fn gwctl(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(GWCTL);
        cmd.arg("--server")
            .arg(&self.url)
            .args(args)
            .env("GWCTL_CONFIG", "/nonexistent/gwctl.yaml");
        cmd.output().unwrap()
    }

    /// gwctl that must succeed; returns its stdout.
    pub fn gwctl_ok(&self, args: &[&str]) -> String {
        let o = self.gwctl(args);
        assert!(
            o.status.success(),
            "gwctl {args:?} failed:\n{}{}",
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and the exit status it ends with.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        clusterlink_testbed::terminate(&self.child);
        self.child.wait().unwrap()
    }

    /// Everything the gateway has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Applies a manifest given as text.
    pub fn apply(&self, yaml: &str) {
        let path = std::env::temp_dir().join(format!("cl-apply-{}.yaml", rand_u64()));
        std::fs::write(&path, yaml).unwrap();
        self.gwctl_ok(&["apply", "-f", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(path);
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sample from the gateway's `/metrics` (0 when absent).
pub fn metric(gw: &GatewayProcess, series: &str) -> f64 {
    let (code, body) = gw.in_site(|| raw_http(gw.port(), "GET", "/metrics", b""));
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// The sum of the samples of metric `name` (`_total` included) whose labels include every one of
/// `labels`: a count over the labels a test does not care about.
pub fn metric_with(gw: &GatewayProcess, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (code, body) = gw.in_site(|| raw_http(gw.port(), "GET", "/metrics", b""));
    assert_eq!(code, 200);
    body.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (set, value) = rest.rsplit_once("} ")?;
            let pairs: Vec<&str> = set.split(',').collect();
            labels
                .iter()
                .all(|(k, v)| pairs.contains(&format!("{k}=\"{v}\"").as_str()))
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// Asserts that Prometheus's own linter, `promtool check metrics`, accepts a `/metrics` body
/// (`scripts/install-test-deps.sh` installs it).
pub fn assert_promtool_accepts(body: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/install-test-deps.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused it: {}{}\n{body}",
        stdout(&out),
        stderr(&out)
    );
}

/// The status of `peer`'s `PeerReachable` condition as `client` reports it.
pub fn reachable(client: &GatewayProcess, peer: &str) -> String {
    let json: serde_json::Value =
        serde_json::from_str(&client.gwctl_ok(&["get", "peer", peer, "-o", "json"])).unwrap();
    json["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "PeerReachable"))
        .map(|c| c["status"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// `program` in `site`, or here.
pub fn command_in(site: Option<&clusterlink_testbed::netns::Site>, program: &str) -> Command {
    match site {
        Some(site) => site.command(program),
        None => Command::new(program),
    }
}

/// A seed-free pseudo-random number, for varying kill timings between runs.
pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish()
}

/// A raw HTTP/1.1 exchange over TCP, for requests gwctl would never send (oversized bodies,
/// mismatched paths). Returns the status code and body.
pub fn raw_http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let headers = [("Host", "127.0.0.1"), ("Content-Type", "application/yaml")];
    http_request(port, method, path, &headers, body)
}

/// One HTTP/1.1 request with exactly these headers (and a `Content-Length`) on a connection of
/// its own. Returns the status code (0 if none came) and the body.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413, 415) and close before reading the whole body.
    let _ = s.write_all(body);
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Polls `check` until it holds or `deadline` passes; for state that converges asynchronously
/// (a listener bound, a policy in force). Returns whether it held.
pub fn eventually(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + deadline;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `--client-attributes` table with these entries (`{cidr: …, namespace: …}`).
pub fn clients_table(entries: &[&str]) -> std::path::PathBuf {
    let table = std::env::temp_dir().join(format!("clients-{}.yaml", rand_u64()));
    let lines: Vec<String> = entries.iter().map(|e| format!("  - {e}\n")).collect();
    std::fs::write(&table, format!("clients:\n{}", lines.concat())).unwrap();
    table
}

/// A port that was free a moment ago, for specs that need a concrete port (an import's `port`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A backend that reads until the client half-closes, then answers `<name> <bytes>\n` followed by
/// everything it received. The answer after EOF is only possible if half-close passes through.
pub struct Backend {
    pub port: u16,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        Backend::start_at(std::net::Ipv4Addr::LOCALHOST, 0, name)
    }

    /// A backend at `ip:port` (port 0: any free one).
    pub fn start_at(ip: impl Into<std::net::IpAddr>, port: u16, name: &str) -> Backend {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind((ip.into(), port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let name = name.to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let name = name.clone();
                std::thread::spawn(move || {
                    let mut data = Vec::new();
                    if conn.read_to_end(&mut data).is_ok() {
                        let _ = conn.write_all(format!("{name} {}\n", data.len()).as_bytes());
                        let _ = conn.write_all(&data);
                    }
                });
            }
        });
        Backend { port }
    }
}

/// What a client saw on one connection through an import.
#[derive(Debug, PartialEq, Eq, Hash)]
pub enum Exchange {
    /// The backend's name and the bytes echoed back (verified equal to what was sent).
    Served { backend: String },
    /// The connection was reset.
    Reset,
    /// Something else: refused to connect, closed without an answer, wrong echo.
    Other(String),
}

/// Connects to `127.0.0.1:port`, sends `payload`, half-closes, and reads the whole answer.
pub fn exchange(port: u16, payload: &[u8]) -> Exchange {
    exchange_from("127.0.0.1", port, payload)
}

/// [`exchange`] from a chosen loopback source address, so a gateway sees different clients.
pub fn exchange_from(source: &str, port: u16, payload: &[u8]) -> Exchange {
    exchange_between(source, "127.0.0.1", port, payload)
}

/// [`exchange`] from a chosen loopback source to a chosen loopback destination.
pub fn exchange_between(source: &str, destination: &str, port: u16, payload: &[u8]) -> Exchange {
    use std::io::{Read, Write};
    let mut s = match connect_from(source, destination, port) {
        Ok(s) => s,
        // A reset can arrive before connect() returns when the gateway refuses at once.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Exchange::Reset,
        Err(e) => return Exchange::Other(format!("connect: {e}")),
    };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let writer = {
        let mut w = s.try_clone().unwrap();
        let payload = payload.to_vec();
        std::thread::spawn(move || {
            let r = w.write_all(&payload);
            let _ = w.shutdown(std::net::Shutdown::Write);
            r
        })
    };
    let mut answer = Vec::new();
    let read = s.read_to_end(&mut answer);
    let wrote = writer.join().unwrap();
    let reset = |e: &std::io::Error| e.kind() == std::io::ErrorKind::ConnectionReset;
    match read {
        Err(e) if reset(&e) => return Exchange::Reset,
        Err(e) => return Exchange::Other(format!("read: {e}")),
        // A reset that the writer met first is reported to it alone; the read then ends empty.
        Ok(0) if wrote.as_ref().is_err_and(reset) => return Exchange::Reset,
        Ok(_) => {}
    }
    let Some(newline) = answer.iter().position(|&b| b == b'\n') else {
        return Exchange::Other(format!("no answer ({} bytes)", answer.len()));
    };
    let head = String::from_utf8_lossy(&answer[..newline]).into_owned();
    let (backend, len) = head.split_once(' ').unwrap_or((&head, ""));
    if len != payload.len().to_string() || answer[newline + 1..] != *payload {
        return Exchange::Other(format!("bad echo: {head}"));
    }
    Exchange::Served {
        backend: backend.to_string(),
    }
}

pub fn connect_from(
    source: &str,
    destination: &str,
    port: u16,
) -> std::io::Result<std::net::TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(format!("{source}:0").parse().unwrap())?;
        let destination: std::net::IpAddr = destination.parse().unwrap();
        socket.connect((destination, port).into()).await
    })?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// gwctl with its own config file of saved contexts, as a user runs it.
pub struct GwctlConfig {
    pub path: PathBuf,
}

impl GwctlConfig {
    pub fn new(path: PathBuf) -> GwctlConfig {
        GwctlConfig { path }
    }

    /// Saves context `name` for the https management API at `127.0.0.1:port` of gateway `peer`,
    /// trusting `fabric_dir`'s CA and presenting the certificate in `credentials_dir`.
    pub fn set_tls_context(
        &self,
        name: &str,
        port: u16,
        peer: &str,
        fabric_dir: &Path,
        credentials_dir: &Path,
    ) {
        let server = format!("https://127.0.0.1:{port}");
        let o = Command::new(GWCTL)
            .args([
                "config",
                "set-context",
                name,
                "--server",
                &server,
                "--peer",
                peer,
            ])
            .arg("--ca")
            .arg(fabric_dir.join("cert.pem"))
            .arg("--cert")
            .arg(credentials_dir.join("cert.pem"))
            .arg("--key")
            .arg(credentials_dir.join("key.pem"))
            .env("GWCTL_CONFIG", &self.path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }

    /// `gwctl --context CONTEXT ARGS…`.
    pub fn run(&self, context: &str, args: &[&str]) -> Output {
        Command::new(GWCTL)
            .args(["--context", context])
            .args(args)
            .env("GWCTL_CONFIG", &self.path)
            .output()
            .unwrap()
    }
}

/// A connection through `port` that is mid-request (the backend answers only after EOF).
pub fn open_tunnel(port: u16) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"partial").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Opens a tunnel through `port` (see [`open_tunnel`]) and waits until `gw` counts it as active on
/// `side`, so a revocation that follows acts on an established tunnel.
pub fn open_counted_tunnel(port: u16, gw: &GatewayProcess, side: &str) -> std::net::TcpStream {
    let series = format!("clusterlink_connections_active{{side=\"{side}\"}}");
    // A tunnel whose client already has its answer may still be winding down: only a count that
    // rises from zero is this one.
    assert!(eventually(Duration::from_secs(10), || metric(gw, &series) == 0.0));
    let tunnel = open_tunnel(port);
    assert!(eventually(Duration::from_secs(10), || metric(gw, &series) >= 1.0));
    tunnel
}

/// Whether the connection was closed or reset (a read timeout means it stayed open).
pub fn was_closed(mut s: std::net::TcpStream) -> bool {
    use std::io::Read;
    match s.read(&mut [0u8; 16]) {
        Ok(0) => true,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        ),
        Ok(_) => false,
    }
}
