//! The data-path benchmark: direct TCP, nginx and haproxy mTLS pairs, Envoy HTTP/1.1 and HTTP/2
//! CONNECT pairs, and two ClusterLink gateways with the full two-sided policy path, measured side
//! by side in rotating order on one machine. Run it with `scripts/bench`; see BENCHMARKS.md.

pub mod fabric;
pub mod loadgen;
pub mod measure;
pub mod paths;
pub mod proxies;
pub mod report;
pub mod scale;
pub mod setup;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;

use paths::RunningPath;
use report::{Figures, Round};
use setup::{Backends, PathKind, Process, Setup};

#[derive(Parser, Debug)]
#[command(
    name = "clusterlink-bench",
    about = "Measure ClusterLink's data path beside direct TCP, nginx, haproxy and Envoy on this machine",
    long_about = "Measure ClusterLink's data path beside direct TCP, nginx, haproxy and Envoy on this machine.\n\n\
Each round starts every path fresh, in an order that rotates from round to round, and measures: \
iperf3 throughput with 1 and 4 streams, CPU seconds per GB of each side's process(es) during the \
1-stream run, new connections per second at concurrency 1 and 8 with connect-to-echo latency, \
each side's CPU milliseconds per 1,000 connections at concurrency 8, and the resident memory each side adds per idle tunnel. It prints medians with their min–max and \
ratios computed within each round, and writes the same as JSON.\n\n\
Needs iperf3, nginx (with the stream module), haproxy and envoy: scripts/install-bench-deps.sh \
installs them, and scripts/bench runs both."
)]
pub struct Args {
    /// Rounds of every path; medians and ranges are over these.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds of each iperf3 run.
    #[arg(long, default_value_t = 5)]
    pub iperf_seconds: u64,
    /// Seconds of each connection-rate run.
    #[arg(long, default_value_t = 3)]
    pub conn_seconds: u64,
    /// Idle tunnels held open for the memory figure.
    #[arg(long, default_value_t = 10_000)]
    pub idle_tunnels: usize,
    /// Which paths to run, comma-separated: direct, nginx, haproxy, envoy-h1, envoy-h2,
    /// clusterlink, clusterlink-link (tunnels over a dialed link). Ratios need direct and
    /// envoy-h1 in the run.
    #[arg(long, value_delimiter = ',', default_value = "direct,nginx,haproxy,envoy-h1,envoy-h2,clusterlink,clusterlink-link", value_parser = parse_path)]
    pub paths: Vec<PathKind>,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/bench/results.json")]
    pub json: PathBuf,
    /// The envoy binary.
    #[arg(long, env = "ENVOY", default_value = "envoy")]
    pub envoy: PathBuf,
    /// Sizes of the many-site fabric, comma-separated: N sites (network namespaces on one WAN),
    /// each importing from the next 3. Needs root.
    #[arg(long, value_delimiter = ',', default_value = "10,20,40")]
    pub fabric_sites: Vec<usize>,
    /// Sizes of the full-mesh fabric, comma-separated: every site a Peer of every other, so each
    /// probes and fetches the catalog of every other. Empty for none.
    #[arg(long, value_delimiter = ',', default_value = "40")]
    pub fabric_mesh_sites: Vec<usize>,
    /// Measure only the many-site fabric, not the data paths.
    #[arg(long, conflicts_with = "no_fabric")]
    pub fabric_only: bool,
    /// Measure only the data paths, not the many-site fabric.
    #[arg(long)]
    pub no_fabric: bool,
    /// Where the policy-decision and configuration-write benchmarks wrote their figures
    /// (`policy.json`, `writes.json`; `scripts/bench` runs them first), to show beside the rest.
    #[arg(long, default_value = "target/bench")]
    pub scale_figures: PathBuf,
}

fn parse_path(s: &str) -> Result<PathKind, String> {
    PathKind::from_key(s).ok_or_else(|| {
        let known: Vec<&str> = PathKind::ALL.iter().map(|k| k.key()).collect();
        format!("unknown path {s:?}; known: {}", known.join(", "))
    })
}

/// Descriptors a process keeps for everything but idle tunnels (listeners, logs, stores).
const SPARE_FILES: u64 = 256;

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.rounds == 0 || args.paths.is_empty() {
        bail!("--rounds and --paths must not be empty");
    }
    if !args.no_fabric {
        clusterlink_testbed::netns::available().context(
            "the many-site fabric needs network namespaces (run as root, or pass --no-fabric)",
        )?;
    }
    // A proxy side holds two descriptors per idle tunnel (as does this benchmark: the client and
    // the backend's end), so the descriptor limit bounds how many tunnels a side can hold.
    let files = clusterlink_dataplane::process::raise_open_file_limit();
    let idle_tunnels = args
        .idle_tunnels
        .min((files.saturating_sub(SPARE_FILES) / 2) as usize);
    if idle_tunnels < args.idle_tunnels {
        eprintln!(
            "note: {files} open files per process allow {idle_tunnels} idle tunnels, not {}",
            args.idle_tunnels
        );
    }
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(PathBuf::from)
        .context("cannot tell where this binary is")?;
    check_programs(&args, &bin_dir)?;
    let mut work = tempfile::Builder::new()
        .prefix("clusterlink-bench")
        .tempdir()?;
    // Kept if the run fails, for the logs of whatever failed.
    work.disable_cleanup(true);
    let setup = Setup::create(work.path(), &bin_dir, args.envoy.clone())?;

    let mut json = serde_json::json!({
        "machine": machine(&args),
        "settings": {
            "rounds": args.rounds,
            "iperf_seconds": args.iperf_seconds,
            "conn_seconds": args.conn_seconds,
            "idle_tunnels": idle_tunnels,
            "fabric_sites": args.fabric_sites,
            "fabric_mesh_sites": args.fabric_mesh_sites,
        },
    });
    if !args.fabric_only {
        let rounds = measure_paths(&args, &setup, work.path(), idle_tunnels).await?;
        let mut shown = args.paths.clone();
        shown.sort();
        println!(
            "\nMedians of {} rounds (min–max); ratios are taken within each round. Side A is the \
client (importing) side, B the server (exporting) side.\n",
            args.rounds
        );
        print!("{}", report::table(&rounds, &shown));
        let targets = report::targets(&rounds);
        println!("\nTargets (ClusterLink):\n{}", report::verdicts(&targets));
        json["summary"] = serde_json::to_value(report::summarise(&rounds))?;
        json["targets"] = serde_json::to_value(targets)?;
        json["rounds"] = serde_json::to_value(rounds)?;
    }
    if !args.no_fabric {
        let mut figures = Vec::new();
        let sizes = args.fabric_sites.iter().map(|&n| (n, false));
        for (n, mesh) in sizes.chain(args.fabric_mesh_sites.iter().map(|&n| (n, true))) {
            eprintln!(
                "fabric of {n} sites{}",
                if mesh { ", full mesh" } else { "" }
            );
            // On this (the runtime's main) thread: the sites' processes live as long as it does.
            figures.push(fabric::measure(n, mesh, &bin_dir, work.path())?);
        }
        println!(
            "\nA fabric of N sites, each importing from the next {} (see BENCHMARKS.md):\n",
            fabric::SOURCES
        );
        print!("{}", fabric::table(&figures));
        let targets = fabric::targets(&figures);
        println!("\nTargets (a fabric):\n{}", report::verdicts(&targets));
        json["fabric"] = serde_json::to_value(figures)?;
        json["fabric_targets"] = serde_json::to_value(targets)?;
    }
    let scale = scale::Scale::read(&args.scale_figures)?;
    if scale.policy.is_some() || scale.writes.is_some() {
        println!(
            "\nInside one gateway (criterion benchmarks, from {}):\n",
            args.scale_figures.display()
        );
        print!("{}", scale.table());
        let targets = scale.targets();
        println!("\nTargets (scale):\n{}", report::verdicts(&targets));
        json["scale"] = scale.to_json();
        json["scale_targets"] = serde_json::to_value(targets)?;
    } else {
        println!(
            "\nNo policy-decision or configuration-write figures in {} (scripts/bench makes them).",
            args.scale_figures.display()
        );
    }
    if let Some(parent) = args.json.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&json)?)?;
    println!("JSON written to {}", args.json.display());
    work.disable_cleanup(false);
    Ok(())
}

/// Every data path, round after round, in rotating order.
async fn measure_paths(
    args: &Args,
    setup: &Setup,
    work: &std::path::Path,
    idle_tunnels: usize,
) -> anyhow::Result<Vec<Round>> {
    let iperf_port = setup::free_address()?;
    let mut iperf = Command::new("iperf3");
    iperf.args([
        "-s",
        "-B",
        "127.0.0.1",
        "-p",
        &iperf_port.port().to_string(),
    ]);
    let _iperf_server = Process::spawn(iperf, &work.join("iperf3.log"))?;
    let hold = loadgen::HoldBackend::start().await?;
    let backends = Backends {
        iperf: iperf_port,
        echo: loadgen::echo_backend().await?,
        hold: hold.addr,
    };
    wait_listening(backends.iperf).await?;

    let started = Instant::now();
    let mut rounds = Vec::new();
    for r in 0..args.rounds {
        // Rotate who goes first so a machine that drifts during a round favours no one.
        let mut order = args.paths.clone();
        let turn = r % order.len();
        order.rotate_left(turn);
        let mut round = Round {
            order: order.clone(),
            figures: Default::default(),
        };
        for kind in order {
            eprintln!(
                "[{:>4}s] round {}/{}: {}",
                started.elapsed().as_secs(),
                r + 1,
                args.rounds,
                kind.label()
            );
            let mut path = paths::start(kind, setup, &backends).await?;
            let figures = match measure_path(&path, &hold, args, idle_tunnels).await {
                Ok(figures) => figures,
                Err(e) => {
                    let logs = path.keep_logs();
                    return Err(e.context(format!(
                        "measuring {}; its logs are in {}",
                        kind.label(),
                        logs.display()
                    )));
                }
            };
            round.figures.insert(kind, figures);
        }
        rounds.push(round);
    }

    Ok(rounds)
}

async fn measure_path(
    path: &RunningPath,
    hold: &loadgen::HoldBackend,
    args: &Args,
    idle_tunnels: usize,
) -> anyhow::Result<Figures> {
    let mut f = Figures::new();
    let pids = &path.sides;
    let cpu_keys = [report::CPU_A, report::CPU_B];
    let idle_keys = [report::IDLE_A, report::IDLE_B];

    let before: Vec<f64> = pids.iter().map(|p| measure::cpu_seconds(*p)).collect();
    let front = path.fronts.iperf;
    let seconds = args.iperf_seconds;
    let one = tokio::task::spawn_blocking(move || measure::iperf3(front, 1, seconds)).await??;
    f.insert(report::GBIT_P1, one.gbit_per_s);
    for (i, pid) in pids.iter().enumerate() {
        let used = measure::cpu_seconds(*pid) - before[i];
        f.insert(cpu_keys[i], used / (one.bytes as f64 / 1e9));
    }
    let four = tokio::task::spawn_blocking(move || measure::iperf3(front, 4, seconds)).await??;
    f.insert(report::GBIT_P4, four.gbit_per_s);

    let duration = Duration::from_secs(args.conn_seconds);
    let stages_before = stage_totals(path).await?;
    let c1 = loadgen::connections(path.fronts.echo, 1, duration).await?;
    f.insert(report::CONNS_C1, c1.per_second);
    f.insert(report::P50_C1, c1.percentile(50.0));
    f.insert(report::P99_C1, c1.percentile(99.0));
    // Where a connection's time goes: means add up where percentiles do not.
    f.insert(report::MEAN_C1, c1.mean_ms() * 1e3);
    f.insert(report::CONNECT_C1, c1.connect_mean_ms() * 1e3);
    let stages_after = stage_totals(path).await?;
    for (i, key) in report::STAGES_C1.into_iter().enumerate() {
        let ((sum_before, count_before), (sum_after, count_after)) =
            (stages_before[i], stages_after[i]);
        if count_after > count_before {
            let mean = (sum_after - sum_before) / (count_after - count_before);
            f.insert(key, mean * 1e6);
        }
    }
    // What each side spends per connection: unlike the rate, it holds still when the shared
    // machine lends the run less of its cores.
    let before: Vec<f64> = pids.iter().map(|p| measure::cpu_seconds(*p)).collect();
    let c8 = loadgen::connections(path.fronts.echo, 8, duration).await?;
    let conn_cpu_keys = [report::CONN_CPU_A, report::CONN_CPU_B];
    for (i, pid) in pids.iter().enumerate() {
        let used = measure::cpu_seconds(*pid) - before[i];
        f.insert(
            conn_cpu_keys[i],
            used * 1e6 / c8.latencies_ms.len().max(1) as f64,
        );
    }
    f.insert(report::CONNS_C8, c8.per_second);
    f.insert(report::P50_C8, c8.percentile(50.0));
    f.insert(report::P99_C8, c8.percentile(99.0));

    if !pids.is_empty() && idle_tunnels > 0 {
        let before: Vec<u64> = pids.iter().map(|p| measure::resident_kib(*p)).collect();
        let open = loadgen::idle_connections(path.fronts.hold, hold, idle_tunnels).await?;
        for (i, pid) in pids.iter().enumerate() {
            let grown = measure::resident_kib(*pid).saturating_sub(before[i]);
            f.insert(idle_keys[i], grown as f64 / idle_tunnels as f64);
        }
        drop(open);
    }
    Ok(f)
}

/// Both gateways' setup-stage totals, each stage from the side that times it; zeros for a path
/// without gateways.
async fn stage_totals(path: &RunningPath) -> anyhow::Result<[(f64, f64); 6]> {
    let mut totals = [(0.0, 0.0); 6];
    for page in path.gateway_metrics().await? {
        for (total, (sum, count)) in totals.iter_mut().zip(measure::setup_stage_totals(&page)) {
            total.0 += sum;
            total.1 += count;
        }
    }
    Ok(totals)
}

fn check_programs(args: &Args, bin_dir: &std::path::Path) -> anyhow::Result<()> {
    let mut needed: Vec<(String, &str)> = Vec::new();
    let paths: &[PathKind] = if args.fabric_only {
        &[PathKind::Clusterlink]
    } else {
        needed.push(("iperf3".into(), "-v"));
        &args.paths
    };
    for kind in paths {
        match kind {
            PathKind::Nginx => needed.push(("nginx".into(), "-v")),
            PathKind::Haproxy => needed.push(("haproxy".into(), "-v")),
            PathKind::EnvoyH1 | PathKind::EnvoyH2 => {
                needed.push((args.envoy.display().to_string(), "--version"))
            }
            PathKind::Clusterlink | PathKind::ClusterlinkLink => needed.push((
                bin_dir.join("cl-gateway").display().to_string(),
                "--version",
            )),
            PathKind::Direct => {}
        }
    }
    for (program, flag) in needed {
        let runs = Command::new(&program)
            .arg(flag)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !runs {
            bail!(
                "{program} is missing or does not run: scripts/install-bench-deps.sh installs the \
programs, and `cargo build --release` the gateway"
            );
        }
    }
    Ok(())
}

async fn wait_listening(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("nothing listens on {addr}")
}

/// The machine and the versions measured, for the record.
fn machine(args: &Args) -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let v = |p: &str, a: &str| measure::version_of(std::path::Path::new(p), &[a]);
    serde_json::json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": v("uname", "-r"),
        "iperf3": v("iperf3", "-v"),
        "nginx": v("nginx", "-v"),
        "haproxy": v("haproxy", "-v"),
        "envoy": measure::version_of(&args.envoy, &["--version"]),
        "clusterlink": env!("CARGO_PKG_VERSION"),
    })
}
