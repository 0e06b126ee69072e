//! The paths a client's bytes can take to the backends: straight there, or through a pair of
//! proxies (client side A, server side B) that speak mutual TLS to each other.
//!
//! Every pair uses the same certificates: one ECDSA P-256 fabric CA, TLS 1.3 with AES-128-GCM,
//! and each side verifying the other. Each path is started fresh for each round and stopped after
//! it, so one round's memory and connections never carry into the next.

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use anyhow::bail;
use clusterlink::client::Client;
use clusterlink::context::Context;
use clusterlink_testbed::launcher::LocalGateway;
use http::Method;

use crate::loadgen;
use crate::proxies;
use crate::setup::{Backends, Fronts, PathKind, Process, Setup, free_address};

/// Longest a freshly started pair may take before a connection goes through it end to end.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A started path; stopping it is dropping it.
pub struct RunningPath {
    pub kind: PathKind,
    pub fronts: Fronts,
    /// The process of side A (client side, importing) and side B (server side, exporting);
    /// none for direct.
    pub sides: Vec<u32>,
    _processes: Vec<Process>,
    _gateways: Vec<LocalGateway>,
    _dir: tempfile::TempDir,
}

impl RunningPath {
    /// Each gateway's Prometheus text (`/metrics`), side A first; none for other paths.
    pub async fn gateway_metrics(&self) -> anyhow::Result<Vec<String>> {
        let mut pages = Vec::new();
        for gateway in &self._gateways {
            let mut api = Client::new(&Context {
                server: gateway.management().to_string(),
                ..Default::default()
            })?;
            let reply = api.request(Method::GET, "/metrics", None).await?;
            match reply.body {
                serde_json::Value::String(text) if reply.status.is_success() => pages.push(text),
                other => bail!(
                    "{}'s /metrics answered {}: {other}",
                    gateway.peer(),
                    reply.status
                ),
            }
        }
        Ok(pages)
    }

    /// Leaves the path's configuration and logs on disk when it stops; returns where.
    pub fn keep_logs(&mut self) -> PathBuf {
        self._dir.disable_cleanup(true);
        self._dir.path().to_path_buf()
    }
}

pub async fn start(
    kind: PathKind,
    setup: &Setup,
    backends: &Backends,
) -> anyhow::Result<RunningPath> {
    // Inside the run's directory, which outlives a failed run.
    let mut dir = tempfile::Builder::new()
        .prefix(kind.key())
        .tempdir_in(&setup.dir)?;
    dir.disable_cleanup(true);
    let mut path = RunningPath {
        kind,
        fronts: Fronts {
            iperf: backends.iperf,
            echo: backends.echo,
            hold: backends.hold,
        },
        sides: Vec::new(),
        _processes: Vec::new(),
        _gateways: Vec::new(),
        _dir: dir,
    };
    let work = path._dir.path().to_path_buf();
    match kind {
        PathKind::Direct => {}
        PathKind::Clusterlink | PathKind::ClusterlinkLink => {
            let dial = kind == PathKind::ClusterlinkLink;
            let (gateways, fronts) = start_clusterlink(setup, &work, backends, dial).await?;
            path.sides = gateways.iter().map(LocalGateway::pid).collect();
            path.fronts = fronts;
            path._gateways = gateways;
        }
        proxy => {
            let ports = Fronts {
                iperf: free_address()?,
                echo: free_address()?,
                hold: free_address()?,
            };
            let processes = proxies::start(proxy, setup, &work, backends, &ports)?;
            path.sides = processes.iter().map(Process::pid).collect();
            path.fronts = ports;
            path._processes = processes;
        }
    }
    wait_ready(&mut path).await?;
    path._dir.disable_cleanup(false);
    Ok(path)
}

/// Waits until an exchange through the path's echo front succeeds.
async fn wait_ready(path: &mut RunningPath) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let attempt =
            tokio::time::timeout(Duration::from_secs(2), loadgen::exchange(path.fronts.echo)).await;
        match attempt {
            Ok(Ok(_)) => return Ok(()),
            _ if Instant::now() > deadline => bail!(
                "{} did not carry a connection within {READY_TIMEOUT:?}; its logs are in {}",
                path.kind.label(),
                path._dir.path().display()
            ),
            _ => {
                for p in &mut path._processes {
                    if let Some(status) = p.exited() {
                        bail!(
                            "{} exited at start ({status}); its logs are in {}",
                            path.kind.label(),
                            path._dir.path().display()
                        );
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Waits until `gateway` reaches `peer` over a link: until then its tunnels go directly.
async fn wait_for_link(gateway: &LocalGateway, peer: &str) -> anyhow::Result<()> {
    let mut api = Client::new(&Context {
        server: gateway.management().to_string(),
        ..Default::default()
    })?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let reply = api
            .request(Method::GET, clusterlink_api::rest::TRAFFIC_PATH, None)
            .await?;
        if reply.body["peers"][peer]["link"].is_string() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} kept no link to {peer} within {READY_TIMEOUT:?}",
                gateway.peer()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two gateways with the full two-sided policy path: server1 exports the backends and allows
/// ingress, client1 imports them and allows egress. With `dial`, client1 keeps a link to
/// server1 and its tunnels ride it.
async fn start_clusterlink(
    setup: &Setup,
    work: &Path,
    backends: &Backends,
    dial: bool,
) -> anyhow::Result<(Vec<LocalGateway>, Fronts)> {
    // Each start gets its own fabric and stores: a restarted gateway must not replay a round.
    clusterlink_testbed::launcher::create_fabric(work, &["server1", "client1"])?;
    let server = LocalGateway::start(&setup.bin_dir, work, "server1")?;
    let client = LocalGateway::start(&setup.bin_dir, work, "client1")?;
    let allow = clusterlink_testbed::manifests::ALLOW_ALL;
    let mut manifests = String::from(allow);
    for (name, backend) in [
        ("iperf", backends.iperf),
        ("echo", backends.echo),
        ("hold", backends.hold),
    ] {
        manifests.push_str("---\n");
        manifests.push_str(&clusterlink_testbed::manifests::export(
            name,
            backend.port(),
        ));
    }
    clusterlink::demo::apply_to(&server, &manifests).await?;
    let fronts = Fronts {
        iperf: free_address()?,
        echo: free_address()?,
        hold: free_address()?,
    };
    let mut manifests = String::from(allow);
    manifests.push_str("---\n");
    let peer = clusterlink_testbed::manifests::peer("server1", server.peer_address());
    if dial {
        manifests.push_str(&peer.replace("]}\n", "], dial: true}\n"));
    } else {
        manifests.push_str(&peer);
    }
    for (name, front) in [
        ("iperf", fronts.iperf),
        ("echo", fronts.echo),
        ("hold", fronts.hold),
    ] {
        manifests.push_str("---\n");
        manifests.push_str(&clusterlink_testbed::manifests::import(
            name,
            front.port(),
            &["server1"],
        ));
    }
    clusterlink::demo::apply_to(&client, &manifests).await?;
    if dial {
        wait_for_link(&client, "server1").await?;
    }
    // Side A is the importing gateway, side B the exporting one.
    Ok((vec![client, server], fronts))
}
