//! The control plane's model: every object the gateway knows, kept in memory and made durable in
//! the store.
//!
//! One writer task owns all mutation. It takes requests in batches, decides each against the
//! current state (plus the batch's earlier requests), commits the whole batch to the store in one
//! transaction (one fsync), and only then publishes it and answers. Readers see a consistent
//! snapshot without waiting on disk.
//!
//! Every change of an object gives it a new `metadata.resourceVersion`, from one counter that
//! only grows (kept in the store, so a version is never given twice, even after a restart or a
//! delete). Versions are stored beside the objects, not in them, so an earlier release still
//! reads the store; an object it changed meanwhile gets a new version when this one opens it. A write that carries a version is applied only while the object
//! is still at it: concurrent read-modify-write clients get `409 Conflict` rather than losing
//! each other's change. `metadata.generation` counts changes of the spec. Objects that another
//! source owns (the Kubernetes API server, through [`ControlPlane::replace_all`]) keep that
//! source's versions.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;

use clusterlink_api::catalog::{self, Catalogs};
use clusterlink_api::{
    Condition, ConditionReason, ConditionStatus, ConditionType, FieldError, FieldErrors,
    ImportSource, Kind, Object, ObjectKey, Objects, SYSTEM_NAMESPACE, Scope, ServiceNaming, Status,
};
use clusterlink_store::{Store, StoreError, Write};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{mpsc, oneshot, watch};

/// Most requests folded into one store commit. Large enough that a burst of applies costs a
/// handful of fsyncs; small enough that one batch's latency stays in milliseconds.
const MAX_BATCH: usize = 512;
/// Requests queued for the writer before callers wait; bounds memory under a flood.
const WRITE_QUEUE: usize = 4096;

/// The entry beside the objects that holds the last resource version given (the objects' keys
/// all hold a `/`, so it cannot be one of theirs).
pub const REVISION_KEY: &str = "revision";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0} not found")]
    NotFound(ObjectKey),
    #[error(
        "{key} has been changed since it was read (resourceVersion {given}, now {current}): read it again, apply your change to the latest version and try again"
    )]
    Conflict {
        key: ObjectKey,
        given: String,
        current: String,
    },
    #[error("{0} already exists")]
    AlreadyExists(ObjectKey),
    #[error("{0}")]
    Invalid(FieldErrors),
    #[error("the store failed, nothing was changed: {0}")]
    Store(#[from] StoreError),
    #[error("stored object {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

/// What a successful write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Created,
    Configured,
    Unchanged,
    Deleted,
}

impl WriteOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteOutcome::Created => "created",
            WriteOutcome::Configured => "configured",
            WriteOutcome::Unchanged => "unchanged",
            WriteOutcome::Deleted => "deleted",
        }
    }
}

#[derive(Debug)]
enum Mutation {
    /// Fails if the object exists.
    Create(Object),
    /// Create or replace; a `metadata.resourceVersion` the object carries must be the stored
    /// object's.
    Apply(Object),
    /// Create or replace, keeping the versions the object carries: another source owns it.
    Adopt(Object),
    Delete(ObjectKey),
}

/// What a request asks the writer to do; all of it lands, or none.
enum Change {
    /// Boxed, so that every request is small in the writer's channel.
    One(Box<Mutation>),
    /// Make the model hold exactly these objects (decided against the state the writer sees).
    ReplaceAll(Vec<Object>),
}

type Reply = Result<Vec<(WriteOutcome, Object)>, ModelError>;

struct Request {
    change: Change,
    reply: oneshot::Sender<Reply>,
}

/// Conditions the running gateway reports about objects (a listener that could not bind, a peer
/// found unreachable). Kept in memory only: they describe this process, not desired state.
type RuntimeConditions = HashMap<ObjectKey, Vec<Condition>>;

/// The control plane's view of configuration. Cheap to clone; all clones share one model.
#[derive(Clone)]
pub struct ControlPlane {
    objects: watch::Sender<Arc<Objects>>,
    runtime: Arc<RwLock<RuntimeConditions>>,
    /// The labels each Peer reports about itself (its `status.labels`).
    reported_labels: Arc<RwLock<HashMap<ObjectKey, BTreeMap<String, String>>>>,
    /// What peers offer, once the data plane fetches catalogs: an Import's `SourcesReady` says
    /// when no source's peer offers its export.
    catalogs: Arc<OnceLock<watch::Receiver<Arc<Catalogs>>>>,
    writer: mpsc::Sender<Request>,
    store: Arc<dyn Store>,
}

impl ControlPlane {
    /// Loads every stored object and starts the writer. Fails if any stored entry is unreadable,
    /// rather than serving a model that silently lost objects.
    pub fn open(store: Arc<dyn Store>) -> Result<ControlPlane, ModelError> {
        let mut objects = Objects::new();
        let mut revision = Revision::default();
        let mut versions: HashMap<String, Vec<u8>> = store.load_meta()?.into_iter().collect();
        if let Some(last) = versions.remove(REVISION_KEY) {
            revision.last = std::str::from_utf8(&last)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| ModelError::Corrupt {
                    key: REVISION_KEY.into(),
                    reason: "not a number".into(),
                })?;
        }
        // Objects stored before versions were kept, or changed since by an earlier release, get
        // a version now, once.
        let mut unversioned = Vec::new();
        for (key, stored) in store.load_all()? {
            let corrupt = |reason: String| ModelError::Corrupt {
                key: key.clone(),
                reason,
            };
            let value: serde_json::Value =
                serde_json::from_slice(&stored).map_err(|e| corrupt(e.to_string()))?;
            let mut obj = clusterlink_api::manifest::object_from_value(value)
                .map_err(|e| corrupt(e.to_string()))?;
            match versions
                .get(&key)
                .and_then(|v| VersionRecord::read(v, &stored))
            {
                Some(record) => record.apply_to(&mut obj),
                None => unversioned.push(obj.key()),
            }
            objects.insert(obj.key(), obj);
        }
        if !unversioned.is_empty() {
            let mut commit = Vec::new();
            for key in unversioned {
                if let Some(obj) = objects.get(&key) {
                    let mut versioned = obj.clone();
                    revision.stamp(&mut versioned, None);
                    commit.extend(stored(&versioned)?);
                    objects.insert(key, versioned);
                }
            }
            commit.push(revision.write());
            store.commit(&commit)?;
        }
        let objects = watch::Sender::new(Arc::new(objects));
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(writer(store.clone(), objects.clone(), rx, revision));
        Ok(ControlPlane {
            objects,
            runtime: Arc::default(),
            reported_labels: Arc::default(),
            catalogs: Arc::default(),
            writer: tx,
            store,
        })
    }

    /// Whether writes can be served now: the writer runs and the store answers.
    pub async fn health(&self) -> Result<(), ModelError> {
        if self.writer.is_closed() {
            return Err(ModelError::ShuttingDown);
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.health())
            .await
            .map_err(|e| {
                ModelError::Store(StoreError::Backend(format!("store task failed: {e}")))
            })??;
        Ok(())
    }

    /// The current snapshot of all objects.
    pub fn snapshot(&self) -> Arc<Objects> {
        self.objects.borrow().clone()
    }

    /// A receiver that sees every committed snapshot; the data plane follows it.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Objects>> {
        self.objects.subscribe()
    }

    /// Sets (or with `None` clears) the runtime condition `type_` of `key`.
    pub fn set_condition(
        &self,
        key: &ObjectKey,
        type_: ConditionType,
        condition: Option<Condition>,
    ) {
        let mut runtime = self.runtime.write();
        let list = runtime.entry(key.clone()).or_default();
        list.retain(|c| c.type_ != type_.as_str());
        list.extend(condition);
        if list.is_empty() {
            runtime.remove(key);
        }
    }

    /// Judges Imports' sources by what peers offer, as `catalogs` (the data plane's) reports.
    pub fn follow_catalogs(&self, catalogs: watch::Receiver<Arc<Catalogs>>) {
        // Set once, by the gateway that starts the data plane.
        let _ = self.catalogs.set(catalogs);
    }

    fn with_status(&self, obj: Object) -> Object {
        let runtime = self.runtime.read();
        let key = obj.key();
        let mut derived;
        let mut conditions = runtime.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        if let Object::Import(import) = &obj {
            let catalogs = self.catalogs.get().map(|c| c.borrow().clone());
            derived = conditions.to_vec();
            derived.push(sources_ready(
                &import.spec,
                &self.snapshot(),
                &runtime,
                catalogs.as_deref(),
            ));
            conditions = &derived;
        }
        let labels = self
            .reported_labels
            .read()
            .get(&key)
            .cloned()
            .unwrap_or_default();
        with_status(obj, conditions, labels)
    }

    pub fn get(&self, key: &ObjectKey) -> Option<Object> {
        self.snapshot()
            .get(key)
            .map(|o| self.with_status(o.clone()))
    }

    /// Objects of `kind`, in one namespace or (`None`) in all, sorted by namespace and name.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<Object> {
        let snapshot = self.snapshot();
        let start = ObjectKey::new(kind, namespace.unwrap_or(""), "");
        snapshot
            .range_from(&start)
            .take_while(|(k, _)| k.kind == kind && namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, o)| self.with_status(o.clone()))
            .collect()
    }

    /// Creates `obj`; fails with [`ModelError::AlreadyExists`] if it exists.
    pub async fn create(&self, obj: Object) -> Result<(WriteOutcome, Object), ModelError> {
        self.submit(Mutation::Create(obj)).await
    }

    /// Creates or replaces `obj`.
    pub async fn apply(&self, obj: Object) -> Result<(WriteOutcome, Object), ModelError> {
        self.submit(Mutation::Apply(obj)).await
    }

    /// Deletes the object; returns it as it was.
    pub async fn delete(&self, key: ObjectKey) -> Result<(WriteOutcome, Object), ModelError> {
        self.submit(Mutation::Delete(key)).await
    }

    /// Makes the model hold exactly `objects`: applies what is new or changed and deletes the
    /// rest, as one change: one commit and one snapshot, so live tunnels are never decided
    /// against a half-applied configuration. Used where another source owns the configuration
    /// (the Kubernetes API server, or a replica's control plane).
    pub async fn replace_all(&self, objects: Vec<Object>) -> Result<(), ModelError> {
        for o in &objects {
            o.validate().map_err(ModelError::Invalid)?;
        }
        self.send(Change::ReplaceAll(objects)).await.map(drop)
    }

    async fn submit(&self, mutation: Mutation) -> Result<(WriteOutcome, Object), ModelError> {
        if let Mutation::Create(o) | Mutation::Apply(o) = &mutation {
            o.validate().map_err(ModelError::Invalid)?;
            if let Object::Export(e) = o
                && e.spec.port.is_none()
            {
                // Only Kubernetes has a Service to take the port from.
                return Err(ModelError::Invalid(FieldErrors(vec![FieldError::new(
                    "spec.port",
                    "required on a standalone gateway (on Kubernetes, an export without spec.host may leave it out to use its Service's port)",
                )])));
            }
        }
        let mut done = self.send(Change::One(Box::new(mutation))).await?;
        let (outcome, obj) = done.pop().ok_or(ModelError::ShuttingDown)?;
        Ok((outcome, self.with_status(obj)))
    }

    async fn send(&self, change: Change) -> Reply {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Request { change, reply })
            .await
            .map_err(|_| ModelError::ShuttingDown)?;
        rx.await.map_err(|_| ModelError::ShuttingDown)?
    }
}

/// The data plane reports the conditions only it knows (ports bound, peers reachable) here.
impl clusterlink_dataplane::RuntimeConditions for ControlPlane {
    fn set(&self, key: &ObjectKey, type_: ConditionType, condition: Option<Condition>) {
        self.set_condition(key, type_, condition);
    }

    fn set_reported_labels(&self, key: &ObjectKey, labels: Option<BTreeMap<String, String>>) {
        let mut reported = self.reported_labels.write();
        match labels {
            Some(l) => reported.insert(key.clone(), l),
            None => reported.remove(key),
        };
    }
}

fn store_key(key: &ObjectKey) -> String {
    format!("{}/{}/{}", key.kind.plural(), key.namespace, key.name)
}

/// The writes that store `obj`: the object without its versions, and beside it the versions
/// (or, for an object another source owns and that carries none, no versions).
fn stored(obj: &Object) -> Result<[Write; 2], ModelError> {
    let key = store_key(&obj.key());
    let mut plain = obj.clone();
    let meta = plain.metadata_mut();
    let record = VersionRecord {
        resource_version: meta.resource_version.take(),
        generation: meta.generation.take(),
    };
    let value = serde_json::to_vec(&plain).map_err(|e| {
        ModelError::Store(StoreError::Backend(format!(
            "cannot serialize {}: {e}",
            obj.key()
        )))
    })?;
    let versions = match record.resource_version {
        Some(_) => Write::PutMeta {
            value: record.write(&value),
            key: key.clone(),
        },
        None => Write::DeleteMeta { key: key.clone() },
    };
    Ok([Write::Put { key, value }, versions])
}

/// An object's versions as stored beside it: `<resourceVersion> <generation> <fingerprint>`. The
/// fingerprint is of the object as stored: an earlier release that changed the object left
/// the versions of the object it replaced, and they no longer fit.
struct VersionRecord {
    resource_version: Option<String>,
    generation: Option<i64>,
}

impl VersionRecord {
    fn write(&self, stored: &[u8]) -> Vec<u8> {
        format!(
            "{} {} {:016x}",
            self.resource_version.as_deref().unwrap_or_default(),
            self.generation.unwrap_or(1),
            fingerprint(stored)
        )
        .into_bytes()
    }

    /// The versions in `record`, if they are of the object stored as `stored`.
    fn read(record: &[u8], stored: &[u8]) -> Option<VersionRecord> {
        let text = std::str::from_utf8(record).ok()?;
        let mut parts = text.split(' ');
        let (version, generation, print) = (parts.next()?, parts.next()?, parts.next()?);
        (u64::from_str_radix(print, 16).ok()? == fingerprint(stored) && !version.is_empty()).then(
            || VersionRecord {
                resource_version: Some(version.to_string()),
                generation: generation.parse().ok(),
            },
        )
    }

    fn apply_to(self, obj: &mut Object) {
        let meta = obj.metadata_mut();
        meta.resource_version = self.resource_version;
        meta.generation = self.generation;
    }
}

/// FNV-1a: a fingerprint that stays the same across releases and platforms.
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The last resource version given.
#[derive(Debug, Clone, Copy, Default)]
struct Revision {
    last: u64,
}

impl Revision {
    /// Gives `obj` the next version, and the generation that follows `old`'s (1 when new, one
    /// more when the spec changed).
    fn stamp(&mut self, obj: &mut Object, old: Option<&Object>) {
        self.last += 1;
        let generation = match old {
            None => 1,
            Some(old) => {
                let was = old.metadata().generation.unwrap_or(1);
                if old.same_spec(obj) { was } else { was + 1 }
            }
        };
        let meta = obj.metadata_mut();
        meta.resource_version = Some(self.last.to_string());
        meta.generation = Some(generation);
    }

    fn write(self) -> Write {
        Write::PutMeta {
            key: REVISION_KEY.into(),
            value: self.last.to_string().into_bytes(),
        }
    }
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc())
        .format(&Rfc3339)
        .unwrap_or_default()
}

async fn writer(
    store: Arc<dyn Store>,
    objects: watch::Sender<Arc<Objects>>,
    mut rx: mpsc::Receiver<Request>,
    mut revision: Revision,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let current = objects.borrow().clone();
        let mut overlay: HashMap<ObjectKey, Option<Object>> = HashMap::new();
        let mut writes = Vec::new();
        let mut replies = Vec::new();
        // Versions given in this batch count only once it is committed.
        let mut batch_revision = revision;
        for Request { change, reply } in batch.drain(..) {
            // A replace-all is decided on a copy of the overlay, so that one that fails part way
            // leaves no trace; a single mutation that fails changes nothing anyway.
            let atomic = matches!(change, Change::ReplaceAll(_));
            let mut trial = if atomic {
                overlay.clone()
            } else {
                std::mem::take(&mut overlay)
            };
            let mut trial_revision = batch_revision;
            let mut trial_writes = Vec::new();
            let result = mutations(&current, &trial, change)
                .into_iter()
                .map(|mutation| {
                    let (outcome, obj) = decide(&current, &trial, mutation, &mut trial_revision)?;
                    let key = obj.key();
                    match outcome {
                        WriteOutcome::Unchanged => {}
                        WriteOutcome::Deleted => {
                            let key_in_store = store_key(&key);
                            trial_writes.push(Write::Delete {
                                key: key_in_store.clone(),
                            });
                            trial_writes.push(Write::DeleteMeta { key: key_in_store });
                            trial.insert(key, None);
                        }
                        WriteOutcome::Created | WriteOutcome::Configured => {
                            trial_writes.extend(stored(&obj)?);
                            trial.insert(key, Some(obj.clone()));
                        }
                    }
                    Ok((outcome, obj))
                })
                .collect::<Result<Vec<_>, ModelError>>();
            if result.is_ok() || !atomic {
                overlay = trial;
                writes.append(&mut trial_writes);
                batch_revision = trial_revision;
            }
            replies.push((reply, result));
        }
        if batch_revision.last != revision.last {
            writes.push(batch_revision.write());
        }
        let committed = if writes.is_empty() {
            Ok(())
        } else {
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.commit(&writes)).await {
                Ok(r) => r,
                Err(e) => Err(StoreError::Backend(format!("store task failed: {e}"))),
            }
        };
        match committed {
            Ok(()) => {
                revision = batch_revision;
                // Changed in place. While a reader holds the previous version (the data plane's
                // snapshot follower, a list being answered), a change copies only the pieces of
                // the shared map it touches, so a write costs its own changes, not the size of
                // the store.
                drop(current);
                if !overlay.is_empty() {
                    objects.send_modify(|shared| {
                        let next = Arc::make_mut(shared);
                        for (key, obj) in overlay {
                            match obj {
                                Some(o) => next.insert(key, o),
                                None => next.remove(&key),
                            };
                        }
                    });
                }
                for (reply, result) in replies {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed; the batch was not applied");
                for (reply, result) in replies {
                    let _ = reply.send(result.and(Err(ModelError::Store(e.clone()))));
                }
            }
        }
    }
}

/// The mutations a change makes, against the committed state plus the batch so far.
fn mutations(
    current: &Objects,
    overlay: &HashMap<ObjectKey, Option<Object>>,
    change: Change,
) -> Vec<Mutation> {
    match change {
        Change::One(mutation) => vec![*mutation],
        Change::ReplaceAll(objects) => {
            let wanted: std::collections::BTreeSet<ObjectKey> =
                objects.iter().map(Object::key).collect();
            let present = current
                .keys()
                .filter(|k| !matches!(overlay.get(*k), Some(None)))
                .chain(overlay.iter().filter(|(_, o)| o.is_some()).map(|(k, _)| k));
            let gone: std::collections::BTreeSet<ObjectKey> =
                present.filter(|k| !wanted.contains(*k)).cloned().collect();
            objects
                .into_iter()
                .map(Mutation::Adopt)
                .chain(gone.into_iter().map(Mutation::Delete))
                .collect()
        }
    }
}

/// Decides one mutation against the committed state plus the batch so far, giving what it
/// writes the next version from `revision`.
fn decide(
    current: &Objects,
    overlay: &HashMap<ObjectKey, Option<Object>>,
    mutation: Mutation,
    revision: &mut Revision,
) -> Result<(WriteOutcome, Object), ModelError> {
    let existing = |key: &ObjectKey| match overlay.get(key) {
        Some(o) => o.clone(),
        None => current.get(key).cloned(),
    };
    match mutation {
        Mutation::Create(mut obj) => {
            let key = obj.key();
            if obj.metadata().resource_version.is_some() {
                return Err(ModelError::Invalid(FieldErrors(vec![FieldError::new(
                    "metadata.resourceVersion",
                    "must not be set when creating an object: the server sets it",
                )])));
            }
            if existing(&key).is_some() {
                return Err(ModelError::AlreadyExists(key));
            }
            obj.set_status(None);
            obj.metadata_mut().creation_timestamp = Some(now_rfc3339());
            revision.stamp(&mut obj, None);
            Ok((WriteOutcome::Created, obj))
        }
        Mutation::Apply(mut obj) => {
            obj.set_status(None);
            let key = obj.key();
            let old = existing(&key);
            if let Some(given) = obj.metadata().resource_version.clone() {
                let Some(old) = &old else {
                    return Err(ModelError::NotFound(key));
                };
                let current = old.metadata().resource_version.clone().unwrap_or_default();
                if given != current {
                    return Err(ModelError::Conflict {
                        key,
                        given,
                        current,
                    });
                }
            }
            match old {
                None => {
                    obj.metadata_mut().creation_timestamp = Some(now_rfc3339());
                    revision.stamp(&mut obj, None);
                    Ok((WriteOutcome::Created, obj))
                }
                Some(old) if old.same_desired_state(&obj) => Ok((WriteOutcome::Unchanged, old)),
                Some(old) => {
                    obj.metadata_mut().creation_timestamp =
                        old.metadata().creation_timestamp.clone();
                    revision.stamp(&mut obj, Some(&old));
                    Ok((WriteOutcome::Configured, obj))
                }
            }
        }
        Mutation::Adopt(mut obj) => {
            obj.set_status(None);
            match existing(&obj.key()) {
                None => Ok((WriteOutcome::Created, obj)),
                // A new version with the same desired state (a status written back) changes
                // nothing here: the model holds the version of the last change that matters.
                Some(old) if old.same_desired_state(&obj) => Ok((WriteOutcome::Unchanged, old)),
                Some(_) => Ok((WriteOutcome::Configured, obj)),
            }
        }
        Mutation::Delete(key) => match existing(&key) {
            Some(old) => Ok((WriteOutcome::Deleted, old)),
            None => Err(ModelError::NotFound(key)),
        },
    }
}

/// The status a person sees on get: the conditions the object earns by being admitted, replaced
/// by any of the same type the running gateway reported.
fn with_status(
    mut obj: Object,
    runtime: &[Condition],
    reported_labels: BTreeMap<String, String>,
) -> Object {
    let carried = obj.kind().condition();
    let admitted = match &obj {
        Object::Peer(_) => vec![Condition::new(
            carried,
            ConditionStatus::Unknown,
            ConditionReason::NotProbed,
            "waiting for the first health probe",
        )],
        Object::Export(e) => {
            let host = e.backend_host(ServiceNaming::Bare);
            vec![Condition::new(
                carried,
                ConditionStatus::True,
                ConditionReason::Accepted,
                match e.spec.port {
                    Some(port) => format!("connections are served by {host}:{port}"),
                    None => format!("connections are served by {host}, on its Service's port"),
                },
            )]
        }
        Object::Import(i) => vec![Condition::new(
            carried,
            ConditionStatus::True,
            ConditionReason::Accepted,
            format!(
                "{} source(s), {}",
                i.spec.sources.len(),
                i.spec.lb_scheme.as_str()
            ),
        )],
        Object::AccessPolicy(_) | Object::PrivilegedAccessPolicy(_) => vec![],
    };
    let mut conditions: Vec<Condition> = admitted
        .into_iter()
        .filter(|c| runtime.iter().all(|r| r.type_ != c.type_))
        .collect();
    conditions.extend(runtime.iter().cloned());
    let status = Status {
        conditions,
        labels: reported_labels,
    };
    obj.set_status((status != Status::default()).then_some(status));
    obj
}

/// An Import's `SourcesReady`: whether its sources name defined Peers, whether they answer
/// probes (the Peers' own `PeerReachable`), and whether those that answer offer the export the
/// source names (`catalogs`, when known: a peer from before catalogs is given the benefit of the
/// doubt).
fn sources_ready(
    spec: &clusterlink_api::ImportSpec,
    objects: &Objects,
    runtime: &RuntimeConditions,
    catalogs: Option<&Catalogs>,
) -> Condition {
    let condition = |status, reason, message: String| {
        Condition::new(ConditionType::SourcesReady, status, reason, message)
    };
    let mut peers: Vec<&str> = spec.sources.iter().map(|s| s.peer.as_str()).collect();
    peers.sort_unstable();
    peers.dedup();
    let missing: Vec<String> = peers
        .iter()
        .filter(|p| !objects.contains_key(&ObjectKey::new(Kind::Peer, SYSTEM_NAMESPACE, **p)))
        .map(|p| format!("{p:?}"))
        .collect();
    if !missing.is_empty() {
        return condition(
            ConditionStatus::False,
            ConditionReason::NoSuchPeer,
            format!(
                "source peer {} is not defined: create the Peer, or fix the source",
                missing.join(", ")
            ),
        );
    }
    let reachable = |peer: &str| {
        runtime
            .get(&ObjectKey::new(Kind::Peer, SYSTEM_NAMESPACE, peer))
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.type_ == ConditionType::PeerReachable.as_str())
            })
            .map(|c| c.status)
    };
    let unreachable: Vec<&str> = peers
        .iter()
        .copied()
        .filter(|p| reachable(p) == Some(ConditionStatus::False))
        .collect();
    let unprobed = peers.iter().any(|p| reachable(p).is_none());
    // Sources whose peer answers but does not offer their export, and those that can serve.
    let answering = |s: &&ImportSource| reachable(&s.peer) == Some(ConditionStatus::True);
    let offered = |s: &ImportSource| {
        catalogs
            .and_then(|c| c.get(&s.peer))
            .is_none_or(|c| c.offers(&s.export_namespace, &s.export_name))
    };
    let not_offered: Vec<String> = spec
        .sources
        .iter()
        .filter(answering)
        .filter(|s| !offered(s))
        .map(|s| catalog::not_offered(&s.peer, &s.export_namespace, &s.export_name))
        .collect();
    let serving = spec.sources.iter().filter(answering).any(offered);
    if !peers.is_empty() && unreachable.len() == peers.len() {
        condition(
            ConditionStatus::False,
            ConditionReason::PeersUnreachable,
            format!(
                "no source's peer answers probes ({}); see `gwctl describe peer`",
                unreachable.join(", ")
            ),
        )
    } else if !serving && !not_offered.is_empty() && !unprobed {
        condition(
            ConditionStatus::False,
            ConditionReason::ExportNotOffered,
            format!(
                "no source can serve: {}; see `gwctl get offers`",
                not_offered.join("; ")
            ),
        )
    } else if unprobed {
        condition(
            ConditionStatus::Unknown,
            ConditionReason::NotProbed,
            "waiting for the first health probe of a source's peer".into(),
        )
    } else {
        let mut message = if unreachable.is_empty() {
            format!("every source's peer answers probes ({})", peers.join(", "))
        } else {
            format!(
                "{} of {} source peers answer probes; not {}",
                peers.len() - unreachable.len(),
                peers.len(),
                unreachable.join(", ")
            )
        };
        for why in &not_offered {
            message.push_str("; ");
            message.push_str(why);
        }
        condition(
            ConditionStatus::True,
            ConditionReason::PeersReachable,
            message,
        )
    }
}

/// Namespaces an object of `kind` may be addressed in, for REST paths.
pub fn scope_accepts(kind: Kind, namespace: Option<&str>) -> bool {
    match (kind.scope(), namespace) {
        (_, None) => true,
        (Scope::Namespaced, Some(_)) => true,
        (Scope::System, Some(ns)) => ns == clusterlink_api::SYSTEM_NAMESPACE,
        (Scope::Cluster, Some(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusterlink_api::parse_manifest;
    use clusterlink_store::MemoryStore;

    #[test]
    fn an_import_whose_answering_peers_do_not_offer_its_export_is_not_ready() {
        let manifest = |yaml: &str| {
            parse_manifest(
                &format!("apiVersion: clusterlink.net/v1alpha1\n{yaml}"),
                "default",
            )
            .unwrap()
        };
        let mut objects = Objects::new();
        for peer in ["p1", "p2"] {
            let obj = manifest(&format!(
                "kind: Peer\nmetadata: {{name: {peer}}}\nspec: {{gateways: [{{host: 10.0.0.1, port: 443}}]}}\n"
            ));
            objects.insert(obj.key(), obj);
        }
        let Object::Import(import) = manifest(
            "kind: Import\nmetadata: {name: web}\nspec: {port: 9000, sources: [{peer: p1, exportName: web, exportNamespace: default}, {peer: p2, exportName: web, exportNamespace: default}]}\n",
        ) else {
            unreachable!()
        };
        let mut runtime = RuntimeConditions::new();
        for peer in ["p1", "p2"] {
            runtime.insert(
                ObjectKey::new(Kind::Peer, SYSTEM_NAMESPACE, peer),
                vec![Condition::new(
                    ConditionType::PeerReachable,
                    ConditionStatus::True,
                    ConditionReason::Probed,
                    "ok",
                )],
            );
        }
        let offering = |names: &[&str]| clusterlink_api::catalog::Catalog {
            offers: names
                .iter()
                .map(|name| clusterlink_api::catalog::Offer {
                    namespace: "default".into(),
                    name: name.to_string(),
                    port: clusterlink_api::Port::new(80).unwrap(),
                    labels: Default::default(),
                })
                .collect(),
        };
        let judged =
            |catalogs: &Catalogs| sources_ready(&import.spec, &objects, &runtime, Some(catalogs));
        // Neither offers web: not ready, and each is named.
        let none = Catalogs::from([
            ("p1".into(), offering(&["db"])),
            ("p2".into(), offering(&[])),
        ]);
        let c = judged(&none);
        assert_eq!(
            (c.status, c.reason.as_str()),
            (ConditionStatus::False, "ExportNotOffered")
        );
        assert!(
            c.message.contains("p1 does not offer export default/web"),
            "{}",
            c.message
        );
        assert!(
            c.message.contains("p2 does not offer export default/web"),
            "{}",
            c.message
        );
        // One offers it: ready, and the other is still named.
        let one = Catalogs::from([
            ("p1".into(), offering(&["web"])),
            ("p2".into(), offering(&[])),
        ]);
        let c = judged(&one);
        assert_eq!(c.status, ConditionStatus::True);
        assert!(c.message.contains("p2 does not offer"), "{}", c.message);
        // A peer whose catalog is not known is given the benefit of the doubt.
        let unknown = Catalogs::from([("p1".into(), offering(&[]))]);
        assert_eq!(judged(&unknown).status, ConditionStatus::True);
    }

    fn export(name: &str, port: u16) -> Object {
        parse_manifest(
            &format!("apiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {{name: {name}}}\nspec: {{port: {port}}}\n"),
            "default",
        )
        .unwrap()
    }

    #[tokio::test]
    async fn create_apply_delete() {
        let store = Arc::new(MemoryStore::default());
        let cp = ControlPlane::open(store.clone()).unwrap();
        let (o, created) = cp.create(export("a", 80)).await.unwrap();
        assert_eq!(o, WriteOutcome::Created);
        assert!(created.metadata().creation_timestamp.is_some());
        assert!(matches!(
            cp.create(export("a", 80)).await,
            Err(ModelError::AlreadyExists(_))
        ));
        assert_eq!(
            cp.apply(export("a", 80)).await.unwrap().0,
            WriteOutcome::Unchanged
        );
        let (o, configured) = cp.apply(export("a", 81)).await.unwrap();
        assert_eq!(o, WriteOutcome::Configured);
        assert_eq!(
            configured.metadata().creation_timestamp,
            created.metadata().creation_timestamp
        );
        assert_eq!(cp.list(Kind::Export, Some("default")).len(), 1);
        assert_eq!(cp.list(Kind::Export, Some("other")).len(), 0);
        assert_eq!(cp.list(Kind::Import, None).len(), 0);
        let key = ObjectKey::new(Kind::Export, "default", "a");
        assert_eq!(
            cp.delete(key.clone()).await.unwrap().0,
            WriteOutcome::Deleted
        );
        assert!(matches!(cp.delete(key).await, Err(ModelError::NotFound(_))));
        assert!(store.load_all().unwrap().is_empty());
        let meta = store.load_meta().unwrap();
        assert!(meta.iter().all(|(k, _)| k == REVISION_KEY), "{meta:?}");
    }

    #[tokio::test]
    async fn a_write_from_a_stale_read_is_refused_and_versions_never_repeat() {
        let store = Arc::new(MemoryStore::default());
        let cp = ControlPlane::open(store.clone()).unwrap();
        let (_, first) = cp.create(export("a", 80)).await.unwrap();
        let v1 = first.metadata().resource_version.clone().unwrap();
        assert_eq!(first.metadata().generation, Some(1));
        // Two clients read v1; the first to write wins.
        let mut mine = export("a", 81);
        mine.metadata_mut().resource_version = Some(v1.clone());
        let (_, written) = cp.apply(mine).await.unwrap();
        let v2 = written.metadata().resource_version.clone().unwrap();
        assert_ne!(v1, v2);
        assert_eq!(written.metadata().generation, Some(2));
        let mut theirs = export("a", 82);
        theirs.metadata_mut().resource_version = Some(v1.clone());
        let refused = cp.apply(theirs).await.unwrap_err();
        assert!(
            matches!(&refused, ModelError::Conflict { given, current, .. } if *given == v1 && *current == v2),
            "{refused}"
        );
        assert_eq!(
            cp.snapshot()
                .values()
                .next()
                .unwrap()
                .metadata()
                .resource_version,
            Some(v2.clone())
        );
        // A label is no change of spec: the generation stays.
        let mut labelled = export("a", 81);
        labelled
            .metadata_mut()
            .labels
            .insert("env".into(), "prod".into());
        let (_, labelled) = cp.apply(labelled).await.unwrap();
        assert_eq!(labelled.metadata().generation, Some(2));
        // A version names an object that exists; none may be given on create.
        let mut gone = export("b", 80);
        gone.metadata_mut().resource_version = Some(v2.clone());
        assert!(matches!(
            cp.apply(gone.clone()).await,
            Err(ModelError::NotFound(_))
        ));
        assert!(matches!(cp.create(gone).await, Err(ModelError::Invalid(_))));
        // Deleted and created again, after a restart: a version never seen before.
        let key = ObjectKey::new(Kind::Export, "default", "a");
        cp.delete(key.clone()).await.unwrap();
        let again = ControlPlane::open(store).unwrap();
        let (_, recreated) = again.create(export("a", 80)).await.unwrap();
        let seen = [
            v1,
            v2,
            labelled.metadata().resource_version.clone().unwrap(),
        ];
        let v4 = recreated.metadata().resource_version.clone().unwrap();
        assert!(!seen.contains(&v4), "{v4} was given before: {seen:?}");
    }

    #[tokio::test]
    async fn an_earlier_release_reads_the_store_and_its_changes_get_new_versions() {
        let store = Arc::new(MemoryStore::default());
        let cp = ControlPlane::open(store.clone()).unwrap();
        let (_, written) = cp.create(export("a", 80)).await.unwrap();
        let v1 = written.metadata().resource_version.clone().unwrap();
        // The objects are stored as an earlier release wrote them: no versions in them.
        let (key, stored) = store.load_all().unwrap().remove(0);
        let text = String::from_utf8(stored).unwrap();
        assert!(
            !text.contains("resourceVersion") && !text.contains("generation"),
            "{text}"
        );
        // That release changes the object (it knows nothing of versions) ...
        let changed = serde_json::to_vec(&export("a", 81)).unwrap();
        store
            .commit(&[Write::Put {
                key,
                value: changed,
            }])
            .unwrap();
        // ... and this one, opened again, does not take the old version for the new object's.
        let reopened = ControlPlane::open(store).unwrap();
        let now = reopened
            .snapshot()
            .values()
            .next()
            .unwrap()
            .metadata()
            .clone();
        assert_ne!(now.resource_version, Some(v1.clone()));
        let mut stale = export("a", 82);
        stale.metadata_mut().resource_version = Some(v1);
        assert!(matches!(
            reopened.apply(stale).await,
            Err(ModelError::Conflict { .. })
        ));
    }

    #[tokio::test]
    async fn objects_stored_without_versions_get_them_once() {
        let store = Arc::new(MemoryStore::default());
        let legacy = serde_json::to_vec(&export("old", 80)).unwrap();
        store
            .commit(&[Write::Put {
                key: "exports/default/old".into(),
                value: legacy,
            }])
            .unwrap();
        let cp = ControlPlane::open(store.clone()).unwrap();
        let version = cp
            .snapshot()
            .values()
            .next()
            .unwrap()
            .metadata()
            .resource_version
            .clone();
        assert!(version.is_some());
        let reopened = ControlPlane::open(store).unwrap();
        let kept = reopened
            .snapshot()
            .values()
            .next()
            .unwrap()
            .metadata()
            .resource_version
            .clone();
        assert_eq!(kept, version, "given once, and kept");
    }

    #[tokio::test]
    async fn another_sources_versions_are_kept() {
        let cp = ControlPlane::open(Arc::new(MemoryStore::default())).unwrap();
        let mut owned = export("a", 80);
        owned.metadata_mut().resource_version = Some("73920".into());
        owned.metadata_mut().generation = Some(4);
        cp.replace_all(vec![owned]).await.unwrap();
        let meta = cp.snapshot().values().next().unwrap().metadata().clone();
        assert_eq!(meta.resource_version.as_deref(), Some("73920"));
        assert_eq!(meta.generation, Some(4));
    }

    #[tokio::test]
    async fn reopens_from_the_store() {
        let store = Arc::new(MemoryStore::default());
        let cp = ControlPlane::open(store.clone()).unwrap();
        cp.create(export("a", 80)).await.unwrap();
        let again = ControlPlane::open(store).unwrap();
        let got = again
            .get(&ObjectKey::new(Kind::Export, "default", "a"))
            .unwrap();
        assert_eq!(
            got.status()
                .unwrap()
                .condition(ConditionType::ExportValid)
                .unwrap()
                .status,
            ConditionStatus::True
        );
    }

    #[tokio::test]
    async fn concurrent_creates_of_one_name_admit_exactly_one() {
        let cp = ControlPlane::open(Arc::new(MemoryStore::default())).unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let cp = cp.clone();
                tokio::spawn(async move { cp.create(export("same", 80)).await })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            if t.await.unwrap().is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 1);
    }

    /// A store that counts its commits.
    #[derive(Default)]
    struct Counting {
        inner: MemoryStore,
        commits: std::sync::atomic::AtomicUsize,
    }

    impl Store for Counting {
        fn load_all(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
            self.inner.load_all()
        }
        fn load_meta(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
            self.inner.load_meta()
        }
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
            self.commits
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.commit(writes)
        }
    }

    #[tokio::test]
    async fn a_replace_all_lands_as_one_change_or_not_at_all() {
        let store = Arc::new(Counting::default());
        let cp = ControlPlane::open(store.clone()).unwrap();
        for (name, port) in [("a", 1), ("b", 2), ("c", 3)] {
            cp.apply(export(name, port)).await.unwrap();
        }
        let before = store.commits.load(std::sync::atomic::Ordering::SeqCst);
        let mut snapshots = cp.subscribe();
        snapshots.borrow_and_update();
        cp.replace_all(vec![export("a", 10), export("d", 4), export("e", 5)])
            .await
            .unwrap();
        assert_eq!(
            store.commits.load(std::sync::atomic::Ordering::SeqCst),
            before + 1,
            "one commit for the whole change"
        );
        let names =
            |objects: &Objects| -> Vec<String> { objects.keys().map(|k| k.name.clone()).collect() };
        assert_eq!(names(&snapshots.borrow_and_update()), ["a", "d", "e"]);

        // An invalid object refuses the whole change: nothing is deleted, nothing applied.
        let mut bad = export("f", 6);
        bad.metadata_mut().name = "Not_A_Name".into();
        assert!(cp.replace_all(vec![export("g", 7), bad]).await.is_err());
        assert_eq!(names(&cp.snapshot()), ["a", "d", "e"]);
        assert!(!snapshots.has_changed().unwrap());
    }

    #[tokio::test]
    async fn invalid_objects_never_reach_the_store() {
        let store = Arc::new(MemoryStore::default());
        let cp = ControlPlane::open(store.clone()).unwrap();
        let mut bad = export("a", 80);
        bad.metadata_mut().name = "Not_Valid".into();
        assert!(matches!(cp.apply(bad).await, Err(ModelError::Invalid(_))));
        assert!(store.load_all().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_corrupt_store_entry_is_reported_not_skipped() {
        let store = Arc::new(MemoryStore::default());
        store
            .commit(&[Write::Put {
                key: "exports/default/x".into(),
                value: b"{not json".to_vec(),
            }])
            .unwrap();
        let err = ControlPlane::open(store).err().unwrap();
        assert!(err.to_string().contains("exports/default/x"), "{err}");
    }
}
