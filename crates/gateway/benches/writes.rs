//! What one configuration write costs as the store grows: a single PUT (an Import whose port
//! changes) into a model holding 100, 10,000 or 100,000 objects on the embedded store (redb,
//! fsync per commit), alone and with a data plane's snapshot following the model as in a
//! gateway; and the data plane's snapshot brought up to date after a write, and built whole.
//!
//! `cargo bench -p clusterlink-gateway --bench writes`. With `CLUSTERLINK_BENCH_OUT=DIR` it also
//! times [`TIMED_PUTS`] single PUTs at each size on its own clock and writes their median and
//! mean to `DIR/writes.json`, for `clusterlink-bench`'s table (`crates/bench/src/scale.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clusterlink_api::{Object, Objects};
use clusterlink_dataplane::Snapshot;
use clusterlink_gateway::model::ControlPlane;
use clusterlink_store::RedbStore;
use criterion::{BenchmarkId, Criterion};

const SIZES: [usize; 3] = [100, 10_000, 100_000];
/// Single PUTs timed per size for the JSON summary: enough for a steady median.
const TIMED_PUTS: usize = 200;

/// The sizes to run: all under `cargo bench` (which passes --bench); under `cargo test
/// --all-targets`, which runs each benchmark once to see it works, the smallest only.
fn sizes() -> &'static [usize] {
    if std::env::args().any(|a| a == "--bench") {
        &SIZES
    } else {
        &SIZES[..1]
    }
}

fn import(i: usize, port: u16) -> Object {
    let yaml = format!(
        "apiVersion: clusterlink.net/v1alpha1\nkind: Import\nmetadata: {{name: svc-{i}, namespace: bench}}\n\
         spec: {{port: {port}, sources: [{{peer: p1, exportName: svc-{i}, exportNamespace: bench}}]}}\n"
    );
    clusterlink_api::parse_manifest(&yaml, "bench").expect("a valid import")
}

/// Single PUTs in a row; with `follower`, a data plane's snapshot follows the model as in a
/// gateway (on the runtime's other thread). With `summary`, also [`TIMED_PUTS`] timed one by one
/// at each size, into it.
fn writes(
    c: &mut Criterion,
    follower: bool,
    summary: Option<&mut serde_json::Map<String, serde_json::Value>>,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let name = if follower {
        "one_put_with_data_plane"
    } else {
        "one_put"
    };
    let mut group = c.benchmark_group(name);
    group.sample_size(30);
    let mut timed = Vec::new();
    for &n in sizes() {
        let dir = tempfile::tempdir().expect("a directory");
        let store = Arc::new(RedbStore::open(dir.path()).expect("a store"));
        let model = runtime.block_on(async {
            let model = ControlPlane::open(store).expect("a model");
            let objects: Vec<Object> = (0..n)
                .map(|i| import(i, 1024 + (i % 60_000) as u16))
                .collect();
            model.replace_all(objects).await.expect("prefilled");
            model
        });
        let _snapshots = follower.then(|| {
            let _entered = runtime.enter();
            clusterlink_dataplane::snapshot::follow_changes(
                "bench",
                Default::default(),
                model.subscribe(),
                tokio::sync::watch::channel(Default::default()).1,
            )
        });
        let mut port = 1024u16;
        let mut put = || {
            port = if port == 65_000 { 1024 } else { port + 1 };
            runtime
                .block_on(model.apply(import(0, port)))
                .expect("applied")
        };
        group.bench_function(BenchmarkId::from_parameter(n), |b| b.iter(&mut put));
        if summary.is_some() {
            let mut took: Vec<f64> = (0..TIMED_PUTS)
                .map(|_| {
                    let started = Instant::now();
                    put();
                    started.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            timed.push(summary_of(n, &mut took));
        }
    }
    group.finish();
    if let Some(summary) = summary {
        summary.insert(name.to_string(), timed.into());
    }
}

/// The data plane's snapshot brought up to date after one write ([`Snapshot::follow`]), and, for
/// comparison, built whole (as at start-up). With `summary`, also [`TIMED_PUTS`] follows timed
/// one by one at each size, into it.
fn snapshots(c: &mut Criterion, summary: Option<&mut serde_json::Map<String, serde_json::Value>>) {
    let mut timed = Vec::new();
    for &n in sizes() {
        let objects: Objects = (0..n)
            .map(|i| {
                let o = import(i, 1024 + (i % 60_000) as u16);
                (o.key(), o)
            })
            .collect();
        let snapshot = Snapshot::build("bench", &Default::default(), &objects, Default::default());
        let mut after = objects.clone();
        let changed = import(n / 2, 65_001);
        after.insert(changed.key(), changed);
        c.benchmark_group("snapshot_after_a_write")
            .sample_size(30)
            .bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| snapshot.follow(&objects, &after))
            });
        c.benchmark_group("snapshot_built_whole")
            .sample_size(10)
            .bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| {
                    Snapshot::build("bench", &Default::default(), &objects, Default::default())
                })
            });
        if summary.is_some() {
            let mut took: Vec<f64> = (0..TIMED_PUTS)
                .map(|_| {
                    let started = Instant::now();
                    std::hint::black_box(snapshot.follow(&objects, &after));
                    started.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            timed.push(summary_of(n, &mut took));
        }
    }
    if let Some(summary) = summary {
        summary.insert("snapshot_after_a_write".to_string(), timed.into());
    }
}

/// One size's timings (ms) as the JSON summary holds them: median and mean.
fn summary_of(objects: usize, took: &mut [f64]) -> serde_json::Value {
    took.sort_by(f64::total_cmp);
    let mean = took.iter().sum::<f64>() / took.len() as f64;
    serde_json::json!({ "objects": objects, "p50_ms": took[took.len() / 2], "mean_ms": mean })
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let out = std::env::var_os("CLUSTERLINK_BENCH_OUT")
        .filter(|_| std::env::args().any(|a| a == "--bench"));
    let mut summary = out.as_ref().map(|_| serde_json::Map::new());
    writes(&mut criterion, false, summary.as_mut());
    writes(&mut criterion, true, summary.as_mut());
    snapshots(&mut criterion, summary.as_mut());
    criterion.final_summary();
    if let (Some(dir), Some(summary)) = (out, summary) {
        let path = std::path::Path::new(&dir).join("writes.json");
        std::fs::create_dir_all(&dir).expect("the output directory");
        std::fs::write(&path, serde_json::to_string_pretty(&summary).expect("JSON"))
            .expect("the results file");
        println!("written to {}", path.display());
    }
}
