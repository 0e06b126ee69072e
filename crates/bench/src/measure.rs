//! What the benchmark reads off the machine: a process tree's CPU time and resident memory (from
//! `/proc`), iperf3's own report, and the gateways' own timing of each tunnel's setup.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

/// `pid` and all its descendants: nginx works in child processes, and a wrapper may exec or fork
/// the real proxy.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some(stat) = read_stat(child) {
                parents.push((child, stat.ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    tree
}

struct Stat {
    ppid: u32,
    cpu_ticks: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces; fields count from after it.
    let after = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 4 (ppid), 14 (utime) and 15 (stime) of proc(5), counted from 1 before the name.
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        cpu_ticks: fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?,
    })
}

/// CPU seconds (user + system, all threads) used so far by `pid` and its descendants.
pub fn cpu_seconds(pid: u32) -> f64 {
    let ticks: u64 = process_tree(pid)
        .into_iter()
        .filter_map(read_stat)
        .map(|s| s.cpu_ticks)
        .sum();
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// Resident memory in KiB of `pid` and its descendants.
pub fn resident_kib(pid: u32) -> u64 {
    process_tree(pid)
        .into_iter()
        .filter_map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

/// One iperf3 client run's result, from its JSON report.
#[derive(Debug, Clone, Copy)]
pub struct Iperf {
    pub gbit_per_s: f64,
    pub bytes: u64,
}

/// Runs `iperf3 -c` through `front` with `streams` parallel streams for `seconds`.
pub fn iperf3(front: SocketAddr, streams: usize, seconds: u64) -> anyhow::Result<Iperf> {
    let out = Command::new("iperf3")
        .args([
            "-c",
            &front.ip().to_string(),
            "-p",
            &front.port().to_string(),
        ])
        .args(["-P", &streams.to_string(), "-t", &seconds.to_string(), "-J"])
        .output()
        .context("cannot run iperf3 (scripts/install-bench-deps.sh installs it)")?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(error) = report["error"].as_str() {
        bail!("iperf3 through {front}: {error}");
    }
    let received = &report["end"]["sum_received"];
    match (
        received["bits_per_second"].as_f64(),
        received["bytes"].as_u64(),
    ) {
        (Some(bits), Some(bytes)) if bytes > 0 => Ok(Iperf {
            gbit_per_s: bits / 1e9,
            bytes,
        }),
        _ => bail!("iperf3 through {front} reported no received bytes"),
    }
}

/// The first line a command prints of its version (on stdout or stderr), for the record.
/// The setup stages the gateways time (`clusterlink_tunnel_setup_stage_seconds`), as
/// `(side, stage)`, in the order a tunnel goes through them.
pub const SETUP_STAGES: [(&str, &str); 6] = [
    ("egress", "decision"),
    ("egress", "peer_connection"),
    ("egress", "peer_answer"),
    ("ingress", "decision"),
    ("ingress", "backend_connect"),
    ("ingress", "answer"),
];

/// Seconds spent in each of [`SETUP_STAGES`] and how many tunnels were timed, from one gateway's
/// `/metrics` text; a stage the gateway does not show counts as (0, 0).
pub fn setup_stage_totals(metrics: &str) -> [(f64, f64); 6] {
    let sample = |suffix: &str, side: &str, stage: &str| {
        let name = format!(
            "clusterlink_tunnel_setup_stage_seconds_{suffix}{{side=\"{side}\",stage=\"{stage}\"}} "
        );
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name.as_str())?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    SETUP_STAGES.map(|(side, stage)| (sample("sum", side, stage), sample("count", side, stage)))
}

pub fn version_of(program: &Path, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            let text = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&text)
                .lines()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "not found".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_tree_includes_children_and_counts_their_cpu_and_memory() {
        let me = std::process::id();
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let tree = process_tree(me);
        assert_eq!(tree[0], me);
        assert!(tree.contains(&child.id()), "{tree:?}");
        // This test process has run code and holds memory.
        assert!(resident_kib(me) > 1000);
        let spin = std::time::Instant::now();
        while spin.elapsed().as_millis() < 100 {
            std::hint::black_box(0u64);
        }
        assert!(cpu_seconds(me) > 0.0);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn setup_stages_are_read_by_side_and_stage() {
        let text = "\
clusterlink_tunnel_setup_stage_seconds_sum{side=\"egress\",stage=\"decision\"} 0.5
clusterlink_tunnel_setup_stage_seconds_count{side=\"egress\",stage=\"decision\"} 4
clusterlink_tunnel_setup_stage_seconds_sum{side=\"ingress\",stage=\"answer\"} 0.25
clusterlink_tunnel_setup_stage_seconds_count{side=\"ingress\",stage=\"answer\"} 2
";
        let totals = setup_stage_totals(text);
        assert_eq!(totals[0], (0.5, 4.0));
        assert_eq!(totals[5], (0.25, 2.0));
        assert_eq!(totals[1], (0.0, 0.0));
    }
}
