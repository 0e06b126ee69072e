//! The management REST API (JSON), with Kubernetes-like paths:
//!
//! | path | methods |
//! |---|---|
//! | `/apis/clusterlink.net/v1alpha1/{resource}` | GET (list in all namespaces), POST (create) |
//! | `/apis/clusterlink.net/v1alpha1/{resource}/{name}` | GET, PUT (apply), DELETE — Peers and PrivilegedAccessPolicies |
//! | `/apis/clusterlink.net/v1alpha1/namespaces/{ns}/{resource}` | GET (list), POST (create) |
//! | `/apis/clusterlink.net/v1alpha1/namespaces/{ns}/{resource}/{name}` | GET, PUT (apply), DELETE |
//!
//! Beside them, the running data plane's events, live counts and dry-run decisions
//! ([`activity`]), the web console, health, metrics and version.
//!
//! `{resource}` is `peers`, `exports`, `imports`, `accesspolicies` or `privilegedaccesspolicies`;
//! the paths and headers are defined in [`clusterlink_api::rest`].
//! Bodies are JSON or YAML, one object, at most [`MAX_OBJECT_BYTES`]. PUT answers 201 when it
//! created the object and 200 otherwise; the header [`RESULT_HEADER`] says `created`,
//! `configured` or `unchanged`. Errors are Kubernetes `Status` objects whose `details.causes`
//! name each invalid field.
//!
//! Requests from web pages are refused ([`guard`]) and connections are bounded ([`server`]).

pub mod activity;
mod console;
mod error;
pub mod guard;
pub mod server;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clusterlink_api::manifest::{MAX_OBJECT_BYTES, parse_manifests};
use clusterlink_api::rest::{
    API_PREFIX, HEALTHZ_PATH, METRICS_PATH, RESULT_HEADER, REVOCATIONS_PATH, VERSION_PATH,
    collection_path, item_path,
};
use clusterlink_api::{API_VERSION, Kind, Object, ObjectKey, Scope};
use serde_json::json;

pub use self::error::ApiError;
use crate::model::{ControlPlane, WriteOutcome, scope_accepts};
use clusterlink_dataplane::metrics::Metrics;
use clusterlink_pki::status::CertificateStatus;

pub fn router(
    control_plane: ControlPlane,
    metrics: Arc<Metrics>,
    names: guard::ServedNames,
    observed: activity::Observed,
) -> Router {
    let tls = observed.dataplane.tls();
    let metrics_for_version = metrics.clone();
    let peer_addresses: Vec<String> = observed
        .peer_addresses
        .iter()
        .map(ToString::to_string)
        .collect();
    Router::new()
        .merge(activity::routes(observed))
        .merge(console::routes())
        .route(
            METRICS_PATH,
            get(move |headers: http::HeaderMap| {
                let accept = headers
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                let exposition = metrics.exposition(accept);
                async move {
                    (
                        [(http::header::CONTENT_TYPE, exposition.content_type)],
                        exposition.body,
                    )
                }
            }),
        )
        .route(
            &collection_path("{resource}", None),
            get(list_all).post(create_any),
        )
        .route(
            &item_path("{resource}", None, "{name}"),
            get(get_cluster).put(put_cluster).delete(delete_cluster),
        )
        .route(
            &collection_path("{resource}", Some("{ns}")),
            get(list_namespaced).post(create_namespaced),
        )
        .route(
            &item_path("{resource}", Some("{ns}"), "{name}"),
            get(get_namespaced)
                .put(put_namespaced)
                .delete(delete_namespaced),
        )
        .route(HEALTHZ_PATH, get(healthz))
        .route(REVOCATIONS_PATH, {
            let (held, offered) = (tls.clone(), tls.clone());
            get(move || async move {
                let current = held.borrow().clone();
                (
                    [(http::header::CONTENT_TYPE, "application/pkix-crl")],
                    current.revocations.to_pem(),
                )
            })
            .post(move |body: axum::body::Bytes| async move {
                let current = offered.borrow().clone();
                match current.offer_revocations(&body) {
                    Ok(taken) => {
                        let taken = taken == clusterlink_pki::revocation::Taken::Newer;
                        let summary = offered.borrow().revocation_summary.to_string();
                        Ok(Json(json!({"taken": taken, "lists": summary})))
                    }
                    Err(e) => Err(ApiError::new(
                        http::StatusCode::BAD_REQUEST,
                        "BadRequest",
                        e.to_string(),
                    )),
                }
            })
        })
        .route(VERSION_PATH, {
            let peer = names.peer.clone();
            let metrics = metrics_for_version;
            get(|| async move {
                let current = tls.borrow().clone();
                let renewal = metrics.credentials.renewal();
                let certificate = CertificateStatus {
                    expires: current.certificate_expires,
                    valid_from: current.certificate_valid_from,
                    renews_from: renewal.renews_from,
                    renewed: renewal.renewed_at,
                    renewal_failure: renewal.failure,
                    rotation_rejected: current.rotation_rejected(),
                };
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                Json(json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "apiVersion": API_VERSION,
                    "peer": peer,
                    // Kept for gwctl from before the certificate object.
                    "certificateExpires": current.certificate_expires,
                    "certificate": certificate,
                    "conditions": [certificate.condition(now)],
                    "revokedCertificates": current.revocations.revoked_count(),
                    "revocationLists": current.revocation_summary.to_string(),
                    "peerAddresses": peer_addresses,
                }))
            })
        })
        .fallback(|| async {
            ApiError::not_found(format!("no such path; resources are under {API_PREFIX}"))
        })
        .layer(DefaultBodyLimit::max(MAX_OBJECT_BYTES))
        .layer(axum::middleware::from_fn(server::limit_time))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(names),
            guard::refuse_cross_site,
        ))
        .with_state(control_plane)
}

type ApiResult = Result<Response, ApiError>;

fn kind_of(resource: &str) -> Result<Kind, ApiError> {
    Kind::from_plural(resource).ok_or_else(|| {
        let known: Vec<_> = Kind::ALL.iter().map(|k| k.plural()).collect();
        ApiError::not_found(format!(
            "unknown resource {resource:?}; known resources: {}",
            known.join(", ")
        ))
    })
}

/// The kind and namespace a path addresses, checked against the kind's scope.
fn target(resource: &str, ns: Option<&str>) -> Result<(Kind, String), ApiError> {
    let kind = kind_of(resource)?;
    if !scope_accepts(kind, ns) {
        return Err(ApiError::not_found(match kind.scope() {
            Scope::Cluster => format!(
                "{kind} is cluster-scoped: use {}",
                collection_path(resource, None)
            ),
            _ => format!(
                "{kind} objects live in namespace {}",
                clusterlink_api::SYSTEM_NAMESPACE
            ),
        }));
    }
    Ok((
        kind,
        ns.map(str::to_string)
            .unwrap_or_else(|| kind.default_namespace().to_string()),
    ))
}

/// The key of an item path; namespaced kinds need a namespaced path.
fn item_key(resource: &str, ns: Option<&str>, name: &str) -> Result<ObjectKey, ApiError> {
    let (kind, namespace) = target(resource, ns)?;
    if kind.scope() == Scope::Namespaced && ns.is_none() {
        return Err(ApiError::not_found(format!(
            "{kind} is namespaced: use {}",
            item_path(resource, Some("{namespace}"), name)
        )));
    }
    Ok(ObjectKey::new(kind, namespace, name))
}

fn list_response(kind: Kind, items: Vec<Object>) -> Response {
    Json(json!({"apiVersion": API_VERSION, "kind": format!("{kind}List"), "items": items}))
        .into_response()
}

fn write_response(outcome: WriteOutcome, obj: Object) -> Response {
    let code = if outcome == WriteOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = (code, Json(obj)).into_response();
    response
        .headers_mut()
        .insert(RESULT_HEADER, HeaderValue::from_static(outcome.as_str()));
    response
}

/// Parses a body holding exactly one object, on a blocking thread: parsing a hostile body costs
/// CPU that the runtime's threads owe to handshakes and health probes.
async fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<Object, ApiError> {
    let body = body?;
    tokio::task::spawn_blocking(move || parse_object(&body))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("parsing the body failed: {e}"),
            )
        })?
}

pub(crate) fn parse_object(body: &[u8]) -> Result<Object, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", "body is not UTF-8"))?;
    let mut docs = parse_manifests(text);
    if docs.len() != 1 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("body must hold exactly one object, found {}", docs.len()),
        ));
    }
    match docs.pop() {
        Some(doc) => Ok(doc?),
        None => unreachable!("exactly one document was checked above"),
    }
}

/// Checks that the body is what the path addresses. A namespace or name the path fixes must match
/// the body's, or fill it in when the body has none.
fn check_against_path(
    obj: &mut Object,
    kind: Kind,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<(), ApiError> {
    if obj.kind() != kind {
        return Err(ApiError::field(
            "kind",
            format!(
                "body is a {} but the path is for {}",
                obj.kind(),
                kind.plural()
            ),
        ));
    }
    let meta = obj.metadata_mut();
    if let Some(namespace) = namespace {
        if meta.namespace.is_empty() {
            meta.namespace = namespace.to_string();
        } else if meta.namespace != namespace {
            return Err(ApiError::field(
                "metadata.namespace",
                format!(
                    "{:?} does not match the path's namespace {namespace:?}",
                    meta.namespace
                ),
            ));
        }
    }
    if let Some(name) = name
        && meta.name != name
    {
        return Err(ApiError::field(
            "metadata.name",
            format!("{:?} does not match the path's name {name:?}", meta.name),
        ));
    }
    Ok(())
}

/// `ok` while the gateway can serve writes; otherwise `503` and why (a full disk, shutting down).
async fn healthz(State(cp): State<ControlPlane>) -> Response {
    match cp.health().await {
        Ok(()) => "ok".into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn list_all(State(cp): State<ControlPlane>, Path(resource): Path<String>) -> ApiResult {
    let kind = kind_of(&resource)?;
    Ok(list_response(kind, cp.list(kind, None)))
}

async fn list_namespaced(
    State(cp): State<ControlPlane>,
    Path((ns, resource)): Path<(String, String)>,
) -> ApiResult {
    let (kind, namespace) = target(&resource, Some(&ns))?;
    Ok(list_response(kind, cp.list(kind, Some(&namespace))))
}

async fn create(
    cp: ControlPlane,
    resource: &str,
    ns: Option<&str>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (kind, default_namespace) = target(resource, ns)?;
    let mut obj = parse_body(body).await?;
    check_against_path(&mut obj, kind, ns, None)?;
    obj.default_namespace(&default_namespace);
    let (outcome, obj) = cp.create(obj).await?;
    Ok(write_response(outcome, obj))
}

async fn create_any(
    State(cp): State<ControlPlane>,
    Path(resource): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    create(cp, &resource, None, body).await
}

async fn create_namespaced(
    State(cp): State<ControlPlane>,
    Path((ns, resource)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    create(cp, &resource, Some(&ns), body).await
}

async fn get_item(cp: ControlPlane, key: ObjectKey) -> ApiResult {
    match cp.get(&key) {
        Some(obj) => Ok(Json(obj).into_response()),
        None => Err(ApiError::not_found(format!("{key} not found"))),
    }
}

async fn put_item(
    cp: ControlPlane,
    key: ObjectKey,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let mut obj = parse_body(body).await?;
    // A cluster-scoped kind has no namespace in its path; validation explains a stray one.
    let namespace = (key.kind.scope() != Scope::Cluster).then_some(key.namespace.as_str());
    check_against_path(&mut obj, key.kind, namespace, Some(&key.name))?;
    let (outcome, obj) = cp.apply(obj).await?;
    Ok(write_response(outcome, obj))
}

async fn delete_item(cp: ControlPlane, key: ObjectKey) -> ApiResult {
    let (outcome, obj) = cp.delete(key).await?;
    Ok(write_response(outcome, obj))
}

async fn get_cluster(
    State(cp): State<ControlPlane>,
    Path((resource, name)): Path<(String, String)>,
) -> ApiResult {
    get_item(cp, item_key(&resource, None, &name)?).await
}

async fn put_cluster(
    State(cp): State<ControlPlane>,
    Path((resource, name)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    put_item(cp, item_key(&resource, None, &name)?, body).await
}

async fn delete_cluster(
    State(cp): State<ControlPlane>,
    Path((resource, name)): Path<(String, String)>,
) -> ApiResult {
    delete_item(cp, item_key(&resource, None, &name)?).await
}

async fn get_namespaced(
    State(cp): State<ControlPlane>,
    Path((ns, resource, name)): Path<(String, String, String)>,
) -> ApiResult {
    get_item(cp, item_key(&resource, Some(&ns), &name)?).await
}

async fn put_namespaced(
    State(cp): State<ControlPlane>,
    Path((ns, resource, name)): Path<(String, String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    put_item(cp, item_key(&resource, Some(&ns), &name)?, body).await
}

async fn delete_namespaced(
    State(cp): State<ControlPlane>,
    Path((ns, resource, name)): Path<(String, String, String)>,
) -> ApiResult {
    delete_item(cp, item_key(&resource, Some(&ns), &name)?).await
}
