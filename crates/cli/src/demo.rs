//! `clusterlink demo`: a local fabric of real gateway processes on the embedded store.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::Args;
use clusterlink_api::{Kind, Object, parse_manifests};
use http::Method;

use crate::client::Client;
use crate::context::Context;
use crate::output::{Format, render};

/// A gateway that has not printed its ready line by then will not.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

const EXPORTER_MANIFESTS: &str = include_str!("../../../examples/manifests/reviews-export.yaml");
const IMPORTER_MANIFESTS: [&str; 3] = [
    include_str!("../../../examples/manifests/peers.yaml"),
    include_str!("../../../examples/manifests/reviews-import.yaml"),
    include_str!("../../../examples/manifests/policies.yaml"),
];
const BROKEN_MANIFEST: &str = include_str!("../../../examples/broken-import.yaml");

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the gateways running until Ctrl-C, so you can try gwctl against them.
    #[arg(long)]
    pub keep: bool,
    /// Work in this directory instead of a temporary one (it is kept).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

struct DemoGateway {
    peer: &'static str,
    child: Child,
    url: String,
}

impl Drop for DemoGateway {
    fn drop(&mut self) {
        // SIGTERM first so the gateway shuts down cleanly; kill if it does not.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
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
    println!("ClusterLink demo in {}\n", dir.display());

    step("1. Create the fabric CA and a certificate for each peer");
    let fabric = dir.join(crate::clusterlink_cmd::DEFAULT_FABRIC);
    if !fabric.join(clusterlink_pki::CERT_FILE).exists() {
        clusterlink_pki::create_fabric(
            &dir,
            crate::clusterlink_cmd::DEFAULT_FABRIC,
            clusterlink_pki::Validity::days(30)?,
        )?;
    }
    for peer in ["server1", "client1"] {
        if !fabric.join(peer).exists() {
            clusterlink_pki::create_peer_cert(&fabric, peer, clusterlink_pki::Validity::days(30)?)?;
        }
        println!(
            "   {peer}: {}",
            fabric.join(peer).join("cert.pem").display()
        );
    }

    step("2. Start a gateway for each peer (real processes, embedded store)");
    let server = start_gateway(&dir, "server1")?;
    let client = start_gateway(&dir, "client1")?;
    for gw in [&server, &client] {
        println!("   {} gateway: management API at {}", gw.peer, gw.url);
    }

    step("3. server1 exports the reviews service");
    apply(&server, EXPORTER_MANIFESTS).await?;
    step("4. client1 learns its peers, imports reviews from them, and sets policies");
    for text in IMPORTER_MANIFESTS {
        apply(&client, text).await?;
    }

    step("5. List what each gateway holds");
    for (gw, kinds) in [
        (&server, &[Kind::Export][..]),
        (&client, &[Kind::Peer, Kind::Import, Kind::AccessPolicy][..]),
    ] {
        for &kind in kinds {
            println!("   {} {}:", gw.peer, kind.plural());
            let objects = list(gw, kind).await?;
            for line in render(&objects, kind, Format::Table, false, true).lines() {
                println!("     {line}");
            }
        }
    }

    step("6. A broken manifest is refused by the gateway, naming the field that is wrong");
    let mut api = Client::new(&Context {
        server: client.url.clone(),
        ..Default::default()
    })?;
    let path = format!("{}/namespaces/default/imports/ratings", crate::gwctl::API);
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

fn start_gateway(dir: &Path, peer: &'static str) -> anyhow::Result<DemoGateway> {
    let exe = std::env::current_exe()?.with_file_name("cl-gateway");
    if !exe.exists() {
        bail!(
            "{} not found: build all binaries first (cargo build --release)",
            exe.display()
        );
    }
    let log = std::fs::File::create(dir.join(format!("{peer}.log")))?;
    let mut child = Command::new(&exe)
        .args([
            "--peer",
            peer,
            "--management-address",
            "127.0.0.1:0",
            "--peer-address",
            "127.0.0.1:0",
        ])
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
    let mut gw = DemoGateway {
        peer,
        child,
        url: String::new(),
    };
    let ready: serde_json::Value = serde_json::from_str(&line).map_err(|_| {
        anyhow!(
            "the {peer} gateway did not start; see {}",
            dir.join(format!("{peer}.log")).display()
        )
    })?;
    gw.url = ready["management"].as_str().unwrap_or_default().to_string();
    Ok(gw)
}

async fn put(gw: &DemoGateway, obj: &Object) -> anyhow::Result<String> {
    let key = obj.key();
    let path = crate::gwctl::item_path(&key);
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

async fn apply(gw: &DemoGateway, text: &str) -> anyhow::Result<()> {
    for doc in parse_manifests(text) {
        println!("   {}: {}", gw.peer, put(gw, &doc?).await?);
    }
    Ok(())
}

async fn list(gw: &DemoGateway, kind: Kind) -> anyhow::Result<Vec<Object>> {
    let mut client = Client::new(&Context {
        server: gw.url.clone(),
        ..Default::default()
    })?;
    let reply = client
        .request(
            Method::GET,
            &crate::gwctl::collection_path(kind, None),
            None,
        )
        .await?;
    let items = reply.body["items"].as_array().cloned().unwrap_or_default();
    items
        .into_iter()
        .map(|v| clusterlink_api::manifest::object_from_value(v).map_err(|e| anyhow!("{e}")))
        .collect()
}
