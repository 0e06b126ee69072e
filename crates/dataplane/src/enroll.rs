//! Joining the fabric and renewing certificates, over the issuing gateway's peer port.
//!
//! ```text
//! POST /join HTTP/1.1                  no client certificate: the token is the credential
//! content-length: 512
//!
//! {"token":"cljoin1....","csr":"-----BEGIN CERTIFICATE REQUEST-----..."}
//!
//! POST /renew HTTP/1.1                 the current certificate, in the handshake, is the credential
//! content-length: 400
//!
//! {"csr":"-----BEGIN CERTIFICATE REQUEST-----..."}
//!
//! HTTP/1.1 200 OK                      {"certificate","trust_bundle","revocations"}
//! HTTP/1.1 403 Forbidden               x-clusterlink-reason: TokenReused, and why, as text
//! ```
//!
//! Both ride TLS with [`ENROLL_ALPN`], which only a gateway started with an authority accepts
//! (and only there without a client certificate). A joining site trusts the server only if its
//! chain ends in the CA its token pins. The site's key is made where it runs and never sent.

use std::sync::Arc;
use std::time::Duration;

use clusterlink_api::text::escaped;
use clusterlink_pki::authority::{Authority, EnrollError, Enrolled, JoinToken};
use clusterlink_pki::reload::GatewayTls;
use clusterlink_pki::site::{self, Enrollment};
use clusterlink_pki::tls::{ENROLL_ALPN, pinned_ca_client_config};
use clusterlink_pki::{Identity, identity_of};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::tunnel::{MAX_HEADERS, read_head};

/// A request body larger than this is refused unread: a token and a CSR are under 2 KiB.
const MAX_REQUEST_BYTES: usize = 2 * clusterlink_pki::authority::MAX_CSR_BYTES;
/// An answer carries a certificate, a trust bundle and the revocation lists.
const MAX_ANSWER_BYTES: usize = clusterlink_pki::revocation::MAX_LIST_BYTES + 64 * 1024;
const REASON_HEADER: &str = "x-clusterlink-reason";

#[derive(Serialize, Deserialize)]
struct JoinRequest {
    token: String,
    csr: String,
}

#[derive(Serialize, Deserialize)]
struct RenewRequest {
    csr: String,
}

/// Why joining or renewing failed, as the site sees it.
#[derive(Debug, thiserror::Error)]
pub enum EnrollClientError {
    #[error(transparent)]
    Token(#[from] EnrollError),
    #[error("the authority refused ({reason}): {message}")]
    Refused { reason: String, message: String },
    #[error("no issuing gateway answered: {0}")]
    Unreachable(String),
    #[error("the issuing gateway's answer is malformed: {0}")]
    Malformed(String),
    #[error("{0}")]
    Pki(#[from] clusterlink_pki::PkiError),
}

/// Serves one enrollment request on an accepted [`ENROLL_ALPN`] connection. `peer` is the
/// verified client certificate's identity, if one was presented.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    authority: &Arc<Authority>,
    peer: Option<(Identity, rustls_pki_types::CertificateDer<'static>)>,
) -> Result<String, String> {
    let (path, body) = match read_message(stream, Message::Request).await {
        Ok(read) => read,
        Err(e) => {
            let message = e.to_string();
            let answer = response("400 Bad Request", Some("BadRequest"), message.as_bytes());
            let _ = stream.write_all(&answer).await;
            let _ = stream.shutdown().await;
            return Err(message);
        }
    };
    let authority = authority.clone();
    let outcome = match (path.as_str(), peer) {
        ("/join", _) => match serde_json::from_slice::<JoinRequest>(&body) {
            Ok(request) => {
                tokio::task::spawn_blocking(move || authority.redeem(&request.token, &request.csr))
                    .await
                    .unwrap_or_else(|e| Err(EnrollError::BadRequest(e.to_string())))
            }
            Err(e) => Err(EnrollError::BadRequest(format!("not a join request: {e}"))),
        },
        ("/renew", Some((Identity::Peer(name), current))) => {
            match serde_json::from_slice::<RenewRequest>(&body) {
                Ok(request) => {
                    let for_name = name.clone();
                    tokio::task::spawn_blocking(move || {
                        authority.renew(&for_name, &current, &request.csr)
                    })
                    .await
                    .unwrap_or_else(|e| Err(EnrollError::BadRequest(e.to_string())))
                }
                Err(e) => Err(EnrollError::BadRequest(format!("not a renewal: {e}"))),
            }
        }
        ("/renew", _) => Err(EnrollError::BadRequest(
            "a renewal is authenticated by the current peer certificate, and none was presented"
                .into(),
        )),
        (other, _) => Err(EnrollError::BadRequest(format!(
            "no such request {other:?}"
        ))),
    };
    let (answer, result) = match outcome {
        Ok(enrolled) => {
            let body = serde_json::to_vec(&enrolled).unwrap_or_default();
            (response("200 OK", None, &body), Ok(path))
        }
        Err(e) => {
            let message = e.to_string();
            let status = match e {
                EnrollError::BadRequest(_) => "400 Bad Request",
                EnrollError::Authority(_) => "500 Internal Server Error",
                _ => "403 Forbidden",
            };
            (
                response(status, Some(e.reason()), message.as_bytes()),
                Err(message),
            )
        }
    };
    let written = async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    };
    let _ = written.await;
    result
}

/// Refuses an enrollment connection before its request is read.
pub(crate) async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, reason: &str, message: &str) {
    let answer = response("403 Forbidden", Some(reason), message.as_bytes());
    let _ = stream.write_all(&answer).await;
    let _ = stream.shutdown().await;
}

fn response(status: &str, reason: Option<&str>, body: &[u8]) -> Vec<u8> {
    let reason = reason.map_or(String::new(), |r| format!("{REASON_HEADER}: {r}\r\n"));
    let mut out = format!(
        "HTTP/1.1 {status}\r\n{reason}content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[derive(Clone, Copy)]
enum Message {
    Request,
    Response,
}

/// Reads a head and its body (by `content-length`, bounded). For a request, the path; for a
/// response, the status code, and the reason header if any, as `"<code> <reason>"`.
async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    kind: Message,
) -> Result<(String, Vec<u8>), EnrollClientError> {
    let malformed = |e: String| EnrollClientError::Malformed(e);
    let (head, mut body) = read_head(stream)
        .await
        .map_err(|e| malformed(e.to_string()))?;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (first, found): (String, &[httparse::Header<'_>]) = match kind {
        Message::Request => {
            let mut request = httparse::Request::new(&mut headers);
            request.parse(&head).map_err(|e| malformed(e.to_string()))?;
            if request.method != Some("POST") {
                return Err(malformed("only POST is served".into()));
            }
            let path = request.path.unwrap_or_default().to_string();
            (path, request.headers)
        }
        Message::Response => {
            let mut response = httparse::Response::new(&mut headers);
            response
                .parse(&head)
                .map_err(|e| malformed(e.to_string()))?;
            let code = response.code.unwrap_or_default();
            let reason = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(REASON_HEADER))
                .map(|h| escaped(&String::from_utf8_lossy(h.value)).to_string())
                .unwrap_or_default();
            (format!("{code} {reason}"), response.headers)
        }
    };
    let length: usize = found
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .ok_or_else(|| malformed("no content-length".into()))?;
    let most = match kind {
        Message::Request => MAX_REQUEST_BYTES,
        Message::Response => MAX_ANSWER_BYTES,
    };
    if length > most || body.len() > length {
        return Err(malformed(format!(
            "a body of {length} bytes (at most {most})"
        )));
    }
    let have = body.len();
    body.resize(length, 0);
    stream
        .read_exact(&mut body[have..])
        .await
        .map_err(|e| malformed(format!("body: {e}")))?;
    Ok((first, body))
}

/// Sends one request on a new connection to the first of `addresses` that answers, and reads
/// the answer.
async fn exchange(
    config: Arc<ClientConfig>,
    server: ServerName<'static>,
    addresses: &[String],
    path: &str,
    body: &[u8],
    within: Duration,
) -> Result<(Enrolled, String), EnrollClientError> {
    let mut errors = Vec::new();
    for address in addresses {
        let attempt = async {
            let tcp = TcpStream::connect(address.as_str())
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let mut tls = TlsConnector::from(config.clone())
                .connect(server.clone(), tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let issuer = match tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(identity_of)
            {
                Some(Ok(Identity::Peer(name))) => name,
                other => return Err(format!("the server is not a gateway: {other:?}")),
            };
            if tls.get_ref().1.alpn_protocol() != Some(ENROLL_ALPN) {
                return Err("the gateway there does not issue certificates (it was not started with --issuer)".to_string());
            }
            let mut request = format!(
                "POST {path} HTTP/1.1\r\nhost: clusterlink\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            request.extend_from_slice(body);
            tls.write_all(&request)
                .await
                .map_err(|e| format!("send: {e}"))?;
            let answer = read_message(&mut tls, Message::Response)
                .await
                .map_err(|e| e.to_string())?;
            Ok((answer, issuer))
        };
        match timeout(within, attempt).await {
            Ok(Ok(((status, body), issuer))) => {
                let (code, reason) = status.split_once(' ').unwrap_or((status.as_str(), ""));
                if code != "200" {
                    return Err(EnrollClientError::Refused {
                        reason: reason.to_string(),
                        message: escaped(&String::from_utf8_lossy(&body)).to_string(),
                    });
                }
                let enrolled = serde_json::from_slice(&body)
                    .map_err(|e| EnrollClientError::Malformed(e.to_string()))?;
                return Ok((enrolled, issuer));
            }
            Ok(Err(e)) => errors.push(format!("{address}: {e}")),
            Err(_) => errors.push(format!("{address}: no answer within {within:?}")),
        }
    }
    Err(EnrollClientError::Unreachable(errors.join("; ")))
}

/// What joining produced: the site's key (made here) and what the authority returned.
pub struct Joined {
    pub enrollment: Enrollment,
    pub key_pem: String,
    pub enrolled: Enrolled,
}

/// Redeems `token`: makes a key (or takes the one of an unanswered earlier attempt, kept in
/// `data_dir`), sends a request for it to the token's issuing gateway (trusted only if its chain
/// ends in the token's pinned CA and it is the gateway the token names), and checks what comes
/// back before anything is written: a certificate for the token's name, on this key, from the
/// pinned CA, and a bundle that holds that CA.
pub async fn join(
    token: &str,
    data_dir: &std::path::Path,
    within: Duration,
) -> Result<Joined, EnrollClientError> {
    let read = JoinToken::read(token)?;
    let (key_pem, csr) = site::join_request(data_dir, &read.name)?;
    let config = Arc::new(pinned_ca_client_config(&read.ca_sha256)?);
    let body = serde_json::to_vec(&JoinRequest {
        token: token.trim().to_string(),
        csr,
    })
    .map_err(|e| EnrollClientError::Malformed(e.to_string()))?;
    let issuer = ServerName::try_from(read.issuer.clone())
        .map_err(|e| EnrollClientError::Malformed(format!("the token's issuer: {e}")))?;
    let (enrolled, _) = exchange(config, issuer, &read.redeem_at, "/join", &body, within).await?;
    check_answer(&read.name, &key_pem, &enrolled, Some(&read.ca_sha256))?;
    Ok(Joined {
        enrollment: Enrollment {
            name: read.name,
            issuer: read.issuer,
            issuer_at: read.redeem_at,
        },
        key_pem,
        enrolled,
    })
}

/// Whether an answer is what was asked for, before anything is written: a certificate naming
/// `name`, on the key of `key_pem`, from a CA of the returned bundle (the pinned one, when
/// joining).
fn check_answer(
    name: &str,
    key_pem: &str,
    enrolled: &Enrolled,
    pin: Option<&str>,
) -> Result<(), EnrollClientError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let bad = |why: String| EnrollClientError::Malformed(why);
    let bundle: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(enrolled.trust_bundle.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("the trust bundle: {e}")))?;
    let trusted: Vec<CertificateDer<'static>> = match pin {
        Some(pin) => bundle
            .into_iter()
            .filter(|ca| clusterlink_pki::authority::sha256_hex(ca.as_ref()) == pin)
            .collect(),
        None => bundle,
    };
    if trusted.is_empty() {
        return Err(bad(
            "the trust bundle does not hold the CA the token pins".into()
        ));
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(enrolled.certificate.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("the certificate: {e}")))?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| bad(format!("the key: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in &trusted {
        roots
            .add(ca.clone())
            .map_err(|e| bad(format!("a CA of the trust bundle: {e}")))?;
    }
    let credentials = clusterlink_pki::tls::Credentials {
        roots: Arc::new(roots),
        cas: trusted,
        chain: chain.clone(),
        key: Arc::new(key.clone_key()),
    };
    credentials
        .verify_own_chain()
        .map_err(|e| bad(format!("the certificate is not from a trusted CA: {e}")))?;
    rustls::sign::CertifiedKey::from_der(chain.clone(), key, &clusterlink_pki::tls::provider())
        .map_err(|e| {
            bad(format!(
                "the certificate is not for the key this site made: {e}"
            ))
        })?;
    match chain.first().map(identity_of) {
        Some(Ok(Identity::Peer(named))) if named == name => Ok(()),
        other => Err(bad(format!(
            "the certificate does not name peer {name:?}: {other:?}"
        ))),
    }
}

/// Renews this gateway's certificate with the issuing gateway, authenticated by the current one:
/// a new key, and what the authority returned for it.
pub async fn renew(
    tls: &GatewayTls,
    enrollment: &Enrollment,
    within: Duration,
) -> Result<(String, Enrolled), EnrollClientError> {
    let (key_pem, csr) = site::new_request(&enrollment.name)?;
    let mut config = (*tls.client).clone();
    config.alpn_protocols = vec![ENROLL_ALPN.to_vec()];
    let body = serde_json::to_vec(&RenewRequest { csr })
        .map_err(|e| EnrollClientError::Malformed(e.to_string()))?;
    let server = ServerName::try_from(enrollment.issuer.clone())
        .map_err(|e| EnrollClientError::Malformed(e.to_string()))?;
    let (enrolled, _) = exchange(
        Arc::new(config),
        server,
        &enrollment.issuer_at,
        "/renew",
        &body,
        within,
    )
    .await?;
    check_answer(&enrollment.name, &key_pem, &enrolled, None)?;
    Ok((key_pem, enrolled))
}

/// Renewal starts at this fraction of the lifetime, leaving a third for retries.
const RENEW_AT: f64 = 2.0 / 3.0;
/// A failed renewal is tried again after this share of the lifetime (a minute at most): about
/// twenty tries fit in the remaining third.
const RETRY_SHARE: f64 = 1.0 / 60.0;
const MAX_RETRY: Duration = Duration::from_secs(60);
/// One renewal exchange slower than this failed.
const RENEWAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps a joined site's certificate renewed: at two thirds of each certificate's lifetime, a
/// new key and certificate, written to `data_dir` and put in force at once; on failure, retried
/// and reported (a metric, `gwctl check`, a warning each time).
pub async fn keep_renewed(
    source: clusterlink_pki::reload::TlsSource,
    data_dir: std::path::PathBuf,
    enrollment: Enrollment,
    metrics: Arc<crate::metrics::Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tls = source.subscribe();
    let mut retry = None::<Duration>;
    metrics.credentials.renewing(&enrollment.issuer);
    loop {
        let current = tls.borrow_and_update().clone();
        let (Some(from), Some(until)) =
            (current.certificate_valid_from, current.certificate_expires)
        else {
            // Unreadable dates: the handshake refuses such a certificate long before.
            return std::future::pending().await;
        };
        let lifetime = Duration::from_secs(u64::try_from(until - from).unwrap_or(0));
        let due = from as f64 + lifetime.as_secs_f64() * RENEW_AT;
        // At least a retry's wait even when due: an issuer whose clock is behind would
        // otherwise be asked again and again at once.
        let least = lifetime
            .mul_f64(RETRY_SHARE)
            .clamp(Duration::from_secs(1), MAX_RETRY);
        let wait = match retry {
            Some(wait) => wait,
            None => Duration::from_secs_f64((due - crate::metrics::unix_seconds() as f64).max(0.0))
                .max(least),
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            // Certificates replaced by hand: the renewal follows the new ones.
            changed = tls.changed() => {
                if changed.is_err() { return }
                retry = None;
                continue;
            }
            _ = shutdown.changed() => return,
        }
        let renewed = async {
            let (key_pem, enrolled) = renew(&current, &enrollment, RENEWAL_TIMEOUT).await?;
            site::write_identity(&data_dir, &key_pem, &enrolled)?;
            source.reload_now().map_err(|e| {
                EnrollClientError::Malformed(format!("the renewed certificate: {e}"))
            })?;
            if !enrolled.revocations.is_empty() {
                let _ = source.offer(enrolled.revocations.as_bytes());
            }
            Ok::<(), EnrollClientError>(())
        };
        match renewed.await {
            Ok(()) => {
                retry = None;
                metrics.credentials.renewed(crate::metrics::unix_seconds());
                tracing::info!(issuer = %enrollment.issuer, "certificate renewed");
            }
            Err(e) => {
                let left = until - crate::metrics::unix_seconds();
                let next = least;
                tracing::warn!(
                    error = %e,
                    expires_in_seconds = left,
                    retry_in = ?next,
                    "certificate renewal failed; the gateway stops working when its certificate expires"
                );
                metrics.credentials.renewal_failed(e.to_string());
                retry = Some(next);
            }
        }
    }
}
