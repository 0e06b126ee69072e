//! What operators ask of the running data plane through the management API: recent events,
//! live counts, and the decision a new connection would get (see [`clusterlink_api::rest`]).

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clusterlink_api::activity::ExplainRequest;
use clusterlink_api::rest::{EVENTS_PATH, EXPLAIN_PATH, OFFERS_PATH, TRAFFIC_PATH};
use clusterlink_dataplane::events::{EVENTS_KEPT, EventFilter};
use clusterlink_dataplane::{DataPlane, ExplainError, Snapshot};
use serde::Deserialize;
use tokio::sync::watch;

use super::error::ApiError;

/// The running data plane, and the snapshots it serves (explain decides from the current one).
#[derive(Clone)]
pub struct Observed {
    pub dataplane: Arc<DataPlane>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Where other sites reach this gateway's peer port, as far as it can tell
    /// ([`advertised_peer_addresses`]); `gwctl link` writes them into a Peer manifest.
    pub peer_addresses: Vec<std::net::SocketAddr>,
    /// The configuration, for what mirroring made of the offers.
    pub objects: watch::Receiver<Arc<clusterlink_api::Objects>>,
}

/// The addresses other sites may reach a peer port bound to `bound` at: that address itself, or,
/// when it is bound to every address, the one this host's default route leaves from (found by
/// routing a UDP socket, which sends nothing). Loopback is advertised only when bound to it.
pub fn advertised_peer_addresses(bound: std::net::SocketAddr) -> Vec<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    // Documentation prefixes (TEST-NET-1, 2001:db8::/32): routed like any remote address, never
    // answered, and no packet is sent by connecting a UDP socket.
    let probes: [(IpAddr, IpAddr); 2] = [
        (
            Ipv4Addr::UNSPECIFIED.into(),
            Ipv4Addr::new(192, 0, 2, 1).into(),
        ),
        (
            Ipv6Addr::UNSPECIFIED.into(),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
        ),
    ];
    probes
        .into_iter()
        .filter(|(local, _)| bound.is_ipv6() || local.is_ipv4())
        .filter_map(|(local, remote)| {
            let socket = UdpSocket::bind(SocketAddr::new(local, 0)).ok()?;
            socket.connect(SocketAddr::new(remote, 9)).ok()?;
            let ip = socket.local_addr().ok()?.ip();
            (!ip.is_unspecified() && !ip.is_loopback()).then(|| SocketAddr::new(ip, bound.port()))
        })
        .collect()
}

pub(super) fn routes<S>(observed: Observed) -> Router<S> {
    Router::new()
        .route(EVENTS_PATH, get(events))
        .route(TRAFFIC_PATH, get(traffic))
        .route(OFFERS_PATH, get(offers))
        .route(EXPLAIN_PATH, post(explain))
        .with_state(observed)
}

/// How many events an answer holds unless asked otherwise.
const DEFAULT_EVENTS: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventQuery {
    import: Option<String>,
    export: Option<String>,
    peer: Option<String>,
    limit: Option<usize>,
    /// Only refusals, cuts and broken tunnels.
    #[serde(default)]
    problems: bool,
}

fn bad_request(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
}

async fn events(
    State(observed): State<Observed>,
    query: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| {
        bad_request(format!(
            "{}; the query takes import, export, peer, limit and problems",
            e.body_text()
        ))
    })?;
    let filter = EventFilter {
        import: query.import,
        export: query.export,
        peer: query.peer,
        problems_only: query.problems,
    };
    let limit = query.limit.unwrap_or(DEFAULT_EVENTS).min(2 * EVENTS_KEPT);
    let events = observed.dataplane.events().recent(&filter, limit);
    Ok(Json(events).into_response())
}

async fn traffic(State(observed): State<Observed>) -> Response {
    Json(observed.dataplane.traffic()).into_response()
}

async fn offers(State(observed): State<Observed>) -> Response {
    let objects = observed.objects.borrow().clone();
    let catalogs = observed.dataplane.catalogs().borrow().clone();
    Json(clusterlink_api::catalog::plan(&objects, &catalogs).view()).into_response()
}

async fn explain(
    State(observed): State<Observed>,
    body: Result<Json<ExplainRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(|e| bad_request(e.body_text()))?;
    let snapshot = observed.snapshots.borrow().clone();
    match observed.dataplane.explain(&snapshot, &request).await {
        Ok(explanation) => Ok(Json(explanation).into_response()),
        Err(e @ ExplainError::NoSuchImport(_)) => Err(ApiError::not_found(e.to_string())),
        Err(e @ ExplainError::BadRequest(_)) => Err(bad_request(e.to_string())),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use clusterlink_dataplane::DataPlaneConfig;
    use clusterlink_dataplane::metrics::Metrics;
    use clusterlink_pki::issue::{Validity, create_fabric, create_peer_cert};
    use clusterlink_pki::reload::GatewayTls;
    use clusterlink_pki::tls::{Credentials, TlsFiles};

    /// A data plane that is never run, with a real TLS set, for routers under test.
    pub(crate) fn observed(metrics: Arc<Metrics>) -> Observed {
        let dir = tempfile::tempdir().unwrap();
        create_fabric(dir.path(), "fab", Validity::days(30).unwrap()).unwrap();
        let fabric = dir.path().join("fab");
        create_peer_cert(&fabric, "server1", Validity::days(30).unwrap()).unwrap();
        let files = TlsFiles::in_fabric(&fabric, &fabric.join("server1"));
        let credentials = Credentials::load(&files).unwrap();
        let tls = watch::channel(Arc::new(GatewayTls::new(&credentials).unwrap())).1;
        let config = DataPlaneConfig {
            import_address: std::net::Ipv4Addr::LOCALHOST.into(),
            clients: tokio::sync::watch::channel(Default::default()).1,
            metrics,
            protected: vec![],
            loopback_backends: false,
            limits: clusterlink_dataplane::Limits::DEFAULT,
            authority: None,
            known_peers_only: false,
        };
        Observed {
            dataplane: DataPlane::new(config, tls),
            snapshots: watch::channel(Arc::new(Snapshot::build(
                "server1",
                &Default::default(),
                &Default::default(),
                Default::default(),
            )))
            .1,
            peer_addresses: vec![],
            objects: watch::channel(Arc::default()).1,
        }
    }

    #[test]
    fn a_bound_address_is_advertised_as_is_and_a_wildcard_never_as_loopback() {
        let bound: std::net::SocketAddr = "10.0.0.5:443".parse().unwrap();
        assert_eq!(advertised_peer_addresses(bound), vec![bound]);
        for found in advertised_peer_addresses("0.0.0.0:8443".parse().unwrap()) {
            assert!(!found.ip().is_loopback() && !found.ip().is_unspecified());
            assert_eq!(found.port(), 8443);
        }
    }
}
