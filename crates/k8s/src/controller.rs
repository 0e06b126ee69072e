//! The controller: watches the cluster, feeds the gateway's model, and makes the changes
//! [`reconcile::plan`] asks for.
//!
//! It is level-triggered: any watched change wakes one pass that looks at everything (from the
//! watch caches, not the API server) and converges. A pass after a crash or a missed event
//! therefore repairs whatever drifted, such as a managed Service someone deleted.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clusterlink_api::clients::ClientHosts;
use clusterlink_api::kubernetes::{
    KubeAccessPolicy, KubeExport, KubeImport, KubePeer, KubePrivilegedAccessPolicy,
};
use clusterlink_api::{Condition, Kind, Scope};
use clusterlink_dataplane::metrics::Metrics;
use clusterlink_dataplane::ops::ProcessHealth;
use clusterlink_gateway::model::ControlPlane;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::{Notify, watch};

use crate::mcs::{ServiceExport, ServiceImport};
use crate::model;
use crate::reconcile::{self, Change, World};

/// The field manager named in server-side applies: `kubectl get --show-managed-fields` shows the
/// controller's fields under this name.
pub const FIELD_MANAGER: &str = "clusterlink-controller";
/// Changes arriving within this window are handled by one pass (a `kubectl apply` of many
/// objects is one burst of events).
const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often a pass runs without a watched change: it copies runtime conditions (peer
/// reachability) into Peer statuses and retries changes that failed.
const RESYNC_INTERVAL: Duration = Duration::from_secs(2);
/// API calls a pass makes at once: converging 1,000 new imports (4,000 calls) takes a few
/// seconds instead of half a minute, while the API server's default per-client rate limits and
/// priority-and-fairness queues still see a modest client.
const CHANGES_IN_FLIGHT: usize = 8;
/// A controller whose passes stopped finishing for this long is wedged (a call that never
/// returns): its liveness probe fails and it is restarted. Far above a slow pass over a large
/// cluster (about a second for 1,000 imports and 5,000 pods) plus the API server's own timeouts.
pub const WEDGED_AFTER: Duration = Duration::from_secs(120);
/// With `--mcs-api`, how long the Multi-Cluster Services API's kinds may take to list before the
/// controller stops and says their CRDs are missing: far above a first list, well below
/// [`WEDGED_AFTER`].
const MCS_LISTED_WITHIN: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
}

/// The controller's own metrics, served beside the gateway's.
#[derive(Clone)]
pub struct ControllerMetrics {
    pass_duration: Histogram,
    changes: Counter,
    failed_changes: Counter,
}

impl ControllerMetrics {
    /// Registers the controller's metrics in `metrics`.
    pub fn register(metrics: &mut Metrics) -> ControllerMetrics {
        // From 1 ms to about 33 s: a pass over a small cluster takes milliseconds.
        let pass_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let changes = Counter::default();
        let failed_changes = Counter::default();
        metrics.register(
            "controller_changes",
            "Changes the controller made through the API server (a converged cluster needs none)",
            changes.clone(),
        );
        metrics.register(
            "controller_pass_duration_seconds",
            "Time for one controller pass: reading the caches, updating the model, making the planned changes",
            pass_duration.clone(),
        );
        metrics.register(
            "controller_failed_changes",
            "Changes the API server refused or that failed (retried by the next pass); the log names each",
            failed_changes.clone(),
        );
        ControllerMetrics {
            pass_duration,
            changes,
            failed_changes,
        }
    }
}

/// What the controller needs to know about the peer it runs for.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The namespace the peer is deployed into.
    pub system_namespace: String,
    /// Labels that select this peer's data-plane pods.
    pub dataplane_labels: BTreeMap<String, String>,
    /// Ports the data-plane pods use themselves.
    pub reserved_ports: Vec<u16>,
    /// What each peer offers, as the control plane's probes fetch it: mirrored Imports follow.
    pub catalogs: watch::Receiver<Arc<clusterlink_api::catalog::Catalogs>>,
    /// Watch ServiceExports and publish ServiceImports ([`crate::mcs`]); their CRDs must exist.
    pub mcs_api: bool,
}

/// Makes planned changes through the API server.
#[derive(Clone)]
pub struct Executor {
    client: Client,
}

impl Executor {
    pub fn new(client: Client) -> Executor {
        Executor { client }
    }

    /// Makes every change, phase by phase in the plan's order (target ports, then objects, then
    /// deletions, then statuses), with up to [`CHANGES_IN_FLIGHT`] changes of one phase at once.
    /// A failed change does not stop the others (one bad object must not hold up the rest); the
    /// failures are returned after all were tried.
    pub async fn execute(&self, changes: &[Change], now: &str) -> Vec<ControllerError> {
        let mut failures = Vec::new();
        for phase in changes.chunk_by(|a, b| phase(a) == phase(b)) {
            let calls: Vec<_> = phase.iter().map(|change| self.make(change, now)).collect();
            let results: Vec<_> = futures::stream::iter(calls)
                .buffer_unordered(CHANGES_IN_FLIGHT)
                .collect()
                .await;
            for e in results.into_iter().filter_map(Result::err) {
                tracing::warn!(error = %e, "controller change failed");
                failures.push(e);
            }
        }
        failures
    }

    async fn make(&self, change: &Change, now: &str) -> Result<(), ControllerError> {
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        match change {
            Change::SetTargetPort {
                namespace,
                name,
                port,
            } => {
                let api: Api<KubeImport> = Api::namespaced(self.client.clone(), namespace);
                let patch = json!({"spec": {"targetPort": port}});
                api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(drop)
                    .map_err(failed(format!(
                        "writing targetPort {port} into import {namespace}/{name}"
                    )))
            }
            Change::ApplyService(service) => {
                let (namespace, name) = names(service.as_ref());
                let api: Api<Service> = Api::namespaced(self.client.clone(), &namespace);
                api.patch(&name, &apply, &Patch::Apply(service.as_ref()))
                    .await
                    .map(drop)
                    .map_err(failed(format!("applying Service {namespace}/{name}")))
            }
            Change::ApplyEndpointSlice(slice) => {
                let (namespace, name) = names(slice.as_ref());
                let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &namespace);
                api.patch(&name, &apply, &Patch::Apply(slice.as_ref()))
                    .await
                    .map(drop)
                    .map_err(failed(format!("applying EndpointSlice {namespace}/{name}")))
            }
            Change::DeleteService { namespace, name } => {
                let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
                delete(&api, name, "Service", namespace).await
            }
            Change::DeleteEndpointSlice { namespace, name } => {
                let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), namespace);
                delete(&api, name, "EndpointSlice", namespace).await
            }
            Change::ApplyServiceImport(import) => {
                let (namespace, name) = names(import.as_ref());
                let api: Api<ServiceImport> = Api::namespaced(self.client.clone(), &namespace);
                api.patch(&name, &apply, &Patch::Apply(import.as_ref()))
                    .await
                    .map(drop)
                    .map_err(failed(format!("applying ServiceImport {namespace}/{name}")))
            }
            Change::DeleteServiceImport { namespace, name } => {
                let api: Api<ServiceImport> = Api::namespaced(self.client.clone(), namespace);
                delete(&api, name, "ServiceImport", namespace).await
            }
            Change::ApplyImport(import) => {
                let (namespace, name) = (&import.metadata.namespace, &import.metadata.name);
                let mut resource = KubeImport::new(name, import.spec.clone());
                resource.metadata.namespace = Some(namespace.clone());
                resource.metadata.labels = Some(import.metadata.labels.clone());
                resource.metadata.annotations = Some(import.metadata.annotations.clone());
                let api: Api<KubeImport> = Api::namespaced(self.client.clone(), namespace);
                api.patch(name, &apply, &Patch::Apply(&resource))
                    .await
                    .map(drop)
                    .map_err(failed(format!(
                        "applying mirrored Import {namespace}/{name}"
                    )))
            }
            Change::DeleteImport { namespace, name } => {
                let api: Api<KubeImport> = Api::namespaced(self.client.clone(), namespace);
                delete(&api, name, "Import", namespace).await
            }
            Change::SetPeerLabels {
                namespace,
                name,
                labels,
            } => {
                let api: Api<KubePeer> = Api::namespaced(self.client.clone(), namespace);
                let patch = Patch::Merge(json!({"status": {"labels": labels}}));
                match api
                    .patch_status(name, &PatchParams::default(), &patch)
                    .await
                {
                    // Deleted since the pass began: nothing to report on.
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                    other => other.map(drop).map_err(failed(format!(
                        "writing the labels peer {namespace}/{name} reports into its status"
                    ))),
                }
            }
            Change::SetStatus {
                kind,
                namespace,
                name,
                conditions,
            } => {
                let conditions: Vec<Condition> = conditions
                    .iter()
                    .cloned()
                    .map(|mut c| {
                        c.last_transition_time
                            .get_or_insert_with(|| now.to_string());
                        c
                    })
                    .collect();
                let patch = Patch::Merge(json!({"status": {"conditions": conditions}}));
                let what = format!("writing the status of {kind} {namespace}/{name}");
                let resource = match kind {
                    Kind::Import => ApiResource::erase::<KubeImport>(&()),
                    Kind::Export => ApiResource::erase::<KubeExport>(&()),
                    Kind::Peer => ApiResource::erase::<KubePeer>(&()),
                    Kind::AccessPolicy => ApiResource::erase::<KubeAccessPolicy>(&()),
                    Kind::PrivilegedAccessPolicy => {
                        ApiResource::erase::<KubePrivilegedAccessPolicy>(&())
                    }
                };
                let client = self.client.clone();
                let api: Api<DynamicObject> = match kind.scope() {
                    Scope::System | Scope::Namespaced => {
                        Api::namespaced_with(client, namespace, &resource)
                    }
                    Scope::Cluster => Api::all_with(client, &resource),
                };
                let result = api
                    .patch_status(name, &PatchParams::default(), &patch)
                    .await
                    .map(drop);
                match result {
                    // Deleted since the pass began: nothing to report on.
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                    other => other.map_err(failed(what)),
                }
            }
        }
    }
}

/// Changes of one phase touch different objects, so they may go in any order; a later phase
/// may rely on an earlier one (a status that names the Service just applied).
fn phase(change: &Change) -> u8 {
    match change {
        Change::SetTargetPort { .. } => 0,
        Change::ApplyService(_)
        | Change::ApplyEndpointSlice(_)
        | Change::ApplyImport(_)
        | Change::ApplyServiceImport(_) => 1,
        Change::DeleteService { .. }
        | Change::DeleteEndpointSlice { .. }
        | Change::DeleteImport { .. }
        | Change::DeleteServiceImport { .. } => 2,
        Change::SetStatus { .. } | Change::SetPeerLabels { .. } => 3,
    }
}

fn names<K: Resource>(obj: &K) -> (String, String) {
    let m = obj.meta();
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

fn failed(action: String) -> impl FnOnce(kube::Error) -> ControllerError {
    move |source| ControllerError::Api { action, source }
}

async fn delete<K>(
    api: &Api<K>,
    name: &str,
    kind: &str,
    namespace: &str,
) -> Result<(), ControllerError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        // Already gone (the garbage collector follows owner references too).
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(ControllerError::Api {
            action: format!("deleting {kind} {namespace}/{name}"),
            source: e,
        }),
    }
}

/// The watch caches a pass reads.
struct Caches {
    peers: Store<KubePeer>,
    exports: Store<KubeExport>,
    imports: Store<KubeImport>,
    policies: Store<KubeAccessPolicy>,
    privileged: Store<KubePrivilegedAccessPolicy>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    /// With the Multi-Cluster Services API only.
    mcs: Option<(Store<ServiceExport>, Store<ServiceImport>)>,
}

/// A watch cache of `api`. Each object is kept without its `managedFields` (often the larger
/// half of a small object, and never read here) and as `trim` leaves it.
fn cache<K>(api: Api<K>, config: watcher::Config, wake: Arc<Notify>, trim: fn(&mut K)) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    tokio::spawn(async move {
        let events = watcher(api, config)
            .default_backoff()
            .modify(move |object| {
                object.meta_mut().managed_fields = None;
                trim(object);
            })
            .reflect(writer);
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            if let Err(e) = event {
                tracing::warn!(error = %e, "watch failed; retrying");
            }
            wake.notify_one();
        }
    });
    store
}

/// Runs the controller until the process ends: watches, feeds `control_plane` (whose snapshot
/// the data-plane replicas receive) and the pod table in `clients`, and converges the cluster.
/// `synced` fires once the model holds the whole cluster's configuration: a restarted control
/// plane must not stream its empty model to replicas that still serve the last good one.
pub async fn run(
    client: Client,
    config: ControllerConfig,
    control_plane: ControlPlane,
    clients: watch::Sender<Arc<ClientHosts>>,
    synced: tokio::sync::oneshot::Sender<()>,
    health: ProcessHealth,
    metrics: ControllerMetrics,
) {
    let mut catalogs = config.catalogs.clone();
    let mut synced = Some(synced);
    let wake = Arc::new(Notify::new());
    let system = config.system_namespace.as_str();
    let managed = watcher::Config::default().labels(&format!(
        "{}={}",
        reconcile::MANAGED_BY_LABEL,
        reconcile::MANAGED_BY
    ));
    let caches = Caches {
        peers: cache(
            Api::namespaced(client.clone(), system),
            Default::default(),
            wake.clone(),
            |_| {},
        ),
        exports: cache(
            Api::all(client.clone()),
            Default::default(),
            wake.clone(),
            |_| {},
        ),
        imports: cache(
            Api::all(client.clone()),
            Default::default(),
            wake.clone(),
            |_| {},
        ),
        policies: cache(
            Api::all(client.clone()),
            Default::default(),
            wake.clone(),
            |_| {},
        ),
        privileged: cache(
            Api::all(client.clone()),
            Default::default(),
            wake.clone(),
            |_| {},
        ),
        services: cache(
            Api::all(client.clone()),
            Default::default(),
            wake.clone(),
            |_| {},
        ),
        slices: cache(
            Api::all(client.clone()),
            managed.clone(),
            wake.clone(),
            |_| {},
        ),
        pods: cache(
            Api::all(client.clone()),
            Default::default(),
            wake.clone(),
            crate::pods::trim,
        ),
        mcs: config.mcs_api.then(|| {
            (
                cache(
                    Api::all(client.clone()),
                    Default::default(),
                    wake.clone(),
                    |_| {},
                ),
                cache(
                    Api::all(client.clone()),
                    managed.clone(),
                    wake.clone(),
                    |_| {},
                ),
            )
        }),
    };
    // Until every cache has listed once, an absent import may only be unlisted: deleting its
    // Service then would be wrong.
    for ready in [
        caches.peers.wait_until_ready().await,
        caches.exports.wait_until_ready().await,
        caches.imports.wait_until_ready().await,
        caches.policies.wait_until_ready().await,
        caches.privileged.wait_until_ready().await,
        caches.services.wait_until_ready().await,
        caches.slices.wait_until_ready().await,
        caches.pods.wait_until_ready().await,
    ] {
        if ready.is_err() {
            tracing::error!("a watch ended before its first list; the controller stops");
            return;
        }
    }
    if let Some((exports, imports)) = &caches.mcs {
        // Without the API's CRDs these never list: say so rather than wait in silence.
        let listed = tokio::time::timeout(MCS_LISTED_WITHIN, async {
            exports.wait_until_ready().await.is_ok() && imports.wait_until_ready().await.is_ok()
        });
        match listed.await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!("a watch ended before its first list; the controller stops");
                return;
            }
            Err(_) => {
                tracing::error!(
                    "--mcs-api: ServiceExports and ServiceImports cannot be listed: install the Multi-Cluster Services API's CRDs (multicluster.x-k8s.io) and grant the control plane their rights (clusterlink deploy peer --mcs-api)"
                );
                return;
            }
        }
    }
    tracing::info!(namespace = %system, "controller caches ready");
    let executor = Executor::new(client.clone());
    let mut status_tick = tokio::time::interval(RESYNC_INTERVAL);
    loop {
        let began = Instant::now();
        let pods: Vec<Arc<Pod>> = caches.pods.state();
        let world = World {
            system_namespace: config.system_namespace.clone(),
            dataplane_labels: config.dataplane_labels.clone(),
            dataplane_addresses: dataplane_addresses(&pods, &config),
            reserved_ports: config.reserved_ports.clone(),
            imports: owned(&caches.imports),
            exports: owned(&caches.exports),
            peers: owned(&caches.peers),
            access_policies: owned(&caches.policies),
            privileged_policies: owned(&caches.privileged),
            services: owned(&caches.services),
            endpoint_slices: owned(&caches.slices),
            catalogs: catalogs.borrow_and_update().clone(),
            mcs_api: caches.mcs.is_some(),
            service_exports: caches.mcs.as_ref().map(|m| owned(&m.0)).unwrap_or_default(),
            service_imports: caches.mcs.as_ref().map(|m| owned(&m.1)).unwrap_or_default(),
        };
        let objects = model::objects(&world);
        match control_plane.replace_all(objects).await {
            Err(e) => tracing::warn!(error = %e, "updating the model failed"),
            Ok(()) => {
                clients.send_if_modified(|current| {
                    let next = crate::pods::client_hosts(pods.iter().map(AsRef::as_ref));
                    let changed = **current != next;
                    if changed {
                        *current = Arc::new(next);
                    }
                    changed
                });
                if let Some(synced) = synced.take() {
                    let _ = synced.send(());
                    health.set_ready();
                }
            }
        }
        let changes = reconcile::plan(&world);
        let peer_changes = model::peer_status_changes(&control_plane, &world);
        let now = now_rfc3339();
        // Failures are logged by the executor and retried by the next pass.
        let failed = executor.execute(&changes, &now).await.len()
            + executor.execute(&peer_changes, &now).await.len();
        metrics
            .changes
            .inc_by((changes.len() + peer_changes.len()) as u64);
        metrics.failed_changes.inc_by(failed as u64);
        metrics.pass_duration.observe(began.elapsed().as_secs_f64());
        health.beat();
        tokio::select! {
            _ = wake.notified() => tokio::time::sleep(DEBOUNCE).await,
            // A peer's offers changed: mirrored Imports follow.
            Ok(()) = catalogs.changed() => tokio::time::sleep(DEBOUNCE).await,
            _ = status_tick.tick() => {}
        }
    }
}

fn owned<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> Vec<K> {
    store.state().iter().map(|o| o.as_ref().clone()).collect()
}

/// The ready data-plane pods of this peer, by address.
fn dataplane_addresses(pods: &[Arc<Pod>], config: &ControllerConfig) -> Vec<IpAddr> {
    pods.iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(&config.system_namespace))
        .filter(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            config
                .dataplane_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .filter(|p| crate::pods::is_ready(p))
        .filter_map(|p| p.status.as_ref()?.pod_ip.as_ref()?.parse().ok())
        .collect()
}

/// The current time as Kubernetes writes it (RFC 3339, seconds, UTC).
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}
