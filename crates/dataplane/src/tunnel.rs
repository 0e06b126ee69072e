//! The tunnel wire protocol between gateways, spoken inside mutual TLS on the peer port.
//!
//! ```text
//! CONNECT reviews.default:443 HTTP/1.1          export `reviews` in namespace `default`
//! host: reviews.default:443
//! x-clusterlink-client: {"client.clusterlink.net/namespace":"web",...}
//! x-clusterlink-peer-labels: {"env":"prod"}     the requesting gateway's own labels
//! x-clusterlink-hops: 1                         tunnels this connection already went through
//!
//! HTTP/1.1 200 OK                               then framed bytes both ways
//! ```
//!
//! With `x-clusterlink-dry-run: 1` the request only asks for the decision (`gwctl explain`,
//! `gwctl check`): the answer is a refusal as usual, or `200` with `x-clusterlink-policy` naming
//! the policy that allows it, and no backend is dialed. Either way the connection then closes.
//!
//! After `200`, each direction is a run of length-prefixed frames ending with an empty frame
//! (see `dataplane::relay`). The requesting gateway may send the client's first frame right
//! behind the request, in the same write, when the client has already sent it: a client that
//! speaks first then saves a round trip. The answering gateway writes nothing to a backend before
//! it has ruled out every refusal (the first bytes go to the backend just before the `200`), so
//! after a refusal those bytes went nowhere and may go to another source; after no answer at all
//! they may have, and are not sent again. A connection whose tunnel ended that way in both
//! directions carries the next CONNECT, so gateways keep warm connections to each other and open
//! most tunnels without a handshake. A refusal closes the connection.
//!
//! A refusal is a non-200 status with `x-clusterlink-reason` (machine-readable) and a short JSON
//! body. The requesting peer's identity is never part of the request: the answering gateway takes
//! it from the TLS client certificate. The client attributes a peer sends are used only under that
//! authenticated name, and only `client.clusterlink.net/*` keys are accepted from it. The labels a
//! gateway sends about itself (with each tunnel request, and in its answer to a health probe)
//! are its own assertion under its authenticated name: policies see them as
//! `peer.clusterlink.net/labels.*`, except where the receiving side's administrator labelled the
//! Peer object, whose labels win.
//!
//! A gateway whose export leads to an import passes the count on, plus one; at [`MAX_HOPS`] the
//! request is refused, so a forwarding loop ends after a few tunnels instead of multiplying until
//! both gateways run out of descriptors. An import whose client connected from the very address
//! the request goes to says which connection that was (`x-clusterlink-via: <client port>
//! <import address>`), so that a gateway whose export leads into another gateway's import finds
//! its own backend connection there (`dataplane::hops`).
//!
//! Text a peer sends (a refusal's message, a policy's name) is escaped as it is read
//! ([`clusterlink_api::text`]): it reaches logs, events and terminals, where a line break or an
//! escape sequence would forge a line or take over the screen.
//!
//! Parsing is bounded ([`MAX_HEAD_BYTES`], [`MAX_HEADERS`]) and never panics.

use std::collections::BTreeMap;
use std::fmt;

use clusterlink_api::attributes::is_client_attribute;
use clusterlink_api::text::escaped;
use clusterlink_api::validation::{check_label_key, check_label_value};
use clusterlink_pki::revocation::{MAX_LIST_BYTES, Summary};
use tokio::io::{AsyncRead, AsyncReadExt};

use clusterlink_api::attributes::Attributes;

/// The one port other sites reach, by default: tunnels, probes and authorization all go over it,
/// so it is the only one a firewall opens.
pub const PEER_PORT: u16 = 443;
/// A request or response head larger than this is refused: real ones are a few hundred bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// At most this many header lines.
pub const MAX_HEADERS: usize = 32;
/// The port named in the CONNECT authority; the export decides where the backend really is.
const AUTHORITY_PORT: u16 = 443;
/// A connection relayed through more tunnels than this is in a loop: real chains of sites
/// (a relay site between two others) are one or two hops long.
pub const MAX_HOPS: u8 = 8;
const CLIENT_HEADER: &str = "x-clusterlink-client";
const HOPS_HEADER: &str = "x-clusterlink-hops";
const PEER_LABELS_HEADER: &str = "x-clusterlink-peer-labels";
const REASON_HEADER: &str = "x-clusterlink-reason";
const DRY_RUN_HEADER: &str = "x-clusterlink-dry-run";
const POLICY_HEADER: &str = "x-clusterlink-policy";
const VIA_HEADER: &str = "x-clusterlink-via";
/// The health answer's header naming the digest of the prober's catalog (`crate::catalog`).
pub const CATALOG_HEADER: &str = "x-clusterlink-catalog";

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("the tunnel head is larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("the connection closed before the tunnel head was complete")]
    Truncated,
    #[error("malformed tunnel head: {0}")]
    Malformed(String),
    #[error("read failed: {0}")]
    Io(std::io::Error),
}

/// Equal when of the same kind: two read failures are equal when their `io::ErrorKind` is.
impl PartialEq for ProtocolError {
    fn eq(&self, other: &ProtocolError) -> bool {
        match (self, other) {
            (ProtocolError::TooLarge, ProtocolError::TooLarge)
            | (ProtocolError::Truncated, ProtocolError::Truncated) => true,
            (ProtocolError::Malformed(a), ProtocolError::Malformed(b)) => a == b,
            (ProtocolError::Io(a), ProtocolError::Io(b)) => a.kind() == b.kind(),
            _ => false,
        }
    }
}

impl Eq for ProtocolError {}

/// Which export a tunnel is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExportRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ExportRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The CONNECT a gateway sends to open a tunnel to an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelRequest {
    pub export: ExportRef,
    /// Attributes of the connecting client workload (`client.clusterlink.net/*`).
    pub client: Attributes,
    /// Tunnels the connection went through before this one (0 for a client's own connection).
    pub hops: u8,
    /// The requesting gateway's own labels (`--label`).
    pub peer_labels: BTreeMap<String, String>,
    /// Only the decision is asked: nothing is dialed, nothing is relayed.
    pub dry_run: bool,
    /// The client's connection, when it came from the address this request goes to.
    pub via: Option<Via>,
}

/// A client connection that came from the address of the gateway a tunnel request goes to: its
/// port there, and the import's address it reached. If that gateway made the connection (its
/// export leads into this import), the tunnel is part of a loop through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via {
    pub client_port: u16,
    pub import: std::net::SocketAddr,
}

impl Via {
    fn parse(value: &[u8]) -> Option<Via> {
        let (port, import) = std::str::from_utf8(value).ok()?.split_once(' ')?;
        Some(Via {
            client_port: port.parse().ok()?,
            import: import.parse().ok()?,
        })
    }
}

/// `{"key":"value",...}` of valid Kubernetes label keys and values: a peer's labels.
fn parse_peer_labels(value: &[u8]) -> Result<BTreeMap<String, String>, ProtocolError> {
    let labels: BTreeMap<String, String> = serde_json::from_slice(value)
        .map_err(|e| ProtocolError::Malformed(format!("{PEER_LABELS_HEADER}: {e}")))?;
    for (k, v) in &labels {
        check_label_key(k)
            .and_then(|()| check_label_value(v))
            .map_err(|e| ProtocolError::Malformed(format!("{PEER_LABELS_HEADER} {k:?}: {e}")))?;
    }
    Ok(labels)
}

fn peer_labels_line(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return String::new();
    }
    // A map of strings always serializes; an empty object is the safe fallback regardless.
    let json = serde_json::to_string(labels).unwrap_or_else(|_| "{}".into());
    format!("{PEER_LABELS_HEADER}: {json}\r\n")
}

impl TunnelRequest {
    pub fn encode(&self) -> Vec<u8> {
        let authority = format!(
            "{}.{}:{AUTHORITY_PORT}",
            self.export.name, self.export.namespace
        );
        // A map of strings always serializes; an empty object is the safe fallback regardless.
        let client = serde_json::to_string(&self.client).unwrap_or_else(|_| "{}".into());
        let hops = self.hops;
        let labels = peer_labels_line(&self.peer_labels);
        let dry_run = if self.dry_run {
            format!("{DRY_RUN_HEADER}: 1\r\n")
        } else {
            String::new()
        };
        let via = match self.via {
            Some(Via {
                client_port,
                import,
            }) => format!("{VIA_HEADER}: {client_port} {import}\r\n"),
            None => String::new(),
        };
        format!(
            "CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n{CLIENT_HEADER}: {client}\r\n{labels}{dry_run}{via}{HOPS_HEADER}: {hops}\r\n\r\n"
        )
        .into_bytes()
    }

    pub fn decode(head: &[u8]) -> Result<TunnelRequest, ProtocolError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        whole_head(req.parse(head))?;
        if req.method != Some("CONNECT") {
            return Err(ProtocolError::Malformed(format!(
                "expected CONNECT, got {:?}",
                req.method.unwrap_or("")
            )));
        }
        let authority = req.path.unwrap_or("");
        let host = authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority);
        // A namespace has no dots; an export's name may (a DNS subdomain).
        let (name, namespace) = host
            .rsplit_once('.')
            .filter(|(n, ns)| !n.is_empty() && !ns.is_empty())
            .ok_or_else(|| {
                ProtocolError::Malformed(format!(
                    "authority {authority:?} is not <export>.<namespace>:<port>"
                ))
            })?;
        let mut client = Attributes::new();
        let mut peer_labels = BTreeMap::new();
        let mut hops = 0;
        let mut dry_run = false;
        let mut via = None;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case(HOPS_HEADER) {
                hops = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.parse::<u8>().ok())
                    .ok_or_else(|| {
                        ProtocolError::Malformed(format!("{HOPS_HEADER} must be a number 0-255"))
                    })?;
            } else if h.name.eq_ignore_ascii_case(CLIENT_HEADER) {
                let parsed: Attributes = serde_json::from_slice(h.value)
                    .map_err(|e| ProtocolError::Malformed(format!("{CLIENT_HEADER}: {e}")))?;
                if let Some(bad) = parsed.keys().find(|k| !is_client_attribute(k)) {
                    return Err(ProtocolError::Malformed(format!(
                        "{CLIENT_HEADER} may carry only client attributes, not {bad:?}"
                    )));
                }
                client = parsed;
            } else if h.name.eq_ignore_ascii_case(PEER_LABELS_HEADER) {
                peer_labels = parse_peer_labels(h.value)?;
            } else if h.name.eq_ignore_ascii_case(VIA_HEADER) {
                via = Some(Via::parse(h.value).ok_or_else(|| {
                    ProtocolError::Malformed(format!(
                        "{VIA_HEADER} must be <client port> <import address>"
                    ))
                })?);
            } else if h.name.eq_ignore_ascii_case(DRY_RUN_HEADER) {
                dry_run = match h.value {
                    b"1" => true,
                    b"0" => false,
                    _ => {
                        return Err(ProtocolError::Malformed(format!(
                            "{DRY_RUN_HEADER} must be 0 or 1"
                        )));
                    }
                };
            }
        }
        Ok(TunnelRequest {
            export: ExportRef {
                namespace: namespace.into(),
                name: name.into(),
            },
            client,
            hops,
            peer_labels,
            dry_run,
            via,
        })
    }
}

/// What another gateway asks on the peer port: a tunnel, whether this gateway is alive, or to
/// take newer revocation lists (`POST /revocations`, a body of `length` bytes of PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerRequest {
    Tunnel(TunnelRequest),
    Health,
    Revocations {
        length: usize,
    },
    /// The exports this gateway offers the asking peer (`GET /catalog`).
    Catalog,
}

/// The health probe; answered `200` with an empty body by a live gateway.
pub const HEALTH_REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: clusterlink\r\n\r\n";
/// The answer to [`HEALTH_REQUEST`], carrying the answering gateway's own labels.
pub fn health_response(labels: &BTreeMap<String, String>) -> Vec<u8> {
    health_response_with(labels, None, None, None)
}

/// Revocation lists travel with the health probes: the prober says which lists it holds
/// ([`REVOCATIONS_HEADER`], a [`Summary`]); the answer says which the answering gateway holds
/// and, when the prober is behind, carries them as its body. A prober that finds the answering
/// gateway behind sends its own with `POST /revocations`. Lists are checked against the
/// receiver's trust bundle, so no carrier is trusted.
pub const REVOCATIONS_HEADER: &str = "x-clusterlink-revocations";

/// [`HEALTH_REQUEST`] with the prober's [`Summary`] and its own labels (which its catalog
/// depends on, as the tunnels' decisions do).
pub fn health_request(held: &Summary, labels: &BTreeMap<String, String>) -> Vec<u8> {
    format!(
        "GET /healthz HTTP/1.1\r\nhost: clusterlink\r\n{REVOCATIONS_HEADER}: {held}\r\n{}\r\n",
        peer_labels_line(labels)
    )
    .into_bytes()
}

/// The health answer with this gateway's [`Summary`], its lists for a prober behind, and the
/// digest of the prober's catalog.
pub fn health_response_with(
    labels: &BTreeMap<String, String>,
    held: Option<&Summary>,
    lists: Option<&str>,
    catalog: Option<&str>,
) -> Vec<u8> {
    let held = held.map_or(String::new(), |h| format!("{REVOCATIONS_HEADER}: {h}\r\n"));
    let catalog = catalog.map_or(String::new(), |d| format!("{CATALOG_HEADER}: {d}\r\n"));
    let body = lists.unwrap_or_default();
    format!(
        "HTTP/1.1 200 OK\r\n{}{held}{catalog}content-length: {}\r\n\r\n{body}",
        peer_labels_line(labels),
        body.len()
    )
    .into_bytes()
}

/// `GET /catalog`, with the asking gateway's labels.
pub fn catalog_request(labels: &BTreeMap<String, String>) -> Vec<u8> {
    format!(
        "GET /catalog HTTP/1.1\r\nhost: clusterlink\r\n{}\r\n",
        peer_labels_line(labels)
    )
    .into_bytes()
}

/// The answer to [`catalog_request`]: the catalog as JSON.
pub fn catalog_response(body: &[u8]) -> Vec<u8> {
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body);
    answer
}

/// What parsing a whole head found: an error unless it is complete and well-formed (a head is
/// read up to its blank line before it is parsed, so a partial one was cut short).
pub(crate) fn whole_head(parsed: httparse::Result<usize>) -> Result<(), ProtocolError> {
    match parsed {
        Ok(httparse::Status::Complete(_)) => Ok(()),
        Ok(httparse::Status::Partial) => Err(ProtocolError::Truncated),
        Err(e) => Err(ProtocolError::Malformed(e.to_string())),
    }
}

/// The value of header `name` in `head`, if present.
pub(crate) fn header_value<'a>(head: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").skip(1).find_map(|line| {
        let (n, value) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then_some(value.trim())
    })
}

/// The catalog digest a health answer names, if any and well-formed (hex, as computed).
pub fn catalog_digest_of(head: &[u8]) -> Option<&str> {
    header_value(head, CATALOG_HEADER)
        .filter(|d| d.len() <= 128 && d.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The labels the asking gateway reports about itself in a request head (none if absent).
pub fn labels_of_request(head: &[u8]) -> Result<BTreeMap<String, String>, ProtocolError> {
    match header_value(head, PEER_LABELS_HEADER) {
        Some(value) => parse_peer_labels(value.as_bytes()),
        None => Ok(BTreeMap::new()),
    }
}

/// `POST /revocations` with `lists` (PEM).
pub fn revocations_request(lists: &str) -> Vec<u8> {
    format!(
        "POST /revocations HTTP/1.1\r\nhost: clusterlink\r\ncontent-length: {}\r\n\r\n{lists}",
        lists.len()
    )
    .into_bytes()
}

/// The [`Summary`] a head carries, if any and well-formed.
pub fn revocations_of(head: &[u8]) -> Option<Summary> {
    let text = std::str::from_utf8(head).ok()?;
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case(REVOCATIONS_HEADER)
            .then(|| Summary::parse(value.trim()))?
    })
}

/// The `content-length` of a head (0 if absent); an error past [`MAX_LIST_BYTES`].
pub fn body_length(head: &[u8]) -> Result<usize, ProtocolError> {
    body_length_within(head, MAX_LIST_BYTES)
}

/// The `content-length` of a head (0 if absent); an error past `max`.
pub fn body_length_within(head: &[u8], max: usize) -> Result<usize, ProtocolError> {
    let text = std::str::from_utf8(head).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    let length = text
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>())
        })
        .transpose()
        .map_err(|e| ProtocolError::Malformed(format!("content-length: {e}")))?
        .unwrap_or(0);
    if length > max {
        return Err(ProtocolError::TooLarge);
    }
    Ok(length)
}

/// Reads a body of `length` bytes, of which `leftover` arrived with the head.
pub async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut leftover: Vec<u8>,
    length: usize,
) -> Result<Vec<u8>, ProtocolError> {
    if leftover.len() > length {
        return Err(ProtocolError::Malformed(
            "more bytes than the content-length".into(),
        ));
    }
    let have = leftover.len();
    leftover.resize(length, 0);
    stream
        .read_exact(&mut leftover[have..])
        .await
        .map_err(ProtocolError::Io)?;
    Ok(leftover)
}

/// The labels a health answer carries; an error if it is not a `200`.
pub fn labels_of_health_response(head: &[u8]) -> Result<BTreeMap<String, String>, ProtocolError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    whole_head(response.parse(head))?;
    if response.code != Some(200) {
        return Err(ProtocolError::Malformed(format!(
            "health answer {:?}",
            response.code
        )));
    }
    match response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(PEER_LABELS_HEADER))
    {
        Some(h) => parse_peer_labels(h.value),
        None => Ok(BTreeMap::new()),
    }
}

impl PeerRequest {
    pub fn decode(head: &[u8]) -> Result<PeerRequest, ProtocolError> {
        if head.starts_with(b"GET /healthz ") {
            return Ok(PeerRequest::Health);
        }
        if head.starts_with(b"GET /catalog ") {
            return Ok(PeerRequest::Catalog);
        }
        if head.starts_with(b"POST /revocations ") {
            return Ok(PeerRequest::Revocations {
                length: body_length(head)?,
            });
        }
        TunnelRequest::decode(head).map(PeerRequest::Tunnel)
    }
}

/// Why a gateway refused a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    PolicyDenied,
    NoSuchExport,
    BackendUnreachable,
    BadRequest,
    /// The request went through [`MAX_HOPS`] tunnels already: an export leads back into an
    /// import that leads to it.
    LoopDetected,
    /// The peer, the export or the gateway's descriptors hold as many tunnels as they may.
    TunnelLimit,
    /// The peer asked more dry runs than it may for now.
    TooManyRequests,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::PolicyDenied => "PolicyDenied",
            RefusalReason::NoSuchExport => "NoSuchExport",
            RefusalReason::BackendUnreachable => "BackendUnreachable",
            RefusalReason::BadRequest => "BadRequest",
            RefusalReason::LoopDetected => "LoopDetected",
            RefusalReason::TunnelLimit => "TunnelLimit",
            RefusalReason::TooManyRequests => "TooManyRequests",
        }
    }

    pub(crate) fn status(self) -> (u16, &'static str) {
        match self {
            RefusalReason::PolicyDenied => (403, "Forbidden"),
            RefusalReason::NoSuchExport => (404, "Not Found"),
            RefusalReason::BackendUnreachable => (502, "Bad Gateway"),
            RefusalReason::BadRequest => (400, "Bad Request"),
            RefusalReason::LoopDetected => (508, "Loop Detected"),
            RefusalReason::TunnelLimit => (503, "Service Unavailable"),
            RefusalReason::TooManyRequests => (429, "Too Many Requests"),
        }
    }

    fn from_str(s: &str) -> Option<RefusalReason> {
        [
            Self::PolicyDenied,
            Self::NoSuchExport,
            Self::BackendUnreachable,
            Self::BadRequest,
            Self::LoopDetected,
            Self::TunnelLimit,
            Self::TooManyRequests,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// A gateway's answer to a [`TunnelRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelResponse {
    Established,
    /// The answer to a dry run that policy allows: which policy.
    WouldAllow {
        policy: String,
    },
    Refused {
        reason: RefusalReason,
        message: String,
        /// The policy (or rule) that denied, for a [`RefusalReason::PolicyDenied`].
        policy: Option<String>,
    },
}

impl TunnelResponse {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            TunnelResponse::Established => b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
            TunnelResponse::WouldAllow { policy } => {
                // A policy reference is names and punctuation: nothing a header cannot carry.
                format!("HTTP/1.1 200 OK\r\n{POLICY_HEADER}: {policy}\r\nconnection: close\r\n\r\n")
                    .into_bytes()
            }
            TunnelResponse::Refused {
                reason,
                message,
                policy,
            } => {
                let (code, text) = reason.status();
                let body = serde_json::json!({
                    "reason": reason.as_str(),
                    "message": message,
                    "policy": policy,
                })
                .to_string();
                format!(
                    "HTTP/1.1 {code} {text}\r\n{REASON_HEADER}: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    reason.as_str(),
                    body.len()
                )
                .into_bytes()
            }
        }
    }

    /// Decodes a response head. For a refusal, `body` is whatever followed the head.
    pub fn decode(head: &[u8], body: &[u8]) -> Result<TunnelResponse, ProtocolError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        whole_head(resp.parse(head))?;
        if resp.code == Some(200) {
            let policy = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(POLICY_HEADER));
            return Ok(match policy {
                Some(h) => TunnelResponse::WouldAllow {
                    policy: escaped(&String::from_utf8_lossy(h.value)).into_owned(),
                },
                None => TunnelResponse::Established,
            });
        }
        let reason = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(REASON_HEADER))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .and_then(RefusalReason::from_str)
            .ok_or_else(|| {
                ProtocolError::Malformed(format!(
                    "status {:?} without a known {REASON_HEADER}",
                    resp.code
                ))
            })?;
        let body = serde_json::from_slice::<serde_json::Value>(body).unwrap_or_default();
        let text = |field: &str| body[field].as_str().map(|t| escaped(t).into_owned());
        Ok(TunnelResponse::Refused {
            reason,
            message: text("message").unwrap_or_default(),
            policy: text("policy"),
        })
    }
}

/// Reads a head (through the blank line) from `stream`. Returns the head and any bytes that
/// arrived after it, which belong to the stream that follows.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Vec<u8>, Vec<u8>), ProtocolError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await.map_err(ProtocolError::Io)?;
        if n == 0 {
            return Err(ProtocolError::Truncated);
        }
        // Look for the end only in the new bytes (and the three before them).
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + pos + 4;
            if end > MAX_HEAD_BYTES {
                return Err(ProtocolError::TooLarge);
            }
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(ProtocolError::TooLarge);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> TunnelRequest {
        TunnelRequest {
            export: ExportRef {
                namespace: "default".into(),
                name: "reviews".into(),
            },
            client: [(
                "client.clusterlink.net/labels.app".to_string(),
                "web".to_string(),
            )]
            .into(),
            hops: 2,
            peer_labels: [("env".to_string(), "prod".to_string())].into(),
            dry_run: false,
            via: None,
        }
    }

    #[test]
    fn hops_are_a_small_number() {
        let r = TunnelRequest::decode(b"CONNECT a.b:443 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(r.hops, 0, "a request without the header is a client's own");
        for bad in ["-1", "256", "x", ""] {
            let head = format!("CONNECT a.b:443 HTTP/1.1\r\nx-clusterlink-hops: {bad}\r\n\r\n");
            let e = TunnelRequest::decode(head.as_bytes()).unwrap_err();
            assert!(e.to_string().contains("x-clusterlink-hops"), "{e}");
        }
    }

    #[test]
    fn request_round_trip() {
        let r = request();
        let bytes = r.encode();
        assert!(bytes.starts_with(b"CONNECT reviews.default:443 HTTP/1.1\r\n"));
        assert_eq!(TunnelRequest::decode(&bytes).unwrap(), r);
        let dry = TunnelRequest {
            dry_run: true,
            ..request()
        };
        assert_eq!(TunnelRequest::decode(&dry.encode()).unwrap(), dry);
        let bad = b"CONNECT a.b:443 HTTP/1.1\r\nx-clusterlink-dry-run: yes\r\n\r\n";
        let e = TunnelRequest::decode(bad).unwrap_err();
        assert!(e.to_string().contains("x-clusterlink-dry-run"), "{e}");
    }

    #[test]
    fn the_client_connection_of_a_relayed_request_round_trips() {
        let relayed = TunnelRequest {
            via: Some(Via {
                client_port: 40123,
                import: "[2001:db8::1]:7000".parse().unwrap(),
            }),
            ..request()
        };
        assert_eq!(TunnelRequest::decode(&relayed.encode()).unwrap(), relayed);
        for bad in ["40123", "x 127.0.0.1:1", "1 nowhere", "70000 127.0.0.1:1"] {
            let head = format!("CONNECT a.b:443 HTTP/1.1\r\nx-clusterlink-via: {bad}\r\n\r\n");
            let e = TunnelRequest::decode(head.as_bytes()).unwrap_err();
            assert!(e.to_string().contains("x-clusterlink-via"), "{e}");
        }
    }

    #[test]
    fn a_peers_text_is_read_escaped() {
        let body = r#"{"reason":"PolicyDenied","message":"denied\n2026-12-06T00:00:00Z INFO forged \u001b]0;pwned\u0007","policy":"default/x\r\u001b[2J"}"#;
        let head = format!(
            "HTTP/1.1 403 Forbidden\r\nx-clusterlink-reason: PolicyDenied\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let TunnelResponse::Refused {
            message, policy, ..
        } = TunnelResponse::decode(head.as_bytes(), body.as_bytes()).unwrap()
        else {
            panic!("not a refusal");
        };
        assert_eq!(
            message,
            "denied\\u{a}2026-12-06T00:00:00Z INFO forged \\u{1b}]0;pwned\\u{7}"
        );
        assert_eq!(policy.as_deref(), Some("default/x\\u{d}\\u{1b}[2J"));
    }

    #[test]
    fn a_peer_cannot_send_peer_or_export_attributes() {
        let forged = b"CONNECT reviews.default:443 HTTP/1.1\r\nx-clusterlink-client: {\"peer.clusterlink.net/name\":\"trusted\"}\r\n\r\n";
        let err = TunnelRequest::decode(forged).unwrap_err();
        assert!(err.to_string().contains("only client attributes"), "{err}");
    }

    #[test]
    fn malformed_requests_are_errors_not_panics() {
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"CONNECT reviews:443 HTTP/1.1\r\n\r\n",
            b"CONNECT .default:443 HTTP/1.1\r\n\r\n",
            b"CONNECT a.b:443 HTTP/1.1\r\nx-clusterlink-client: [1]\r\n\r\n",
            b"\xff\x00garbage\r\n\r\n",
            b"CONNECT a.b:443 HTTP/1.1\r\n",
        ] {
            assert!(
                TunnelRequest::decode(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn responses_round_trip() {
        let ok = TunnelResponse::Established.encode();
        assert_eq!(
            TunnelResponse::decode(&ok, b"").unwrap(),
            TunnelResponse::Established
        );
        let refused = TunnelResponse::Refused {
            reason: RefusalReason::PolicyDenied,
            message: "denied by AccessPolicy default/x".into(),
            policy: Some("default/x".into()),
        };
        let bytes = refused.encode();
        let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(bytes.starts_with(b"HTTP/1.1 403 Forbidden\r\n"));
        assert_eq!(
            TunnelResponse::decode(&bytes[..split], &bytes[split..]).unwrap(),
            refused
        );
        let allowed = TunnelResponse::WouldAllow {
            policy: "privileged:allow-all".into(),
        };
        assert_eq!(
            TunnelResponse::decode(&allowed.encode(), b"").unwrap(),
            allowed
        );
    }

    #[test]
    fn health_and_tunnel_requests_are_told_apart() {
        assert_eq!(
            PeerRequest::decode(HEALTH_REQUEST).unwrap(),
            PeerRequest::Health
        );
        assert_eq!(
            PeerRequest::decode(&request().encode()).unwrap(),
            PeerRequest::Tunnel(request())
        );
        // An export's name may hold dots (it is a DNS subdomain); a namespace never does.
        let mut dotted = request();
        dotted.export.name = "db.eu-west".into();
        assert_eq!(
            PeerRequest::decode(&dotted.encode()).unwrap(),
            PeerRequest::Tunnel(dotted)
        );
        assert!(PeerRequest::decode(b"GET /other HTTP/1.1\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn read_head_keeps_the_bytes_after_it() {
        let mut input: &[u8] = b"HTTP/1.1 200 OK\r\n\r\nhello";
        let (head, rest) = read_head(&mut input).await.unwrap();
        assert_eq!(head, b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(rest, b"hello");
    }

    #[tokio::test]
    async fn read_head_is_bounded() {
        let big = vec![b'a'; MAX_HEAD_BYTES + 10];
        assert_eq!(
            read_head(&mut big.as_slice()).await.unwrap_err(),
            ProtocolError::TooLarge
        );
        let mut short: &[u8] = b"CONNECT a.b:443 HTTP/1.1\r\n";
        assert_eq!(
            read_head(&mut short).await.unwrap_err(),
            ProtocolError::Truncated
        );
    }
}
