//! A client of one gateway's management API: plain HTTP on loopback, or mutual TLS with an admin
//! certificate. One connection is kept alive across requests.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::context::Context;

/// A management API reply.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    /// What a write did (`created`, `configured`, `unchanged`, `deleted`), when the server says.
    pub result: Option<String>,
    pub body: serde_json::Value,
}

impl Reply {
    /// The server's own words as the error, unless the request succeeded.
    pub fn ensure_ok(&self) -> anyhow::Result<()> {
        if self.status.is_success() {
            Ok(())
        } else {
            Err(anyhow::anyhow!(self.error_message()))
        }
    }

    /// The server's error message, with every invalid field, from a Kubernetes `Status` body.
    pub fn error_message(&self) -> String {
        let message = self
            .body
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("");
        if message.is_empty() {
            format!("the gateway answered {}", self.status)
        } else {
            message.to_string()
        }
    }
}

/// How long gwctl waits for the gateway to connect and answer a request, by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read from a gateway: a list of 100,000 objects is well below it.
const MAX_REPLY_BYTES: usize = 256 * 1024 * 1024;

pub struct Client {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
    timeout: Duration,
}

struct Target {
    /// For messages: the server as the user named it.
    server: String,
    /// Where to connect: an IPv6 address without its brackets.
    host: String,
    port: u16,
    /// The `Host` header: the server's host and port as written, an IPv6 address in brackets.
    authority: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Client {
    pub fn new(ctx: &Context) -> anyhow::Result<Client> {
        let uri: Uri = ctx.server.parse().with_context(|| {
            format!(
                "server {:?} is not a URL like http://127.0.0.1:8443",
                ctx.server
            )
        })?;
        let bracketed = uri
            .host()
            .ok_or_else(|| anyhow!("server {:?} has no host", ctx.server))?;
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            bail!(
                "server {:?}: a user name in the URL is not used; gwctl authenticates with an \
                 admin certificate (--cert, --key)",
                ctx.server
            );
        }
        let authority = match uri.port() {
            Some(port) => format!("{bracketed}:{port}"),
            None => bracketed.to_string(),
        };
        let host = bracketed.trim_matches(['[', ']']).to_string();
        let tls = match uri.scheme_str() {
            Some("http") => None,
            Some("https") => {
                let files = ctx.tls_files().ok_or_else(|| {
                    anyhow!("server {} uses https: the context needs --ca, --cert and --key (an admin certificate from `clusterlink create admin-cert`)", ctx.server)
                })?;
                let creds = clusterlink_pki::tls::Credentials::load(&files)?;
                let config = clusterlink_pki::tls::mutual_client_config(&creds)?;
                // The gateway's certificate names its peer, not its address.
                let peer = ctx.peer.clone().ok_or_else(|| anyhow!("server {} uses https: the context needs --peer, the gateway's peer name, to verify its certificate", ctx.server))?;
                let name = ServerName::try_from(peer.clone())
                    .with_context(|| format!("peer name {peer:?}"))?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
            None => bail!(
                "server {s:?} has no scheme: use http://{s} for a gateway's management API on \
                 loopback, or https://{s} for one that takes admin certificates",
                s = ctx.server
            ),
            Some(other) => bail!(
                "server {:?}: scheme must be http or https (got {other:?})",
                ctx.server
            ),
        };
        let default_port = if tls.is_some() { 443 } else { 80 };
        Ok(Client {
            target: Target {
                server: ctx.server.clone(),
                host,
                port: uri.port_u16().unwrap_or(default_port),
                authority,
                tls,
            },
            sender: None,
            timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// Waits at most `timeout` for each request (connecting included).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let t = &self.target;
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .with_context(|| {
                format!(
                    "cannot reach the gateway at {} (is cl-gateway running there?)",
                    t.server
                )
            })?;
        tcp.set_nodelay(true)?;
        match &t.tls {
            None => handshake(tcp).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .with_context(|| format!("TLS with the gateway at {} failed", t.server))?;
                handshake(tls).await
            }
        }
    }

    /// Sends one request; reconnects once if the kept-alive connection was closed meanwhile.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Reply> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.request_now(method, path, body))
            .await
            .unwrap_or_else(|_| {
                // A half-done exchange leaves the connection unusable.
                self.sender = None;
                Err(anyhow!(
                    "the gateway at {} did not answer within {timeout:?} (--request-timeout)",
                    self.target.server
                ))
            })
    }

    async fn request_now(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Reply> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = Some(self.connect().await?);
        }
        let sender = self.sender.as_mut().expect("connected");
        sender
            .ready()
            .await
            .with_context(|| format!("connection to {} failed", self.target.server))?;
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.target.authority);
        if body.is_some() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = builder.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = sender.send_request(request).await.map_err(|e| {
            // An answer that is not HTTP at all: most often a TLS record from a gateway's peer
            // port (the alert that refuses a plaintext client).
            let hint = if e.is_parse() {
                format!(
                    "; the server does not speak HTTP: is this a gateway's peer port (mutual \
                     TLS, for other gateways)? gwctl talks to its management API (cl-gateway \
                     --management-address, {} by default)",
                    crate::gateway_cmd::DEFAULT_MANAGEMENT_ADDRESS
                )
            } else {
                String::new()
            };
            anyhow!("request to {} failed: {e}{hint}", self.target.server)
        })?;
        let status = response.status();
        let result = response
            .headers()
            .get(clusterlink_api::rest::RESULT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = http_body_util::Limited::new(response.into_body(), MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the answer of {} failed: {e}", self.target.server))?
            .to_bytes();
        let body = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
            })
        };
        Ok(Reply {
            status,
            result,
            body,
        })
    }
}

async fn handshake<I>(io: I) -> anyhow::Result<SendRequest<Full<Bytes>>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}
