//! The peer protocol of the Go ClusterLink gateways, spoken to and for Peers of `protocol: go`,
//! so that one fabric can mix those gateways with this project's.
//!
//! HTTP/1.1 inside mutual TLS, without ALPN:
//!
//! ```text
//! GET /healthz                     → 200, ClusterLinkPeerLabels: base64 of {"env":"prod"}
//! POST /authz                      → 200 with x-access-token: <token>, or 404 / 403 with a text
//!   {"ServiceName":"web","ServiceNamespace":"default","SrcAttributes":{...}}
//! CONNECT <peer>:443               → 200, then the tunnel's bytes both ways, unframed
//!   authorization: Bearer <token>
//! ```
//!
//! One tunnel per connection, and a connection per authorization and tunnel: a Go gateway
//! asks `/authz` on one connection and opens the tunnel on another; this gateway asks and opens
//! on the same one, which the Go gateway also serves.
//!
//! What is trusted from a Go peer is what is trusted from any peer, and no more:
//! - its name is its certificate's, never the `peer.clusterlink.net/name` its request carries;
//!   `peer.*` and `export.*` keys of `SrcAttributes` are dropped, and its labels are those it
//!   reported to this gateway's heartbeats (with the local Peer object's laid over them);
//! - the token this side issues is not the Go gateways' JWT (a peer only hands it back): a
//!   random value kept here ([`Tokens`]), bound to the peer that asked, the export and the
//!   client, redeemed once, within [`Limits::go_token_life`](crate::limits::Limits).
//!
//! Parsing is bounded ([`MAX_HEAD_BYTES`](crate::tunnel::MAX_HEAD_BYTES), [`MAX_AUTHORIZE_BODY`],
//! [`MAX_ANSWER_BODY`]) and never panics; text from a Go peer is escaped as it is read.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use base64::Engine as _;
use clusterlink_api::attributes::{Attributes, PEER_LABELS_PREFIX, PEER_NAME, is_client_attribute};
use clusterlink_api::text::escaped;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::tunnel::{
    ExportRef, MAX_HEADERS, ProtocolError, RefusalReason, body_length_within, header_value,
    whole_head,
};

/// The heartbeat a Go gateway sends every second, and answers with its labels.
pub const HEARTBEAT_PATH: &str = "/healthz";
/// Where a Go gateway asks for a token to one export.
pub const AUTHORIZE_PATH: &str = "/authz";
/// The heartbeat answer's labels: base64 of a JSON map.
const PEER_LABELS_HEADER: &str = "ClusterLinkPeerLabels";
/// The token in an authorization's answer.
const ACCESS_TOKEN_HEADER: &str = "x-access-token";
/// An authorization request's body: one client's attributes, a few hundred bytes from a Go
/// gateway; far more is an attack on memory.
pub const MAX_AUTHORIZE_BODY: usize = 16 * 1024;
/// The most of a Go gateway's answer body kept: the text of a refusal.
pub const MAX_ANSWER_BODY: usize = 4 * 1024;
/// The longest token taken from a Go gateway (its JWTs are a few hundred bytes): it goes back
/// in a header line.
const MAX_TOKEN: usize = 4 * 1024;
/// A tunnel's answer, as the Go gateways write it.
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n";
/// The policy a Go gateway's allowing answer names: it names none.
pub const UNNAMED_POLICY: &str = "(a policy of the Go gateway, which names none)";

/// The body of `POST /authz`, field for field as the Go gateways write it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthorizationRequest {
    #[serde(rename = "ServiceName")]
    service_name: String,
    #[serde(rename = "ServiceNamespace")]
    service_namespace: String,
    /// `null` when the Go gateway knows nothing of the client.
    #[serde(rename = "SrcAttributes", default)]
    src_attributes: Option<BTreeMap<String, String>>,
}

/// A request a Go gateway sends to the peer port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoRequest {
    Heartbeat,
    /// `POST /authz`, with a body of this many bytes.
    Authorize {
        length: usize,
    },
    /// `CONNECT` with the token it carries, if any.
    Connect {
        token: Option<String>,
    },
}

impl GoRequest {
    /// Reads a request head. Anything but the three requests is an error that names it.
    pub fn decode(head: &[u8]) -> Result<GoRequest, ProtocolError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        whole_head(request.parse(head))?;
        let header = |name: &str| header_value(head, name);
        let method = request.method.unwrap_or_default();
        let path = request.path.unwrap_or_default();
        match (method, path) {
            ("GET", HEARTBEAT_PATH) => Ok(GoRequest::Heartbeat),
            ("POST", AUTHORIZE_PATH) => {
                if header("transfer-encoding").is_some() {
                    return Err(ProtocolError::Malformed(
                        "an authorization body must have a content-length".into(),
                    ));
                }
                let length = body_length_within(head, MAX_AUTHORIZE_BODY)?;
                Ok(GoRequest::Authorize { length })
            }
            ("CONNECT", _) => Ok(GoRequest::Connect {
                token: header("authorization")
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::to_string),
            }),
            (method, path) => Err(ProtocolError::Malformed(format!(
                "no such request in the Go protocol: {} {}",
                escaped(method),
                escaped(path)
            ))),
        }
    }
}

/// What a Go gateway asks `/authz` for: the export, and the client's attributes. Only
/// `client.clusterlink.net/*` keys are kept: the peer's name and labels are never its own say.
pub fn authorization_of(body: &[u8]) -> Result<(ExportRef, Attributes), ProtocolError> {
    let request: AuthorizationRequest = serde_json::from_slice(body)
        .map_err(|e| ProtocolError::Malformed(format!("authorization request: {e}")))?;
    let client = request
        .src_attributes
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| is_client_attribute(k))
        .collect();
    let export = ExportRef {
        namespace: request.service_namespace,
        name: request.service_name,
    };
    Ok((export, client))
}

/// The answer to a heartbeat: this gateway's labels.
pub fn heartbeat_response(labels: &BTreeMap<String, String>) -> Vec<u8> {
    let json = serde_json::to_vec(labels).unwrap_or_else(|_| b"{}".to_vec());
    let encoded = base64::engine::general_purpose::STANDARD.encode(json);
    format!("HTTP/1.1 200 OK\r\n{PEER_LABELS_HEADER}: {encoded}\r\ncontent-length: 0\r\n\r\n")
        .into_bytes()
}

/// The answer to an allowed authorization.
pub fn token_response(token: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\n{ACCESS_TOKEN_HEADER}: {token}\r\ncontent-length: 0\r\n\r\n")
        .into_bytes()
}

/// A refusal, as a status and a text (the Go gateways log the text).
pub fn refusal_response(reason: RefusalReason, message: &str) -> Vec<u8> {
    let (code, phrase) = reason.status();
    let body = format!("{message}\n");
    format!(
        "HTTP/1.1 {code} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `answer`, saying that the connection closes after it (the Go gateways' HTTP client then
/// opens a new one rather than sending on this one).
pub fn closing(answer: Vec<u8>) -> Vec<u8> {
    let Some(line_end) = answer.windows(2).position(|w| w == b"\r\n") else {
        return answer;
    };
    let (status, rest) = answer.split_at(line_end + 2);
    [status, b"connection: close\r\n", rest].concat()
}

/// A heartbeat to a Go gateway.
pub fn heartbeat_request(peer: &str) -> Vec<u8> {
    format!("GET {HEARTBEAT_PATH} HTTP/1.1\r\nhost: {peer}\r\n\r\n").into_bytes()
}

/// An authorization request to a Go gateway for `export`, on behalf of a client with `client`
/// attributes, as the Go gateways send it: the client's attributes with this gateway's name and
/// labels, or `null` for a client this gateway knows nothing of.
pub fn authorize_request(
    peer: &str,
    export: &ExportRef,
    client: &Attributes,
    local_peer: &str,
    local_labels: &BTreeMap<String, String>,
) -> Vec<u8> {
    let src_attributes = (!client.is_empty()).then(|| {
        let mut attributes = client.clone();
        attributes.insert(PEER_NAME.into(), local_peer.into());
        for (k, v) in local_labels {
            attributes.insert(format!("{PEER_LABELS_PREFIX}{k}"), v.clone());
        }
        attributes
    });
    let body = serde_json::to_vec(&AuthorizationRequest {
        service_name: export.name.clone(),
        service_namespace: export.namespace.clone(),
        src_attributes,
    })
    .unwrap_or_default();
    let mut request = format!(
        "POST {AUTHORIZE_PATH} HTTP/1.1\r\nhost: {peer}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    request
}

/// The tunnel request to a Go gateway, with the token its authorization gave.
pub fn connect_request(peer: &str, token: &str) -> Vec<u8> {
    format!(
        "CONNECT {peer}:443 HTTP/1.1\r\nhost: {peer}:443\r\nauthorization: Bearer {token}\r\n\r\n"
    )
    .into_bytes()
}

/// A Go gateway's answer: its status, the head, and how long its body is.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The body's length as declared (0 if not given); callers read at most
    /// [`MAX_ANSWER_BODY`] of it.
    pub length: usize,
    /// Whether it says the connection closes after it (`connection: close`).
    pub closes: bool,
    token: Option<String>,
    labels: Option<String>,
}

impl Answer {
    pub fn decode(head: &[u8]) -> Result<Answer, ProtocolError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        whole_head(response.parse(head))?;
        let header = |name: &str| header_value(head, name).map(str::to_string);
        Ok(Answer {
            status: response.code.unwrap_or(0),
            // As declared: the reader bounds what it takes.
            length: body_length_within(head, usize::MAX)?,
            closes: header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")),
            token: header(ACCESS_TOKEN_HEADER),
            labels: header(PEER_LABELS_HEADER),
        })
    }

    /// The labels a heartbeat answer reports (none when it reports none).
    pub fn labels(&self) -> Result<BTreeMap<String, String>, ProtocolError> {
        if self.status != 200 {
            return Err(ProtocolError::Malformed(format!(
                "heartbeat answered {}",
                self.status
            )));
        }
        let Some(encoded) = self.labels.as_deref().filter(|l| !l.is_empty()) else {
            return Ok(BTreeMap::new());
        };
        let json = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| ProtocolError::Malformed(format!("{PEER_LABELS_HEADER}: {e}")))?;
        // A Go gateway started without labels reports `null`.
        let labels: Option<BTreeMap<String, String>> = serde_json::from_slice(&json)
            .map_err(|e| ProtocolError::Malformed(format!("{PEER_LABELS_HEADER}: {e}")))?;
        Ok(labels
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (escaped(&k).into_owned(), escaped(&v).into_owned()))
            .collect())
    }

    /// The token of an allowing authorization answer, or the refusal it is. `body` is its text.
    pub fn token(&self, body: &[u8]) -> Result<String, (RefusalReason, String)> {
        if self.status == 200 {
            return match self.token.as_deref() {
                Some(token)
                    if !token.is_empty()
                        && token.len() <= MAX_TOKEN
                        && token.bytes().all(|b| b.is_ascii_graphic()) =>
                {
                    Ok(token.to_string())
                }
                _ => Err((
                    RefusalReason::BadRequest,
                    "the Go gateway allowed the connection but sent no usable token".into(),
                )),
            };
        }
        Err(self.refusal(body))
    }

    /// What a non-200 answer means, in this project's refusal reasons.
    pub fn refusal(&self, body: &[u8]) -> (RefusalReason, String) {
        let text = String::from_utf8_lossy(&body[..body.len().min(MAX_ANSWER_BODY)]);
        let reason = match self.status {
            404 => RefusalReason::NoSuchExport,
            // The Go gateway's data plane turns every refusal into a 403: its text tells a
            // missing export ("Exported service 'ns/name' not found.") from a denial.
            403 if text.starts_with("Exported service '")
                && text.trim_end().ends_with("' not found.") =>
            {
                RefusalReason::NoSuchExport
            }
            403 | 401 => RefusalReason::PolicyDenied,
            429 => RefusalReason::TooManyRequests,
            503 => RefusalReason::TunnelLimit,
            // To a tunnel, the Go gateway answers 500 when its backend cannot be dialed (a 500
            // to an authorization is its control plane failing, which the caller tells apart).
            500 | 502 => RefusalReason::BackendUnreachable,
            _ => RefusalReason::BadRequest,
        };
        let text = escaped(text.trim());
        (
            reason,
            format!("the Go gateway answered {}: {text}", self.status),
        )
    }
}

/// Grants this gateway issued to Go peers, until redeemed by a tunnel or expired.
pub struct Tokens {
    inner: Mutex<TokenTable>,
    life: Duration,
    per_peer: usize,
}

#[derive(Default)]
struct TokenTable {
    grants: HashMap<String, Grant>,
    /// Tokens in the order they expire (all live as long), to drop the expired ones.
    by_expiry: VecDeque<(Instant, String)>,
    /// Unredeemed, unexpired tokens per peer.
    held: HashMap<String, usize>,
}

/// What a token lets its peer open: one tunnel to `export`, for a client with `client`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub peer: String,
    pub export: ExportRef,
    pub client: Attributes,
    expires: Instant,
}

/// Why no token was issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoToken {
    #[error(
        "the peer holds {0} unused tokens, as many as it may; open tunnels with them, or wait for them to expire"
    )]
    TooMany(usize),
    #[error("this gateway's random number generator failed")]
    NoRandomness,
}

/// Why a token opens nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("the CONNECT carries no bearer token")]
    Missing,
    #[error("the token is unknown, expired or already used")]
    Unknown,
    #[error("the token was issued to peer {issued_to}, not to {presented_by}; it is void now")]
    WrongPeer {
        issued_to: String,
        presented_by: String,
    },
}

impl Tokens {
    pub fn new(life: Duration, per_peer: usize) -> Tokens {
        Tokens {
            inner: Mutex::default(),
            life,
            per_peer,
        }
    }

    /// A token for `peer` to open one tunnel to `export` for `client`; none when `peer` holds
    /// as many unredeemed tokens as it may (a peer that asks and never connects grows nothing).
    pub fn issue(
        &self,
        peer: &str,
        export: ExportRef,
        client: Attributes,
    ) -> Result<String, NoToken> {
        let now = Instant::now();
        let mut table = self.inner.lock();
        table.expire(now);
        let held = table.held.get(peer).copied().unwrap_or(0);
        if held >= self.per_peer {
            return Err(NoToken::TooMany(held));
        }
        let token = random_token().ok_or(NoToken::NoRandomness)?;
        let expires = now + self.life;
        table.grants.insert(
            token.clone(),
            Grant {
                peer: peer.to_string(),
                export,
                client,
                expires,
            },
        );
        table.by_expiry.push_back((expires, token.clone()));
        *table.held.entry(peer.to_string()).or_default() += 1;
        Ok(token)
    }

    /// The grant `token` carries, if `peer` may use it now. A token is used up by any attempt,
    /// right or wrong: one presented by another peer has leaked.
    pub fn redeem(&self, token: Option<&str>, peer: &str) -> Result<Grant, TokenRefusal> {
        let token = token.ok_or(TokenRefusal::Missing)?;
        let now = Instant::now();
        let mut table = self.inner.lock();
        table.expire(now);
        let grant = table.grants.remove(token).ok_or(TokenRefusal::Unknown)?;
        table.release(&grant.peer);
        if grant.peer != peer {
            return Err(TokenRefusal::WrongPeer {
                issued_to: grant.peer,
                presented_by: peer.to_string(),
            });
        }
        Ok(grant)
    }
}

impl TokenTable {
    fn expire(&mut self, now: Instant) {
        while let Some((expires, _)) = self.by_expiry.front() {
            if *expires > now {
                break;
            }
            let Some((_, token)) = self.by_expiry.pop_front() else {
                break;
            };
            if let Some(grant) = self.grants.remove(&token) {
                self.release(&grant.peer);
            }
        }
    }

    fn release(&mut self, peer: &str) {
        if let Some(n) = self.held.get_mut(peer) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(peer);
            }
        }
    }
}

/// 256 random bits from the crypto provider's generator, in hex; none if it failed.
fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    clusterlink_pki::tls::provider()
        .secure_random
        .fill(&mut bytes)
        .ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export() -> ExportRef {
        ExportRef {
            namespace: "default".into(),
            name: "web".into(),
        }
    }

    #[test]
    fn requests_are_told_apart_and_bounded() {
        let get = b"GET /healthz HTTP/1.1\r\nHost: a:443\r\n\r\n";
        assert_eq!(GoRequest::decode(get).unwrap(), GoRequest::Heartbeat);
        let post = b"POST /authz HTTP/1.1\r\nContent-Length: 12\r\n\r\n";
        assert_eq!(
            GoRequest::decode(post).unwrap(),
            GoRequest::Authorize { length: 12 }
        );
        let huge = format!(
            "POST /authz HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_AUTHORIZE_BODY + 1
        );
        assert!(matches!(
            GoRequest::decode(huge.as_bytes()),
            Err(ProtocolError::TooLarge)
        ));
        let chunked = b"POST /authz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(GoRequest::decode(chunked).is_err());
        let connect = b"CONNECT b:443 HTTP/1.1\r\nAuthorization: Bearer abc\r\n\r\n";
        assert_eq!(
            GoRequest::decode(connect).unwrap(),
            GoRequest::Connect {
                token: Some("abc".into())
            }
        );
        let other = b"DELETE /x\x1b[2J HTTP/1.1\r\n\r\n";
        assert!(GoRequest::decode(other).is_err());
    }

    #[test]
    fn a_go_peer_cannot_name_itself_or_label_itself_in_its_request() {
        let body = br#"{"ServiceName":"web","ServiceNamespace":"default","SrcAttributes":{
            "peer.clusterlink.net/name":"someone-else",
            "peer.clusterlink.net/labels.env":"prod",
            "export.clusterlink.net/name":"db",
            "client.clusterlink.net/namespace":"shop",
            "client.clusterlink.net/labels.app":"cart"}}"#;
        let (export_ref, client) = authorization_of(body).unwrap();
        assert_eq!(export_ref, export());
        let keys: Vec<_> = client.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "client.clusterlink.net/labels.app",
                "client.clusterlink.net/namespace"
            ]
        );
        let unknown = br#"{"ServiceName":"web","ServiceNamespace":"default","Extra":1}"#;
        assert!(authorization_of(unknown).is_err());
        let null = br#"{"ServiceName":"web","ServiceNamespace":"default","SrcAttributes":null}"#;
        assert!(authorization_of(null).unwrap().1.is_empty());
    }

    #[test]
    fn what_this_side_sends_reads_back() {
        let labels = BTreeMap::from([("env".to_string(), "prod".to_string())]);
        let answer = heartbeat_response(&labels);
        let parsed = Answer::decode(&answer).unwrap();
        assert_eq!(parsed.labels().unwrap(), labels);
        let client = Attributes::from([(
            "client.clusterlink.net/namespace".to_string(),
            "shop".to_string(),
        )]);
        let request = authorize_request("b", &export(), &client, "a", &labels);
        let split = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(
            GoRequest::decode(&request[..split]).unwrap(),
            GoRequest::Authorize {
                length: request.len() - split
            }
        );
        let body: serde_json::Value = serde_json::from_slice(&request[split..]).unwrap();
        assert_eq!(body["SrcAttributes"]["peer.clusterlink.net/name"], "a");
        assert_eq!(
            body["SrcAttributes"]["peer.clusterlink.net/labels.env"],
            "prod"
        );
        // A client this gateway knows nothing of is `null`, as the Go gateways send it.
        let unknown = authorize_request("b", &export(), &Attributes::new(), "a", &labels);
        assert!(String::from_utf8_lossy(&unknown).contains(r#""SrcAttributes":null"#));
        let token = Answer::decode(&token_response("t0k")).unwrap();
        assert_eq!(token.token(b""), Ok("t0k".to_string()));
        let closed = closing(refusal_response(RefusalReason::PolicyDenied, "no"));
        assert!(closed.starts_with(b"HTTP/1.1 403 Forbidden\r\nconnection: close\r\n"));
        assert!(Answer::decode(&closed).unwrap().closes);
        assert!(!token.closes);
    }

    #[test]
    fn refusals_become_reasons_and_their_text_is_escaped() {
        let head = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 30\r\n\r\n";
        let answer = Answer::decode(head).unwrap();
        let (reason, message) = answer
            .token(b"Permission denied \x1b[2J\nfake")
            .unwrap_err();
        assert_eq!(reason, RefusalReason::PolicyDenied);
        assert!(
            !message.contains('\x1b') && !message.contains('\n'),
            "{message}"
        );
        let missing = Answer::decode(b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap();
        assert_eq!(missing.refusal(b"").0, RefusalReason::NoSuchExport);
        // As a Go gateway's data plane answers for a missing export: a 403 that says so.
        let text = b"Exported service 'default/nope' not found.\n";
        assert_eq!(answer.refusal(text).0, RefusalReason::NoSuchExport);
        // Its heartbeat without labels reports `null`.
        let null = Answer::decode(b"HTTP/1.1 200 OK\r\nClusterlinkpeerlabels: bnVsbA==\r\n\r\n");
        assert!(null.unwrap().labels().unwrap().is_empty());
        let huge = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\n\r\n",
            1 << 30
        );
        // Declared as is; the reader takes at most MAX_ANSWER_BODY of it.
        assert_eq!(Answer::decode(huge.as_bytes()).unwrap().length, 1 << 30);
        let bad_token = Answer::decode(b"HTTP/1.1 200 OK\r\nx-access-token: a b\r\n\r\n").unwrap();
        assert!(bad_token.token(b"").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_single_use_bound_to_their_peer_and_short_lived() {
        let tokens = Tokens::new(Duration::from_secs(5), 2);
        let a = tokens.issue("a", export(), Attributes::new()).unwrap();
        let grant = tokens.redeem(Some(&a), "a").unwrap();
        assert_eq!(grant.export, export());
        assert_eq!(tokens.redeem(Some(&a), "a"), Err(TokenRefusal::Unknown));

        let stolen = tokens.issue("a", export(), Attributes::new()).unwrap();
        assert!(matches!(
            tokens.redeem(Some(&stolen), "b"),
            Err(TokenRefusal::WrongPeer { .. })
        ));
        // Presented by the wrong peer, it is void for the right one too.
        assert_eq!(
            tokens.redeem(Some(&stolen), "a"),
            Err(TokenRefusal::Unknown)
        );

        let late = tokens.issue("a", export(), Attributes::new()).unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(tokens.redeem(Some(&late), "a"), Err(TokenRefusal::Unknown));
        assert_eq!(tokens.redeem(None, "a"), Err(TokenRefusal::Missing));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_holds_a_bounded_number_of_tokens_until_they_expire() {
        let tokens = Tokens::new(Duration::from_secs(5), 2);
        let first = tokens.issue("a", export(), Attributes::new()).unwrap();
        assert!(tokens.issue("a", export(), Attributes::new()).is_ok());
        assert_eq!(
            tokens.issue("a", export(), Attributes::new()),
            Err(NoToken::TooMany(2))
        );
        // Another peer has its own share.
        assert!(tokens.issue("b", export(), Attributes::new()).is_ok());
        // Redeeming one frees its place; so does expiry.
        tokens.redeem(Some(&first), "a").unwrap();
        assert!(tokens.issue("a", export(), Attributes::new()).is_ok());
        assert_eq!(
            tokens.issue("a", export(), Attributes::new()),
            Err(NoToken::TooMany(2))
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(tokens.issue("a", export(), Attributes::new()).is_ok());
        assert_eq!(tokens.inner.lock().grants.len(), 1);
    }
}
