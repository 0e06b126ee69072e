//! The operations endpoint of `cl-controlplane` and `cl-dataplane`: `/healthz` for a liveness
//! probe, `/readyz` for a readiness probe and `/metrics` for Prometheus, as plain HTTP/1.1 on a
//! port of its own (Kubernetes probes and scrapers speak no mutual TLS).
//!
//! It is read-only and small on purpose: one GET per connection, a bounded request head read
//! within the handshake timeout, connections bounded in total and per source. A `Host` header
//! must be an address, not a name: kubelet and Prometheus send the pod's address, while a web
//! page that rebinds its own name to this address (DNS rebinding) sends its name and is refused.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use clusterlink_api::rest::{HEALTHZ_PATH, METRICS_PATH};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::limits::Limits;
use crate::listener::{Standing, accept_bounded};
use crate::metrics::{Listener, Metrics, Unserved};
use crate::tunnel::read_head;

/// Answers `ok` once the process has what it serves from (a replica its first snapshot, a
/// control plane its first pass over the cluster).
pub const READYZ_PATH: &str = "/readyz";

/// The port of the operations endpoint in a pod: Prometheus' own default, so a scrape
/// configuration needs no port annotation to find it.
pub const DEFAULT_OPS_PORT: u16 = 9090;

/// Is the process alive and ready? Shared by the tasks that know and the endpoint that answers.
#[derive(Clone)]
pub struct ProcessHealth(Arc<Mutex<HealthState>>);

struct HealthState {
    ready: bool,
    /// Once set, the loop that beats must beat within this long or the process is not live.
    stale_after: Option<Duration>,
    last_beat: Option<Instant>,
}

impl ProcessHealth {
    /// Live as long as the process answers; not ready until [`ProcessHealth::set_ready`].
    pub fn new() -> ProcessHealth {
        ProcessHealth(Arc::new(Mutex::new(HealthState {
            ready: false,
            stale_after: None,
            last_beat: None,
        })))
    }

    /// Live only while [`ProcessHealth::beat`] is called at least every `stale_after`, once the
    /// first beat came: a loop that wedges (a call that never returns) makes the process unlive,
    /// so that it is restarted, where a process that merely answers would look fine.
    pub fn with_heartbeat(stale_after: Duration) -> ProcessHealth {
        let health = ProcessHealth::new();
        health.0.lock().stale_after = Some(stale_after);
        health
    }

    pub fn set_ready(&self) {
        self.0.lock().ready = true;
    }

    /// A round of the watched loop finished.
    pub fn beat(&self) {
        self.0.lock().last_beat = Some(Instant::now());
    }

    /// `Err` says why the process is not live.
    pub fn live(&self) -> Result<(), String> {
        let state = self.0.lock();
        match (state.stale_after, state.last_beat) {
            (Some(limit), Some(beat)) if beat.elapsed() > limit => Err(format!(
                "the main loop last finished a round {:.0?} ago (limit {limit:?})",
                beat.elapsed()
            )),
            _ => Ok(()),
        }
    }

    /// `Err` says why the process is not ready.
    pub fn ready(&self) -> Result<(), String> {
        self.live()?;
        if self.0.lock().ready {
            Ok(())
        } else {
            Err("starting: nothing to serve from yet".into())
        }
    }
}

impl Default for ProcessHealth {
    fn default() -> Self {
        ProcessHealth::new()
    }
}

/// The operations endpoint's listener on `address`, or an error that names what it is for.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} for /healthz and /metrics"))
}

/// Serves the operations endpoint on `listener` until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    health: ProcessHealth,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "operations endpoint: {HEALTHZ_PATH}, {READYZ_PATH}, {METRICS_PATH}");
    }
    let counted = metrics.clone();
    let serve_one = move |stream, remote: SocketAddr, _: Standing| {
        let (health, metrics) = (health.clone(), metrics.clone());
        async move {
            if let Err(unserved) = answer(stream, &health, &metrics).await {
                metrics.unserved(Listener::Ops, unserved, remote, "operations request");
            }
        }
    };
    let limits = Limits::DEFAULT;
    let mut open = accept_bounded(
        listener,
        limits.ops,
        Listener::Ops,
        &limits,
        &counted,
        &mut shutdown,
        serve_one,
    )
    .await;
    open.abort_all();
}

async fn answer(
    mut stream: TcpStream,
    health: &ProcessHealth,
    metrics: &Metrics,
) -> Result<(), Unserved> {
    let head = tokio::time::timeout(Limits::DEFAULT.handshake, read_head(&mut stream))
        .await
        .map_err(|_| Unserved::HandshakeTimeout)?
        .map_err(|_| Unserved::HandshakeRefused)?
        .0;
    let response = respond(&head, health, metrics);
    // A client that does not read its answer cannot hold the connection.
    let write = async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Limits::DEFAULT.handshake, write).await;
    Ok(())
}

/// The whole HTTP response to a request head.
fn respond(head: &[u8], health: &ProcessHealth, metrics: &Metrics) -> Vec<u8> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    if !matches!(request.parse(head), Ok(httparse::Status::Complete(_))) {
        return reply(400, "text/plain", "malformed request\n");
    }
    let host = header(&request, "host");
    if !host.as_deref().is_some_and(is_address) {
        return reply(
            421,
            "text/plain",
            "the Host header must be an IP address (and port)\n",
        );
    }
    if request.method != Some("GET") {
        return reply(405, "text/plain", "only GET is served here\n");
    }
    let probe = |result: Result<(), String>| match result {
        Ok(()) => reply(200, "text/plain", "ok\n"),
        Err(why) => reply(503, "text/plain", &format!("{why}\n")),
    };
    match request.path.unwrap_or_default() {
        HEALTHZ_PATH => probe(health.live()),
        READYZ_PATH => probe(health.ready()),
        METRICS_PATH => {
            let accept = header(&request, "accept");
            let exposition = metrics.exposition(accept.as_deref());
            reply(200, exposition.content_type, &exposition.body)
        }
        _ => reply(
            404,
            "text/plain",
            &format!("served here: {HEALTHZ_PATH}, {READYZ_PATH}, {METRICS_PATH}\n"),
        ),
    }
}

/// The first header named `name`, as text.
fn header(request: &httparse::Request<'_, '_>, name: &str) -> Option<String> {
    request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| String::from_utf8_lossy(h.value).into_owned())
}

/// `host` or `host:port`, where host is an IPv4 address or a bracketed IPv6 address.
fn is_address(host: &str) -> bool {
    let host = host.trim();
    if host.parse::<SocketAddr>().is_ok() || host.parse::<IpAddr>().is_ok() {
        return true;
    }
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
}

fn reply(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        421 => "Misdirected Request",
        _ => "Service Unavailable",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\ncache-control: no-store\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(head: &str, health: &ProcessHealth) -> String {
        let response = respond(head.as_bytes(), health, &Metrics::default());
        let text = String::from_utf8(response).unwrap();
        text.lines().next().unwrap().to_string()
    }

    #[test]
    fn probes_answer_by_state() {
        let health = ProcessHealth::new();
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: 10.0.0.1:9090\r\n\r\n");
        assert!(status(&get("/healthz"), &health).contains("200"));
        assert!(status(&get("/readyz"), &health).contains("503"));
        health.set_ready();
        assert!(status(&get("/readyz"), &health).contains("200"));
        assert!(status(&get("/metrics"), &health).contains("200"));
        assert!(status(&get("/secrets"), &health).contains("404"));
    }

    #[test]
    fn a_wedged_loop_makes_the_process_unlive() {
        let health = ProcessHealth::with_heartbeat(Duration::from_millis(1));
        assert!(health.live().is_ok(), "live before the loop's first round");
        health.beat();
        std::thread::sleep(Duration::from_millis(5));
        let err = health.live().unwrap_err();
        assert!(err.contains("last finished a round"), "{err}");
        assert!(health.ready().is_err());
    }

    #[test]
    fn only_gets_to_an_address_are_served() {
        let health = ProcessHealth::new();
        for (head, expected) in [
            (
                "GET /healthz HTTP/1.1\r\nHost: evil.example:9090\r\n\r\n",
                "421",
            ),
            ("GET /healthz HTTP/1.1\r\n\r\n", "421"),
            ("POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "405"),
            ("GET /healthz HTTP/1.1\r\nHost: [::1]:9090\r\n\r\n", "200"),
            ("GET /healthz HTTP/1.1\r\nHost: [::1]\r\n\r\n", "200"),
            ("\u{1}\u{2} nonsense\r\n\r\n", "400"),
        ] {
            assert!(status(head, &health).contains(expected), "{head:?}");
        }
    }
}
