//! The management listener: HTTP/1.1, plain on loopback or mutual TLS with admin certificates.
//!
//! Every connection is bounded (`Limits::management`): so many at once and from one address
//! (more are closed at accept), closed after `Limits::management_idle` without a byte either way,
//! and every request, body included, must be answered within `Limits::management_request`. So silent sockets, idle keep-alives and stalled
//! bodies cannot pile up until the process runs out of descriptors for its peer port.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use clusterlink_pki::{Identity, identity_of};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::error::ApiError;
use clusterlink_dataplane::Limits;
use clusterlink_dataplane::listener::{Standing, accept_bounded};
use clusterlink_dataplane::metrics::{Listener, Metrics, Unserved};
use clusterlink_pki::reload::GatewayTls;

// The management listener's bounds and timeouts, with their reasons, are in [`Limits`].
const IDLE_TIMEOUT: Duration = Limits::DEFAULT.management_idle;
const REQUEST_TIMEOUT: Duration = Limits::DEFAULT.management_request;
const HANDSHAKE_TIMEOUT: Duration = Limits::DEFAULT.handshake;
const HEADER_READ_TIMEOUT: Duration = Limits::DEFAULT.management_headers;
const SHUTDOWN_GRACE: Duration = Limits::DEFAULT.management_shutdown;

/// Answers `408` to a request that is not done within [`REQUEST_TIMEOUT`].
pub(super) async fn limit_time(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "Timeout",
            format!("the request was not complete within {REQUEST_TIMEOUT:?}"),
        )
        .into_response(),
    }
}

/// Serves `router` on `listener` until `shutdown` flips, then lets in-flight requests finish
/// (briefly). With `tls`, clients must present an admin certificate of the fabric.
pub async fn serve(
    listener: TcpListener,
    tls: Option<watch::Receiver<Arc<GatewayTls>>>,
    router: Router,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = Limits::DEFAULT;
    let accepting = shutdown.clone();
    let counted = metrics.clone();
    let serve = move |stream, remote, standing| {
        // The configuration current now: a rotated certificate applies to new connections.
        let acceptor = tls
            .as_ref()
            .map(|t| TlsAcceptor::from(t.borrow().management.clone()));
        let (router, shutdown, metrics) = (router.clone(), accepting.clone(), metrics.clone());
        async move {
            serve_client(
                stream, remote, standing, acceptor, router, &metrics, shutdown,
            )
            .await;
        }
    };
    let mut connections = accept_bounded(
        listener,
        limits.management,
        Listener::Management,
        &limits,
        &counted,
        &mut shutdown,
        serve,
    )
    .await;
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        connections.abort_all();
    }
}

/// One management connection: its TLS handshake and admin check when `acceptor` is given,
/// then HTTP.
async fn serve_client(
    stream: TcpStream,
    remote: SocketAddr,
    standing: Standing,
    acceptor: Option<TlsAcceptor>,
    router: Router,
    metrics: &Metrics,
    shutdown: watch::Receiver<bool>,
) {
    let service = Busy {
        inner: TowerToHyperService::new(router),
        standing: standing.clone(),
    };
    let activity = Activity::default();
    let stream = Watched {
        io: stream,
        activity: activity.clone(),
    };
    let Some(acceptor) = acceptor else {
        serve_connection(stream, service, activity, remote, metrics, shutdown).await;
        return;
    };
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let detail = format!("TLS handshake refused: {e}");
            metrics.unserved(
                Listener::Management,
                Unserved::HandshakeRefused,
                remote,
                &detail,
            );
            return;
        }
        Err(_) => {
            let detail = "TLS handshake timed out";
            metrics.unserved(
                Listener::Management,
                Unserved::HandshakeTimeout,
                remote,
                detail,
            );
            return;
        }
    };
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(identity_of);
    match identity {
        Some(Ok(Identity::Admin(admin))) => {
            standing.proven();
            tracing::debug!(%remote, %admin, "management connection");
            serve_connection(stream, service, activity, remote, metrics, shutdown).await;
        }
        other => {
            // A peer certificate is valid in the fabric but is no admin credential.
            let detail = format!("not an admin certificate: {other:?}");
            metrics.unserved(
                Listener::Management,
                Unserved::WrongIdentity,
                remote,
                &detail,
            );
        }
    }
}

/// The API's service, marking its connection busy while a request is in progress: a request
/// under way is never closed to make room for a newcomer.
#[derive(Clone)]
struct Busy<S> {
    inner: S,
    standing: Standing,
}

impl<S, R> hyper::service::Service<R> for Busy<S>
where
    S: hyper::service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, request: R) -> Self::Future {
        let busy = self.standing.busy();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answered = answer.await;
            drop(busy);
            answered
        })
    }
}

async fn serve_connection<I>(
    io: I,
    service: Busy<TowerToHyperService<Router>>,
    activity: Activity,
    remote: SocketAddr,
    metrics: &Metrics,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "management connection ended with an error");
            }
        }
        () = activity.idle_for(IDLE_TIMEOUT) => {
            let detail = format!("nothing sent or received for {IDLE_TIMEOUT:?}");
            metrics.unserved(Listener::Management, Unserved::Idle, remote, &detail);
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
}

/// When a connection last moved a byte, in milliseconds since it was accepted.
#[derive(Clone)]
struct Activity {
    origin: Instant,
    last: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            origin: Instant::now(),
            last: Arc::default(),
        }
    }
}

impl Activity {
    fn touch(&self) {
        let now = self.origin.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    /// Completes once no byte has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.origin + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let quiet = last.elapsed();
            if quiet >= limit {
                return;
            }
            tokio::time::sleep(limit - quiet).await;
        }
    }
}

/// A stream that records its activity.
struct Watched<I> {
    io: I,
    activity: Activity,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        poll
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A client that asks and then never reads: the answer cannot be written, no byte moves,
    /// and only the idle watchdog ends the connection (hyper has no write timeout).
    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_cut_off_when_idle() {
        let store = Arc::new(clusterlink_store::MemoryStore::default());
        let control_plane = crate::model::ControlPlane::open(store).unwrap();
        let metrics = Arc::new(Metrics::default());
        let names = super::super::guard::ServedNames {
            peer: "server1".into(),
            any: false,
        };
        let observed = super::super::activity::tests::observed(metrics.clone());
        let router = super::super::router(control_plane, metrics.clone(), names, observed);
        // Room for the request, not for the answer.
        let (mut client, server) = tokio::io::duplex(64);
        client
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let activity = Activity::default();
        let stream = Watched {
            io: server,
            activity: activity.clone(),
        };
        let (_stop, shutdown) = watch::channel(false);
        let remote = SocketAddr::from(([127, 0, 0, 1], 1));
        let admission = clusterlink_dataplane::listener::Admission::new(
            Listener::Management,
            Limits::DEFAULT.management,
            &Limits::DEFAULT,
            metrics.clone(),
        );
        let admitted = admission.admit(remote).unwrap();
        let service = Busy {
            inner: TowerToHyperService::new(router),
            standing: admitted.standing(),
        };
        let started = Instant::now();
        let served = serve_connection(stream, service, activity, remote, &metrics, shutdown);
        let ended = tokio::time::timeout(2 * IDLE_TIMEOUT, served).await;
        assert!(ended.is_ok(), "the connection was never cut off");
        assert!(started.elapsed() >= IDLE_TIMEOUT);
        let text = metrics.encode();
        assert!(
            text.contains(
                "clusterlink_connections_unserved_total{listener=\"management\",reason=\"Idle\"} 1"
            ),
            "{text}"
        );
        drop(client);
    }
}
