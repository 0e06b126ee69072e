//! Turning rounds of figures into medians, ranges and ratios, the table a person reads, the JSON a
//! program reads, and the verdict on each target.
//!
//! A ratio is computed within a round (both paths measured minutes apart at most, on the same
//! machine state) and only then summarised across rounds, so drift between rounds cancels out.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::setup::PathKind;

/// A figure the benchmark reports.
pub struct Metric {
    pub key: &'static str,
    pub label: &'static str,
    pub decimals: usize,
}

const fn metric(key: &'static str, label: &'static str, decimals: usize) -> Metric {
    Metric {
        key,
        label,
        decimals,
    }
}

pub const GBIT_P1: &str = "gbit_p1";
pub const GBIT_P4: &str = "gbit_p4";
pub const CPU_A: &str = "cpu_s_per_gb_a";
pub const CPU_B: &str = "cpu_s_per_gb_b";
pub const CONNS_C1: &str = "conns_per_s_c1";
pub const CONNS_C8: &str = "conns_per_s_c8";
pub const P50_C1: &str = "p50_ms_c1";
pub const P99_C1: &str = "p99_ms_c1";
pub const P50_C8: &str = "p50_ms_c8";
pub const P99_C8: &str = "p99_ms_c8";
pub const MEAN_C1: &str = "mean_us_c1";
pub const CONNECT_C1: &str = "client_connect_us_c1";
/// The gateways' setup stages at c=1, in [`crate::measure::SETUP_STAGES`]' order.
pub const STAGES_C1: [&str; 6] = [
    "stage_us_c1_a_decision",
    "stage_us_c1_a_peer_connection",
    "stage_us_c1_a_peer_answer",
    "stage_us_c1_b_decision",
    "stage_us_c1_b_backend_connect",
    "stage_us_c1_b_answer",
];
pub const CONN_CPU_A: &str = "cpu_ms_per_1000_conns_c8_a";
pub const CONN_CPU_B: &str = "cpu_ms_per_1000_conns_c8_b";
pub const IDLE_A: &str = "kib_per_idle_tunnel_a";
pub const IDLE_B: &str = "kib_per_idle_tunnel_b";

pub const METRICS: &[Metric] = &[
    metric(GBIT_P1, "iperf3 -P1, Gbit/s", 2),
    metric(GBIT_P4, "iperf3 -P4, Gbit/s", 2),
    metric(CPU_A, "CPU-s per GB, side A", 2),
    metric(CPU_B, "CPU-s per GB, side B", 2),
    metric(CONNS_C1, "new conns/s, c=1", 0),
    metric(CONNS_C8, "new conns/s, c=8", 0),
    metric(P50_C1, "connect p50 ms, c=1", 3),
    metric(P99_C1, "connect p99 ms, c=1", 3),
    metric(MEAN_C1, "c=1 mean µs: whole exchange", 0),
    metric(CONNECT_C1, "c=1 mean µs: client's TCP connect", 0),
    metric(STAGES_C1[0], "c=1 mean µs: A decision", 1),
    metric(STAGES_C1[1], "c=1 mean µs: A peer connection", 1),
    metric(STAGES_C1[2], "c=1 mean µs: A peer answer", 1),
    metric(STAGES_C1[3], "c=1 mean µs: B decision", 1),
    metric(STAGES_C1[4], "c=1 mean µs: B backend connect", 1),
    metric(STAGES_C1[5], "c=1 mean µs: B answer", 1),
    metric(P50_C8, "connect p50 ms, c=8", 3),
    metric(P99_C8, "connect p99 ms, c=8", 3),
    metric(CONN_CPU_A, "CPU-ms per 1,000 conns c=8, A", 0),
    metric(CONN_CPU_B, "CPU-ms per 1,000 conns c=8, B", 0),
    metric(IDLE_A, "KiB per idle tunnel, A", 1),
    metric(IDLE_B, "KiB per idle tunnel, B", 1),
];

/// One path's figures in one round, by metric key.
pub type Figures = BTreeMap<&'static str, f64>;

#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// The order the paths ran in (it rotates from round to round).
    pub order: Vec<PathKind>,
    pub figures: BTreeMap<PathKind, Figures>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub rounds: usize,
}

impl Stats {
    pub fn of(values: &[f64]) -> Option<Stats> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Stats {
            median,
            min: v[0],
            max: v[v.len() - 1],
            rounds: v.len(),
        })
    }
}

/// `path`'s `metric` across rounds.
pub fn stats(rounds: &[Round], path: PathKind, metric: &str) -> Option<Stats> {
    let values: Vec<f64> = rounds
        .iter()
        .filter_map(|r| r.figures.get(&path)?.get(metric).copied())
        .collect();
    Stats::of(&values)
}

/// `path`'s `metric` divided by `base`'s, within each round, across rounds.
pub fn ratio(rounds: &[Round], path: PathKind, base: PathKind, metric: &str) -> Option<Stats> {
    let values: Vec<f64> = rounds
        .iter()
        .filter_map(|r| {
            let value = r.figures.get(&path)?.get(metric)?;
            let base = r.figures.get(&base)?.get(metric)?;
            (*base > 0.0).then(|| value / base)
        })
        .collect();
    Stats::of(&values)
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    #[serde(flatten)]
    pub stats: Stats,
    pub vs_direct: Option<Stats>,
    pub vs_envoy_h1: Option<Stats>,
}

pub fn summarise(rounds: &[Round]) -> BTreeMap<PathKind, BTreeMap<&'static str, Summary>> {
    let mut out = BTreeMap::new();
    for path in PathKind::ALL {
        let mut per_metric = BTreeMap::new();
        for m in METRICS {
            if let Some(stats) = stats(rounds, path, m.key) {
                per_metric.insert(
                    m.key,
                    Summary {
                        stats,
                        vs_direct: ratio(rounds, path, PathKind::Direct, m.key),
                        vs_envoy_h1: ratio(rounds, path, PathKind::EnvoyH1, m.key),
                    },
                );
            }
        }
        if !per_metric.is_empty() {
            out.insert(path, per_metric);
        }
    }
    out
}

/// A goal from the performance issue, checked on ClusterLink's medians.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub goal: String,
    pub measured: Option<f64>,
    pub met: Option<bool>,
}

impl Target {
    pub fn at_least(goal: &str, measured: Option<f64>, bound: f64) -> Target {
        Target {
            goal: goal.into(),
            measured,
            met: measured.map(|v| v >= bound),
        }
    }

    pub fn at_most(goal: &str, measured: Option<f64>, bound: f64) -> Target {
        Target {
            goal: goal.into(),
            measured,
            met: measured.map(|v| v <= bound),
        }
    }
}

pub fn targets(rounds: &[Round]) -> Vec<Target> {
    let cl = PathKind::Clusterlink;
    let median = |s: Option<Stats>| s.map(|s| s.median);
    let at_least = Target::at_least;
    let at_most = Target::at_most;
    vec![
        at_least(
            "throughput, 1 stream >= 1.1 x Envoy HTTP/1.1",
            median(ratio(rounds, cl, PathKind::EnvoyH1, GBIT_P1)),
            1.1,
        ),
        at_most(
            "CPU-s per GB, side A <= 0.55",
            median(stats(rounds, cl, CPU_A)),
            0.55,
        ),
        at_most(
            "CPU-s per GB, side B <= 0.55",
            median(stats(rounds, cl, CPU_B)),
            0.55,
        ),
        at_least(
            "new conns/s at c=8 >= 1.5 x Envoy HTTP/2",
            median(ratio(rounds, cl, PathKind::EnvoyH2, CONNS_C8)),
            1.5,
        ),
        at_most(
            "connect p50 at c=1 <= 0.4 ms",
            median(stats(rounds, cl, P50_C1)),
            0.4,
        ),
        at_most(
            "KiB per idle tunnel, side A <= 48",
            median(stats(rounds, cl, IDLE_A)),
            48.0,
        ),
        at_most(
            "KiB per idle tunnel, side B <= 48",
            median(stats(rounds, cl, IDLE_B)),
            48.0,
        ),
        at_least(
            "throughput, 1 stream over a link >= 0.9 x direct",
            median(ratio(rounds, PathKind::ClusterlinkLink, cl, GBIT_P1)),
            0.9,
        ),
        at_most(
            "connect p50 at c=1 over a link <= 1.0 x direct",
            median(ratio(rounds, PathKind::ClusterlinkLink, cl, P50_C1)),
            1.0,
        ),
    ]
}

fn cell(s: &Stats, decimals: usize) -> String {
    if s.rounds == 1 || (s.min == s.max) {
        format!("{:.*}", decimals, s.median)
    } else {
        format!(
            "{:.*} ({:.*}–{:.*})",
            decimals, s.median, decimals, s.min, decimals, s.max
        )
    }
}

/// The table: a row per metric (with its ratios below it), a column per path.
pub fn table(rounds: &[Round], paths: &[PathKind]) -> String {
    const LABEL: usize = 26;
    // "13.537 (11.790–13.681)" and a space before it.
    const COLUMN: usize = 24;
    let mut out = String::new();
    let _ = write!(out, "{:<LABEL$}", "");
    for p in paths {
        let _ = write!(out, "{:>COLUMN$}", p.label());
    }
    out.push('\n');
    for m in METRICS {
        let row: Vec<Option<Stats>> = paths.iter().map(|p| stats(rounds, *p, m.key)).collect();
        if row.iter().all(Option::is_none) {
            continue;
        }
        let _ = write!(out, "{:<LABEL$}", m.label);
        for s in &row {
            let text = s
                .map(|s| cell(&s, m.decimals))
                .unwrap_or_else(|| "–".into());
            let _ = write!(out, "{text:>COLUMN$}");
        }
        out.push('\n');
        for (base, label) in [
            (PathKind::Direct, "  × direct"),
            (PathKind::EnvoyH1, "  × Envoy H1"),
        ] {
            let ratios: Vec<Option<Stats>> = paths
                .iter()
                .map(|p| ratio(rounds, *p, base, m.key).filter(|_| *p != base))
                .collect();
            if ratios.iter().all(Option::is_none) {
                continue;
            }
            let _ = write!(out, "{label:<LABEL$}");
            for s in &ratios {
                let text = s.map(|s| cell(&s, 3)).unwrap_or_else(|| "".into());
                let _ = write!(out, "{text:>COLUMN$}");
            }
            out.push('\n');
        }
    }
    out
}

pub fn verdicts(targets: &[Target]) -> String {
    let mut out = String::new();
    for t in targets {
        let (mark, value) = match (t.met, t.measured) {
            (Some(true), Some(v)) => ("met   ", format!("{v:.3}")),
            (Some(false), Some(v)) => ("MISSED", format!("{v:.3}")),
            _ => ("n/a   ", "not measured".into()),
        };
        let _ = writeln!(out, "  {mark} {:<48} {value}", t.goal);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(values: &[(PathKind, f64)]) -> Round {
        Round {
            order: values.iter().map(|(p, _)| *p).collect(),
            figures: values
                .iter()
                .map(|(p, v)| (*p, Figures::from([(GBIT_P1, *v)])))
                .collect(),
        }
    }

    #[test]
    fn medians_ranges_and_even_counts() {
        let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.rounds), (2.0, 1.0, 3.0, 3));
        assert_eq!(Stats::of(&[1.0, 2.0, 3.0, 10.0]).unwrap().median, 2.5);
        assert_eq!(Stats::of(&[f64::NAN]), None);
    }

    #[test]
    fn ratios_are_taken_within_each_round_before_the_median() {
        use PathKind::*;
        // The machine halves its speed in the second round; within each round ClusterLink is
        // 1.2x Envoy, which the ratio of medians across rounds would not show.
        let rounds = [
            round(&[(EnvoyH1, 10.0), (Clusterlink, 12.0), (Direct, 40.0)]),
            round(&[(EnvoyH1, 5.0), (Clusterlink, 6.0), (Direct, 20.0)]),
            round(&[(EnvoyH1, 10.0), (Clusterlink, 12.0), (Direct, 40.0)]),
        ];
        let r = ratio(&rounds, Clusterlink, EnvoyH1, GBIT_P1).unwrap();
        assert!((r.median - 1.2).abs() < 1e-9 && (r.min - 1.2).abs() < 1e-9);
        let t = &targets(&rounds)[0];
        assert_eq!(t.met, Some(true));
        // Missing figures make a target unmeasured, never met.
        assert!(targets(&rounds)[1].met.is_none());
        let text = table(&rounds, &[Direct, EnvoyH1, Clusterlink]);
        assert!(text.contains("× Envoy H1"), "{text}");
        assert!(text.contains("1.200"), "{text}");
    }
}
