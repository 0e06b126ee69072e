//! `clusterlink demo`: a local fabric of real gateway processes on the embedded store.
//!
//! As root where network namespaces work, three sites in namespaces ([`sites`]); elsewhere, or
//! with `--loopback`, two gateways on this machine's loopback.

mod sites;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::Args;
use clusterlink_api::{ConditionReason, ConditionType, Kind, Object, parse_manifests};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::Client;
use crate::context::Context;
use crate::output::{Format, render};

/// A gateway that has not printed its ready line by then will not.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// server1 denies every peer its ratings service.
const DENY_RATINGS: &str = "\
apiVersion: clusterlink.net/v1alpha1
kind: AccessPolicy
metadata: {name: deny-ratings, namespace: default}
spec:
  action: deny
  from: [{workloadSelector: {}}]
  to: [{workloadSelector: {matchLabels: {export.clusterlink.net/name: ratings}}}]
";
/// Both sides allow the rest (deny policies decide first).
pub const ALLOW_ALL: &str = "\
apiVersion: clusterlink.net/v1alpha1
kind: AccessPolicy
metadata: {name: allow-all, namespace: default}
spec:
  action: allow
  from: [{workloadSelector: {}}]
  to: [{workloadSelector: {}}]
";
const BROKEN_MANIFEST: &str = include_str!("../../../../examples/broken-import.yaml");

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the gateways running until Ctrl-C, so you can try gwctl against them.
    #[arg(long)]
    pub keep: bool,
    /// Work in this directory instead of a temporary one (it is kept).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run the two-gateway demo on loopback even where the three-site demo in network
    /// namespaces could run (that one needs root).
    #[arg(long)]
    pub loopback: bool,
}

/// A `cl-gateway` process, on free loopback ports or inside a site; stopped when dropped.
pub struct LocalGateway {
    peer: &'static str,
    child: Child,
    url: String,
    peer_address: String,
    log: PathBuf,
}

impl Drop for LocalGateway {
    fn drop(&mut self) {
        // SIGTERM first so the gateway shuts down cleanly; kill if it does not.
        crate::terminate(&self.child);
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let temp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    println!("ClusterLink demo in {}", dir.display());
    if !args.loopback {
        match crate::netns::available() {
            Ok(()) => return sites::run(&args, &dir).await,
            Err(e) => println!(
                "Sites in network namespaces are not available here ({e}).\nRunning the loopback demo instead: two gateways on this machine."
            ),
        }
    }

    step("1. Create the fabric CA and a certificate for each peer");
    create_and_show_fabric(&dir, &["server1", "client1"])?;

    step("2. Start a gateway for each peer (real processes, embedded store)");
    let bin_dir = bin_dir()?;
    let server = LocalGateway::start(&bin_dir, &dir, "server1")?;
    let client = LocalGateway::start(&bin_dir, &dir, "client1")?;
    for gw in [&server, &client] {
        println!("   {} gateway: management API at {}", gw.peer, gw.url);
    }

    step("3. server1 runs two small services and exports both: reviews and ratings");
    let reviews = start_service("reviews").await?;
    let ratings = start_service("ratings").await?;
    apply(&server, &export("reviews", reviews)).await?;
    apply(&server, &export("ratings", ratings)).await?;
    apply(&server, DENY_RATINGS).await?;
    apply(&server, ALLOW_ALL).await?;

    step("4. client1 learns where server1 is, imports both services, and allows egress");
    apply(&client, &peer("server1", &server.peer_address)).await?;
    let reviews_port = free_port()?;
    let ratings_port = free_port()?;
    apply(&client, &import("reviews", reviews_port, &["server1"])).await?;
    apply(&client, &import("ratings", ratings_port, &["server1"])).await?;
    apply(&client, ALLOW_ALL).await?;
    wait_listening(&client, &["reviews", "ratings"]).await?;

    step("5. Connect through the imports, as any local client would");
    match talk(reviews_port).await {
        Ok(reply) => println!(
            "   127.0.0.1:{reviews_port} (import reviews) -> ALLOWED, server1 answered: {reply:?}"
        ),
        Err(e) => bail!(
            "the allowed connection failed: {e}; see {}",
            client.log.display()
        ),
    }
    match talk(ratings_port).await {
        Ok(reply) => bail!("the denied connection was served: {reply:?}"),
        Err(e) => {
            println!("   127.0.0.1:{ratings_port} (import ratings) -> DENIED, the client saw: {e}");
            if let Some(reason) = last_refusal(&client.log) {
                println!("   client1 logged why: {reason}");
            }
        }
    }

    step("6. What each gateway holds");
    for (gw, kinds) in [
        (&server, &[Kind::Export, Kind::AccessPolicy][..]),
        (&client, &[Kind::Peer, Kind::Import][..]),
    ] {
        for &kind in kinds {
            println!("   {} {}:", gw.peer, kind.plural());
            let objects = list(gw, kind).await?;
            for line in render(&objects, kind, Format::Table, false, true).lines() {
                println!("     {line}");
            }
        }
    }

    step("7. A broken manifest is refused by the gateway, naming the field that is wrong");
    let mut api = Client::new(&Context {
        server: client.url.clone(),
        ..Default::default()
    })?;
    let path = clusterlink_api::rest::item_path("imports", Some("default"), "ratings");
    let reply = api
        .request(
            Method::PUT,
            &path,
            Some(BROKEN_MANIFEST.as_bytes().to_vec()),
        )
        .await?;
    if reply.status.is_success() {
        bail!("the broken example manifest was accepted");
    }
    println!(
        "   {} {}: {}",
        reply.status.as_u16(),
        reply.status.canonical_reason().unwrap_or(""),
        reply.error_message()
    );

    println!();
    if args.keep {
        println!("Gateways keep running. Try:");
        println!("   gwctl --server {} get imports", client.url);
        println!("   gwctl --server {} get exports", server.url);
        println!("Press Ctrl-C to stop.");
        tokio::signal::ctrl_c().await?;
    }
    drop((server, client));
    println!(
        "Done: gateways stopped{}.",
        if args.dir.is_none() {
            " and the demo directory removed"
        } else {
            ""
        }
    );
    Ok(())
}

fn step(title: &str) {
    println!("\n{title}");
}

/// Where `clusterlink` was started from; `cl-gateway` and `gwctl` are built beside it.
fn bin_dir() -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default())
}

/// The fabric CA in `dir` (made if absent) and a certificate for each of `peers`.
pub fn create_fabric(dir: &Path, peers: &[&str]) -> anyhow::Result<()> {
    let fabric = dir.join(clusterlink_pki::DEFAULT_FABRIC);
    if !fabric.join(clusterlink_pki::CERT_FILE).exists() {
        clusterlink_pki::create_fabric(
            dir,
            clusterlink_pki::DEFAULT_FABRIC,
            clusterlink_pki::Validity::days(30)?,
        )?;
    }
    for peer in peers {
        if !fabric.join(peer).exists() {
            clusterlink_pki::create_peer_cert(&fabric, peer, clusterlink_pki::Validity::days(30)?)?;
        }
    }
    Ok(())
}

/// [`create_fabric`], saying where each peer's certificate is.
fn create_and_show_fabric(dir: &Path, peers: &[&str]) -> anyhow::Result<()> {
    create_fabric(dir, peers)?;
    let fabric = dir.join(clusterlink_pki::DEFAULT_FABRIC);
    for peer in peers {
        let cert = fabric.join(peer).join(clusterlink_pki::CERT_FILE);
        println!("   {peer}: {}", cert.display());
    }
    Ok(())
}

impl LocalGateway {
    /// Starts the gateway of `peer` from the fabric in `dir`, with `cl-gateway` from `bin_dir`,
    /// and waits for its ready line. Its log goes to `<dir>/<peer>.log`.
    pub fn start(bin_dir: &Path, dir: &Path, peer: &'static str) -> anyhow::Result<LocalGateway> {
        start_gateway(bin_dir, dir, peer, None)
    }

    /// The management API URL.
    pub fn management(&self) -> &str {
        &self.url
    }

    /// Where other gateways reach this one.
    pub fn peer_address(&self) -> &str {
        &self.peer_address
    }

    /// The gateway process's id, for measuring it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts `peer`'s gateway on loopback, or inside `site` with its peer port on the site's WAN
/// address (and its management API and imports on the site's loopback).
fn start_gateway(
    bin_dir: &Path,
    dir: &Path,
    peer: &'static str,
    site: Option<&crate::netns::Site>,
) -> anyhow::Result<LocalGateway> {
    let exe = bin_dir.join("cl-gateway");
    if !exe.exists() {
        bail!(
            "{} not found: build all binaries first (cargo build --release)",
            exe.display()
        );
    }
    let log = std::fs::File::create(dir.join(format!("{peer}.log")))?;
    let mut command = match site {
        // Spawned from the runtime's own thread, which lives as long as the demo: the site's
        // processes die with that thread.
        Some(site) => {
            let mut command = site.command(&exe);
            command.args([
                "--peer-address",
                &format!("{}:{}", site.address, sites::PEER_PORT),
                "--import-address",
                "127.0.0.1",
            ]);
            command
        }
        None => {
            let mut command = Command::new(&exe);
            command.args(["--peer-address", "127.0.0.1:0"]);
            command
        }
    };
    let mut child = command
        // The demo's services listen on loopback (in the site, or on this host).
        .args(["--peer", peer, "--management-address", "127.0.0.1:0"])
        .arg("--allow-loopback-backends")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(READY_TIMEOUT).unwrap_or_default();
    let log = dir.join(format!("{peer}.log"));
    let mut gw = LocalGateway {
        peer,
        child,
        url: String::new(),
        peer_address: String::new(),
        log,
    };
    let ready: serde_json::Value = serde_json::from_str(&line)
        .map_err(|_| anyhow!("the {peer} gateway did not start; see {}", gw.log.display()))?;
    gw.url = ready["management"].as_str().unwrap_or_default().to_string();
    gw.peer_address = ready["peer_address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok(gw)
}

async fn put(gw: &LocalGateway, obj: &Object) -> anyhow::Result<String> {
    let key = obj.key();
    let path = clusterlink_api::rest::object_path(&key);
    let mut client = Client::new(&Context {
        server: gw.url.clone(),
        ..Default::default()
    })?;
    let reply = client
        .request(Method::PUT, &path, Some(serde_json::to_vec(obj)?))
        .await?;
    if !reply.status.is_success() {
        bail!("{key}: {}", reply.error_message());
    }
    Ok(format!("{key} {}", reply.result.unwrap_or_default()))
}

impl LocalGateway {
    /// Applies each manifest in `text`, in order; returns what became of each
    /// (`Export default/reviews created`).
    pub async fn apply(&self, text: &str) -> anyhow::Result<Vec<String>> {
        let mut outcomes = Vec::new();
        for doc in parse_manifests(text) {
            outcomes.push(put(self, &doc?).await?);
        }
        Ok(outcomes)
    }
}

async fn apply(gw: &LocalGateway, text: &str) -> anyhow::Result<()> {
    for outcome in gw.apply(text).await? {
        println!("   {}: {outcome}", gw.peer);
    }
    Ok(())
}

async fn list(gw: &LocalGateway, kind: Kind) -> anyhow::Result<Vec<Object>> {
    let mut client = Client::new(&Context {
        server: gw.url.clone(),
        ..Default::default()
    })?;
    let reply = client
        .request(
            Method::GET,
            &clusterlink_api::rest::kind_collection_path(kind, None),
            None,
        )
        .await?;
    let items = reply.body["items"].as_array().cloned().unwrap_or_default();
    items
        .into_iter()
        .map(|v| clusterlink_api::manifest::object_from_value(v).map_err(|e| anyhow!("{e}")))
        .collect()
}

pub fn export(name: &str, port: u16) -> String {
    format!(
        "apiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {{name: {name}, namespace: default}}\nspec: {{host: 127.0.0.1, port: {port}}}\n"
    )
}

pub fn peer(name: &str, address: &str) -> String {
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "443"));
    format!(
        "apiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {{name: {name}}}\nspec: {{gateways: [{{host: '{host}', port: {port}}}]}}\n"
    )
}

/// An import of export `name` from each of `sources`, round-robin.
pub fn import(name: &str, port: u16, sources: &[&str]) -> String {
    let sources: Vec<String> = sources
        .iter()
        .map(|p| format!("{{peer: {p}, exportName: {name}, exportNamespace: default}}"))
        .collect();
    format!(
        "apiVersion: clusterlink.net/v1alpha1\nkind: Import\nmetadata: {{name: {name}, namespace: default}}\nspec: {{port: {port}, lbScheme: round-robin, sources: [{}]}}\n",
        sources.join(", ")
    )
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A tiny service: answers each connection with one line naming itself.
async fn start_service(name: &'static str) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = conn
                    .write_all(format!("hello from the {name} service on server1\n").as_bytes())
                    .await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(port)
}

/// The reason of the last refused source in a gateway's log.
fn last_refusal(log: &Path) -> Option<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .rev()
        .find_map(|l| l.split_once("source failed: ").map(|(_, r)| r.to_string()))
        // The log line goes on with its structured fields; the reason is what comes first.
        .map(|r| r.split(" import=").next().unwrap_or_default().to_string())
}

/// Connects to a local import and reads the service's line.
async fn talk(port: u16) -> Result<String, String> {
    // A loaded machine may only poll the connect after the gateway's reset has arrived, so
    // the reset can surface here as well as on the read.
    let conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(describe_failure)?;
    read_reply(conn).await
}

/// How a failed connection reads in the demo's output.
fn describe_failure(e: std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset => "connection reset".to_string(),
        _ => e.to_string(),
    }
}

/// Reads a service's one-line answer; a reset or an empty close is the error.
async fn read_reply(mut conn: tokio::net::TcpStream) -> Result<String, String> {
    let mut reply = String::new();
    conn.read_to_string(&mut reply)
        .await
        .map_err(describe_failure)?;
    if reply.is_empty() {
        Err("closed without an answer".into())
    } else {
        Ok(reply.trim().to_string())
    }
}

/// Waits until the gateway reports each import listening (it binds right after the commit).
async fn wait_listening(gw: &LocalGateway, imports: &[&str]) -> anyhow::Result<()> {
    for _ in 0..100 {
        let listed = list(gw, Kind::Import).await?;
        let listening = imports.iter().all(|name| {
            listed.iter().any(|o| {
                o.metadata().name == *name
                    && o.status()
                        .and_then(|s| s.condition(ConditionType::ImportValid))
                        .is_some_and(|c| c.reason == ConditionReason::Listening.as_str())
            })
        });
        if listening {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!(
        "the imports did not start listening; see {}",
        gw.log.display()
    )
}
