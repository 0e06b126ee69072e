//! `clusterlink demo`: a local fabric of real gateway processes on the embedded store.
//!
//! As root where network namespaces work, three sites in namespaces ([`sites`]); elsewhere, or
//! with `--loopback`, two gateways on this machine's loopback.

mod sites;
mod steps;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::Args;
use clusterlink_api::{ConditionReason, ConditionType, Kind, Object, parse_manifests};
use clusterlink_testbed::launcher::LocalGateway;
use clusterlink_testbed::manifests::{ALLOW_ALL, export, import, peer};
use http::Method;
use tokio::io::AsyncWriteExt;

use crate::client::Client;
use crate::context::Context;
use crate::output::{Format, render};
use steps::{bin_dir, create_and_show_fabric, describe_failure, last_refusal, read_reply, step};

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
        match clusterlink_testbed::netns::available() {
            Ok(()) => return sites::run(args.keep, &dir, args.dir.is_none()).await,
            Err(e) => println!(
                "Sites in network namespaces are not available here ({e}); as root, scripts/demo installs what they need.\nRunning the loopback demo instead: two gateways on this machine."
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
        println!(
            "   {} gateway: management API at {}",
            gw.peer(),
            gw.management()
        );
    }

    step("3. server1 runs two small services and exports both: reviews and ratings");
    let reviews = start_service("reviews").await?;
    let ratings = start_service("ratings").await?;
    apply(&server, &export("reviews", reviews)).await?;
    apply(&server, &export("ratings", ratings)).await?;
    apply(&server, DENY_RATINGS).await?;
    apply(&server, ALLOW_ALL).await?;

    step("4. client1 learns where server1 is, imports both services, and allows egress");
    apply(&client, &peer("server1", server.peer_address())).await?;
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
            client.log().display()
        ),
    }
    match talk(ratings_port).await {
        Ok(reply) => bail!("the denied connection was served: {reply:?}"),
        Err(e) => {
            println!("   127.0.0.1:{ratings_port} (import ratings) -> DENIED, the client saw: {e}");
            if let Some(reason) = last_refusal(client.log()) {
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
            println!("   {} {}:", gw.peer(), kind.plural());
            let objects = list(gw, kind).await?;
            for line in render(&objects, kind, Format::Table, false, true).lines() {
                println!("     {line}");
            }
        }
    }

    step("7. A broken manifest is refused by the gateway, naming the field that is wrong");
    let mut api = Client::new(&Context {
        server: client.management().to_string(),
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
        println!("   gwctl --server {} get imports", client.management());
        println!("   gwctl --server {} get exports", server.management());
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

async fn put(gw: &LocalGateway, obj: &Object) -> anyhow::Result<String> {
    let key = obj.key();
    let path = clusterlink_api::rest::object_path(&key);
    let mut client = Client::new(&Context {
        server: gw.management().to_string(),
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

/// Applies each manifest in `text` to `gateway`, in order; returns what became of each
/// (`Export default/reviews created`).
pub async fn apply_to(gateway: &LocalGateway, text: &str) -> anyhow::Result<Vec<String>> {
    let mut outcomes = Vec::new();
    for doc in parse_manifests(text) {
        outcomes.push(put(gateway, &doc?).await?);
    }
    Ok(outcomes)
}

async fn apply(gw: &LocalGateway, text: &str) -> anyhow::Result<()> {
    for outcome in apply_to(gw, text).await? {
        println!("   {}: {outcome}", gw.peer());
    }
    Ok(())
}

async fn list(gw: &LocalGateway, kind: Kind) -> anyhow::Result<Vec<Object>> {
    let mut client = Client::new(&Context {
        server: gw.management().to_string(),
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

/// Connects to a local import and reads the service's line.
async fn talk(port: u16) -> Result<String, String> {
    // A loaded machine may only poll the connect after the gateway's reset has arrived, so
    // the reset can surface here as well as on the read.
    let conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(describe_failure)?;
    read_reply(conn).await
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
        gw.log().display()
    )
}
