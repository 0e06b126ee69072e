//! One policy decision as the number of policies grows: 10, 100, 1,000 and 10,000 access
//! policies in the decision's namespace (and a tenth as many privileged ones), half of them
//! matching the connection, in two shapes:
//!
//! - `many_exports`: the matching half are allows; the other half deny other exports.
//! - `one_export`: every policy is about the connection's export; the matching half allow its
//!   client's namespace, the other half deny other namespaces.
//!
//! Denies are checked first, so an engine that scans every policy pays for all of them before
//! it reaches an allow; an engine that indexes them does not.
//!
//! `cargo bench -p clusterlink-dataplane --bench policy` prints criterion's estimate and, first,
//! the p50 and p99 of single decisions (criterion reports means and medians, not tails). With
//! `CLUSTERLINK_BENCH_OUT=DIR` it also writes those to `DIR/policy.json`, for `clusterlink-bench`'s
//! table (`crates/bench/src/scale.rs` reads it).

// A benchmark times the real clock, which the data plane's own code never reads.
#![allow(clippy::disallowed_types)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use clusterlink_api::Object;
use clusterlink_api::attributes::Attributes;
use clusterlink_dataplane::policy::PolicyEngine;
use criterion::{BenchmarkId, Criterion};

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

fn policy(kind: &str, namespace: &str, name: &str, action: &str, from: &str, to: &str) -> Object {
    let yaml = format!(
        "apiVersion: clusterlink.net/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\n\
         spec: {{action: {action}, from: [{{workloadSelector: {from}}}], to: [{{workloadSelector: {to}}}]}}\n"
    );
    clusterlink_api::parse_manifest(&yaml, namespace).expect("a valid policy")
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    ManyExports,
    OneExport,
}

/// `n` namespaced policies (half matching allows, half non-matching denies) and `n / 10`
/// privileged denies of other exports.
fn engine(shape: Shape, n: usize) -> PolicyEngine {
    let mut objects = Vec::new();
    for i in 0..n {
        let (action, from, to) = match (shape, i % 2 == 0) {
            (_, true) => ("allow", "shop".to_string(), "reviews".to_string()),
            (Shape::ManyExports, false) => ("deny", "shop".to_string(), format!("svc-{i}")),
            (Shape::OneExport, false) => ("deny", format!("ns-{i}"), "reviews".to_string()),
        };
        let from = format!("{{matchLabels: {{client.clusterlink.net/namespace: {from}}}}}");
        let to = format!("{{matchLabels: {{export.clusterlink.net/name: {to}}}}}");
        objects.push(policy(
            "AccessPolicy",
            "shop",
            &format!("p-{i:05}"),
            action,
            &from,
            &to,
        ));
    }
    for i in 0..n / 10 {
        let to = format!("{{matchLabels: {{export.clusterlink.net/name: svc-{i}}}}}");
        let name = format!("priv-{i:05}");
        objects.push(policy(
            "PrivilegedAccessPolicy",
            "default",
            &name,
            "deny",
            "{}",
            &to,
        ));
    }
    PolicyEngine::compile(&objects)
}

fn attributes(pairs: &[(&str, &str)]) -> Attributes {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn connection() -> (Attributes, Attributes) {
    let src = attributes(&[
        ("client.clusterlink.net/namespace", "shop"),
        ("client.clusterlink.net/labels.app", "web"),
        ("peer.clusterlink.net/name", "client1"),
    ]);
    let dst = attributes(&[
        ("export.clusterlink.net/name", "reviews"),
        ("export.clusterlink.net/namespace", "shop"),
        ("peer.clusterlink.net/name", "server1"),
    ]);
    (src, dst)
}

/// p50 and p99 of single decisions, each timed on its own, by policy count.
fn tails(shape: Shape) -> serde_json::Value {
    let mut sizes = Vec::new();
    let (src, dst) = connection();
    println!("{shape:?}: policies   p50        p99        (single decisions, {SAMPLES} each)");
    for n in SIZES {
        let engine = engine(shape, n);
        assert!(engine.decide("shop", &src, &dst).allowed);
        let mut took: Vec<Duration> = (0..SAMPLES)
            .map(|_| {
                let started = Instant::now();
                black_box(engine.decide(black_box("shop"), black_box(&src), black_box(&dst)));
                started.elapsed()
            })
            .collect();
        took.sort_unstable();
        let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
        println!("{n:>20}   {:>8.2?}   {:>8.2?}", at(0.50), at(0.99));
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        sizes.push(serde_json::json!({
            "policies": n, "p50_us": us(at(0.50)), "p99_us": us(at(0.99)),
        }));
    }
    serde_json::Value::from(sizes)
}

/// Decisions timed per size for the percentiles: enough for a stable p99.
const SAMPLES: usize = 20_000;

fn decisions(c: &mut Criterion, shape: Shape) {
    let (src, dst) = connection();
    let mut group = c.benchmark_group(format!("policy_decision/{shape:?}"));
    for n in SIZES {
        let engine = engine(shape, n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &engine, |b, engine| {
            b.iter(|| engine.decide(black_box("shop"), black_box(&src), black_box(&dst)))
        });
    }
    group.finish();
}

fn main() {
    let shapes = [Shape::ManyExports, Shape::OneExport];
    // `cargo bench` passes --bench; `cargo test --all-targets` runs each benchmark once only.
    if std::env::args().any(|a| a == "--bench") {
        let all: serde_json::Map<_, _> = shapes
            .into_iter()
            .map(|shape| (format!("{shape:?}"), tails(shape)))
            .collect();
        if let Some(dir) = std::env::var_os("CLUSTERLINK_BENCH_OUT") {
            let path = std::path::Path::new(&dir).join("policy.json");
            std::fs::create_dir_all(&dir).expect("the output directory");
            std::fs::write(&path, serde_json::to_string_pretty(&all).expect("JSON"))
                .expect("the results file");
            println!("written to {}", path.display());
        }
    }
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    for shape in shapes {
        decisions(&mut criterion, shape);
    }
    criterion.final_summary();
}
