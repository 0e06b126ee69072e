//! What one configuration write costs as the store grows: a single PUT (an Import whose port
//! changes) into a model holding 100, 10,000 or 100,000 objects on the embedded store (redb,
//! fsync per commit), alone and with a data plane's snapshot following the model as in a
//! gateway; and the data-plane snapshot built from the objects after a write.
//!
//! `cargo bench -p clusterlink-gateway --bench writes`.

use std::sync::Arc;
use std::time::Duration;

use clusterlink_api::{Object, Objects};
use clusterlink_dataplane::Snapshot;
use clusterlink_gateway::model::ControlPlane;
use clusterlink_store::RedbStore;
use criterion::{BenchmarkId, Criterion};

const SIZES: [usize; 3] = [100, 10_000, 100_000];

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
/// gateway (on the runtime's other thread).
fn writes(c: &mut Criterion, follower: bool) {
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
            clusterlink_dataplane::snapshot::rebuild_on_change(
                "bench",
                Default::default(),
                model.subscribe(),
                tokio::sync::watch::channel(Default::default()).1,
            )
        });
        let mut port = 1024u16;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                port = if port == 65_000 { 1024 } else { port + 1 };
                runtime
                    .block_on(model.apply(import(0, port)))
                    .expect("applied")
            })
        });
    }
    group.finish();
}

fn snapshots(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_after_a_write");
    group.sample_size(20);
    for &n in sizes() {
        let objects: Objects = (0..n)
            .map(|i| {
                let o = import(i, 1024 + (i % 60_000) as u16);
                (o.key(), o)
            })
            .collect();
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| Snapshot::build("bench", &Default::default(), &objects, Default::default()))
        });
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    writes(&mut criterion, false);
    writes(&mut criterion, true);
    snapshots(&mut criterion);
    criterion.final_summary();
}
