//! A fabric of many sites: a gateway in each of N network namespaces on one WAN, each importing a
//! service from the next [`SOURCES`] sites of a ring. Measured for each N:
//!
//! - **rollout**: site 1 exports a new service and every other site adds a Peer for it and an
//!   Import of the service, all at once; the time until each site's client is served;
//! - **at rest**: each gateway's CPU (as a share of one core) and resident memory over
//!   [`IDLE_WINDOW`], with nothing moving but health probes: every site then probes its ring
//!   sources and site 1, and site 1 answers every other site's probes;
//! - **a site cut off**: site 1's link goes down (packets lost, nothing refused); the time until
//!   each other site's gateway reports site 1 unreachable.
//!
//! A **full mesh** (`--fabric-mesh-sites`) makes every site a Peer of every other, as a fabric
//! whose sites all offer each other their exports is: each gateway then probes, and is probed
//! by, every other, and fetches every other's catalog.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clusterlink::client::Client;
use clusterlink::context::Context;
use clusterlink_api::{Kind, ObjectKey};
use clusterlink_testbed::launcher::LocalGateway;
use clusterlink_testbed::manifests::{ALLOW_ALL, export, import, peer};
use clusterlink_testbed::netns::{Site, Wan};
use http::Method;
use serde::Serialize;

use crate::loadgen::percentile;
use crate::measure;
use crate::report::Target;

/// Ring neighbours each site imports from: "several others", and few enough that a 10-site ring
/// has no site importing from itself.
pub const SOURCES: usize = 3;
/// Every site's gateway peer port (the one its firewall opens).
const PEER_PORT: u16 = 443;
/// Where each site's import of the ring service listens, on the site's own loopback.
const RING_IMPORT_PORT: u16 = 7000;
/// Where each site's import of the rolled-out service listens.
const ROLLOUT_IMPORT_PORT: u16 = 7001;
/// How long CPU is counted at rest: at 100 ticks a second, 0.1% of a core is one tick.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// Quiet before the window: tunnels of the rollout check end and their warm connections
/// are left to the pool, as on any gateway between bursts.
const SETTLE: Duration = Duration::from_secs(2);
/// A change that has not worked everywhere by then never will.
const CONVERGE_LIMIT: Duration = Duration::from_secs(120);
/// How often a site's client tries its import, and its management API is read, while waiting.
const POLL: Duration = Duration::from_millis(20);

/// What one fabric size measured.
#[derive(Debug, Clone, Serialize)]
pub struct FabricFigures {
    pub sites: usize,
    /// Every site a Peer of every other (else: its ring sources and site 1).
    pub mesh: bool,
    /// Seconds from the first configuration write until every site's ring import served.
    pub ring_ready_s: f64,
    /// Milliseconds from the rollout's writes until a site's client is served: median, slowest.
    pub rollout_ms_p50: f64,
    pub rollout_ms_max: f64,
    /// Share of one core at rest, per gateway: median, highest (site 1, probed by all).
    pub idle_cpu_percent_p50: f64,
    pub idle_cpu_percent_max: f64,
    /// Resident memory at rest, per gateway, MiB: median, highest.
    pub rss_mib_p50: f64,
    pub rss_mib_max: f64,
    /// Milliseconds from the cut until a site reports site 1 unreachable: median, slowest.
    pub detect_ms_p50: f64,
    pub detect_ms_max: f64,
}

/// One site with its gateway and echo service.
struct Member<'w> {
    site: &'w Site,
    gateway: LocalGateway,
    echo_port: u16,
}

/// Measures a fabric of `n` sites, with `cl-gateway` from `bin_dir` and logs under `work`.
pub fn measure(n: usize, mesh: bool, bin_dir: &Path, work: &Path) -> anyhow::Result<FabricFigures> {
    if n < SOURCES + 2 {
        bail!("a fabric needs at least {} sites", SOURCES + 2);
    }
    let dir = work.join(format!("fabric-{n}{}", if mesh { "-mesh" } else { "" }));
    std::fs::create_dir_all(&dir)?;
    // Gateways take their peer name for their whole life, as `&'static str`.
    let names: Vec<&'static str> = (1..=n)
        .map(|i| &*Box::leak(format!("site{i:02}").into_boxed_str()))
        .collect();
    let wan = Wan::create(&names, &[PEER_PORT])?;
    clusterlink_testbed::launcher::create_fabric(&dir, &names)?;
    let members = names
        .iter()
        .map(|name| {
            let site = wan.site(name)?;
            let gateway = LocalGateway::start_in(bin_dir, &dir, name, site, PEER_PORT, &[])?;
            let echo_port = echo_service(site)?;
            Ok(Member {
                site,
                gateway,
                echo_port,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let started = Instant::now();
    let ring_ready = in_each_site(&members, |i, m| {
        let sources: Vec<&str> = (1..=SOURCES).map(|d| names[(i + d) % n]).collect();
        let peers: Vec<&str> = if mesh {
            (1..n).map(|d| names[(i + d) % n]).collect()
        } else {
            sources.clone()
        };
        let mut manifests = vec![ALLOW_ALL.to_string(), export("svc", m.echo_port)];
        for s in &peers {
            manifests.push(peer(
                s,
                &format!("{}:{PEER_PORT}", members[index(&names, s)].site.address),
            ));
        }
        manifests.push(import("svc", RING_IMPORT_PORT, &sources));
        apply(m, &manifests)?;
        served_within(RING_IMPORT_PORT, started)
    })?;
    let ring_ready_s = ring_ready.into_iter().fold(0.0, f64::max) / 1e3;

    let hub = &members[0];
    let hub_address = format!("{}:{PEER_PORT}", hub.site.address);
    let rolled = Instant::now();
    let rollout = in_each_site(&members, |i, m| {
        if i == 0 {
            apply(m, &[export("fresh", m.echo_port)])?;
            return Ok(None);
        }
        // Ring neighbours of site 1 know it already; the write is then `unchanged`.
        let manifests = [
            peer(names[0], &hub_address),
            import("fresh", ROLLOUT_IMPORT_PORT, &[names[0]]),
        ];
        apply(m, &manifests)?;
        served_within(ROLLOUT_IMPORT_PORT, rolled).map(Some)
    })?;
    let mut rollout: Vec<f64> = rollout.into_iter().flatten().collect();
    rollout.sort_by(f64::total_cmp);

    std::thread::sleep(SETTLE);
    let pids: Vec<u32> = members.iter().map(|m| m.gateway.pid()).collect();
    let before: Vec<f64> = pids.iter().map(|p| measure::cpu_seconds(*p)).collect();
    std::thread::sleep(IDLE_WINDOW);
    let mut cpu: Vec<f64> = pids
        .iter()
        .zip(&before)
        .map(|(p, b)| (measure::cpu_seconds(*p) - b) / IDLE_WINDOW.as_secs_f64() * 100.0)
        .collect();
    let mut rss: Vec<f64> = pids
        .iter()
        .map(|p| measure::resident_kib(*p) as f64 / 1024.0)
        .collect();
    cpu.sort_by(f64::total_cmp);
    rss.sort_by(f64::total_cmp);

    hub.site.cut()?;
    let cut = Instant::now();
    let detected = in_each_site(&members, |i, m| {
        if i == 0 {
            return Ok(None);
        }
        unreachable_within(m, names[0], cut).map(Some)
    });
    hub.site.restore()?;
    let mut detected: Vec<f64> = detected?.into_iter().flatten().collect();
    detected.sort_by(f64::total_cmp);

    Ok(FabricFigures {
        sites: n,
        mesh,
        ring_ready_s,
        rollout_ms_p50: percentile(&rollout, 50.0),
        rollout_ms_max: rollout.last().copied().unwrap_or_default(),
        idle_cpu_percent_p50: percentile(&cpu, 50.0),
        idle_cpu_percent_max: cpu.last().copied().unwrap_or_default(),
        rss_mib_p50: percentile(&rss, 50.0),
        rss_mib_max: rss.last().copied().unwrap_or_default(),
        detect_ms_p50: percentile(&detected, 50.0),
        detect_ms_max: detected.last().copied().unwrap_or_default(),
    })
}

fn index(names: &[&str], name: &str) -> usize {
    names.iter().position(|n| *n == name).unwrap_or_default()
}

/// Runs `work` for every site at once, each on a thread inside its site (so its sockets are the
/// site's), and returns what each returned, in site order.
fn in_each_site<T: Send>(
    members: &[Member<'_>],
    work: impl Fn(usize, &Member<'_>) -> anyhow::Result<T> + Sync,
) -> anyhow::Result<Vec<T>> {
    let work = &work;
    std::thread::scope(|scope| {
        let running: Vec<_> = members
            .iter()
            .enumerate()
            .map(|(i, m)| scope.spawn(move || m.site.enter(|| work(i, m))))
            .collect();
        running
            .into_iter()
            .zip(members)
            .map(|(t, m)| {
                let site = &m.site.name;
                t.join()
                    .map_err(|_| anyhow!("{site}: its thread panicked"))?
                    .with_context(|| format!("{site}: cannot enter the site"))?
                    .with_context(|| format!("{site}: see {}", m.gateway.log().display()))
            })
            .collect()
    })
}

/// A management-API session from the calling thread, which must be inside the member's site.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Applies `manifests` to the member's gateway, from inside its site.
fn apply(member: &Member<'_>, manifests: &[String]) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        for text in manifests {
            clusterlink::demo::apply_to(&member.gateway, text).await?;
        }
        Ok(())
    })
}

/// Milliseconds from `since` until the import on `port` of the calling thread's site echoes.
fn served_within(port: u16, since: Instant) -> anyhow::Result<f64> {
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if echoes(target) {
            return Ok(since.elapsed().as_secs_f64() * 1e3);
        }
        if since.elapsed() > CONVERGE_LIMIT {
            bail!("the import on port {port} did not serve within {CONVERGE_LIMIT:?}");
        }
        std::thread::sleep(POLL);
    }
}

/// Whether one exchange through `target` comes back whole.
fn echoes(target: SocketAddr) -> bool {
    const MESSAGE: &[u8] = b"ping";
    let exchange = || -> std::io::Result<Vec<u8>> {
        let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        conn.write_all(MESSAGE)?;
        conn.shutdown(std::net::Shutdown::Write)?;
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer)?;
        Ok(answer)
    };
    exchange().is_ok_and(|answer| answer == MESSAGE)
}

/// Milliseconds from `since` until the member's gateway reports `peer` unreachable.
fn unreachable_within(member: &Member<'_>, peer: &str, since: Instant) -> anyhow::Result<f64> {
    let path = clusterlink_api::rest::object_path(&ObjectKey::new(Kind::Peer, "", peer));
    runtime()?.block_on(async {
        let mut client = Client::new(&Context {
            server: member.gateway.management().to_string(),
            ..Default::default()
        })?;
        loop {
            let reply = client.request(Method::GET, &path, None).await?;
            let reachable = reply.body["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "PeerReachable")
                .and_then(|c| c["status"].as_str())
                .map(str::to_string);
            if reachable.as_deref() == Some("False") {
                return Ok(since.elapsed().as_secs_f64() * 1e3);
            }
            if since.elapsed() > CONVERGE_LIMIT {
                bail!("{peer} was still reported reachable after {CONVERGE_LIMIT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    })
}

/// An echo service on the site's loopback, on a free port: each connection gets back what it
/// sent, then a half-close.
fn echo_service(site: &Site) -> anyhow::Result<u16> {
    let listener = site.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut data = Vec::new();
                if conn.read_to_end(&mut data).is_ok() {
                    let _ = conn.write_all(&data);
                }
            });
        }
    });
    Ok(port)
}

/// The goals for an idle gateway, checked at the largest fabric measured of at least
/// 40 sites.
pub fn targets(figures: &[FabricFigures]) -> Vec<Target> {
    let largest = figures
        .iter()
        .filter(|f| f.sites >= 40 && !f.mesh)
        .max_by_key(|f| f.sites);
    let mesh = figures
        .iter()
        .filter(|f| f.sites >= 40 && f.mesh)
        .max_by_key(|f| f.sites);
    vec![
        Target::at_most(
            "idle gateway in a 40-site full mesh (probes and catalogs), most loaded, % of a core <= 1",
            mesh.map(|f| f.idle_cpu_percent_max),
            1.0,
        ),
        Target::at_most(
            "idle gateway in a 40-site fabric, most loaded, % of a core <= 1",
            largest.map(|f| f.idle_cpu_percent_max),
            1.0,
        ),
        Target::at_most(
            "idle gateway in a 40-site fabric, largest, MiB resident <= 30",
            largest.map(|f| f.rss_mib_max),
            30.0,
        ),
    ]
}

/// The fabric figures as a table, one row per size.
pub fn table(figures: &[FabricFigures]) -> String {
    let mut out = String::from(
        "| sites | peers each | ring ready, s | rollout p50 / max, ms | idle CPU p50 / max, % of a core | RSS p50 / max, MiB | cut-off detected p50 / max, ms |\n|---|---|---|---|---|---|---|\n",
    );
    for f in figures {
        let peers = if f.mesh {
            format!("{} (full mesh)", f.sites - 1)
        } else {
            format!("{SOURCES} + site 1")
        };
        out.push_str(&format!(
            "| {} | {peers} | {:.1} | {:.0} / {:.0} | {:.2} / {:.2} | {:.1} / {:.1} | {:.0} / {:.0} |\n",
            f.sites,
            f.ring_ready_s,
            f.rollout_ms_p50,
            f.rollout_ms_max,
            f.idle_cpu_percent_p50,
            f.idle_cpu_percent_max,
            f.rss_mib_p50,
            f.rss_mib_max,
            f.detect_ms_p50,
            f.detect_ms_max,
        ));
    }
    out
}
