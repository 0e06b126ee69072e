//! The peer port under a hand-driven TLS client, saying what a real gateway never would.

mod support;

use std::sync::Arc;

use clusterlink_pki::issue::FabricCa;
use clusterlink_pki::tls::{Credentials, mutual_client_config};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::{Backend, Fabric, GatewayProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

const ALPN: &[u8] = b"clusterlink/2";

/// Opens TLS to the gateway's peer port as `creds`, expecting the server to be `server_name`,
/// sends `request` and returns the answer's first line, or the error.
async fn ask(
    gw: &GatewayProcess,
    creds: &Credentials,
    server_name: &str,
    request: &[u8],
) -> Result<String, String> {
    let mut config = mutual_client_config(creds).unwrap();
    config.alpn_protocols = vec![ALPN.to_vec()];
    let tcp = tokio::net::TcpStream::connect(&gw.peer_address)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(request).await.map_err(|e| e.to_string())?;
    // Half-close, so an established tunnel's backend answers and the exchange ends.
    let _ = tls.shutdown().await;
    let mut answer = Vec::new();
    // The server's certificate check of ours completes after the client's handshake ends, so a
    // refusal of our certificate shows up here, as an alert instead of an answer.
    // An answer followed by a close without close_notify is still the answer.
    if let Err(e) = tls.read_to_end(&mut answer).await
        && answer.is_empty()
    {
        return Err(format!("read: {e}"));
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    Ok(text.lines().next().unwrap_or_default().to_string())
}

fn setup() -> (Fabric, GatewayProcess) {
    let f = Fabric::new(&["server1", "client1", "client2"]);
    let server = f.start("server1");
    let backend = Backend::start("server1");
    server.apply(&format!(
        "apiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {{name: svc}}\nspec: {{host: 127.0.0.1, port: {}}}\n---\n\
         apiVersion: clusterlink.net/v1alpha1\nkind: AccessPolicy\nmetadata: {{name: only-client1}}\n\
         spec: {{action: allow, from: [{{workloadSelector: {{matchLabels: {{peer.clusterlink.net/name: client1}}}}}}], to: [{{workloadSelector: {{}}}}]}}\n",
        backend.port
    ));
    (f, server)
}

/// A tunnel request for a known client (the server's policy selects by peer, so a client with
/// no attributes would be refused whoever asks).
const CONNECT: &[u8] = b"CONNECT svc.default:443 HTTP/1.1\r\nhost: svc.default:443\r\nx-clusterlink-client: {\"client.clusterlink.net/namespace\":\"default\"}\r\n\r\n";

#[tokio::test]
async fn the_peer_is_who_its_certificate_names() {
    let (f, server) = setup();
    let client1 = f.credentials("client1");
    let client2 = f.credentials("client2");
    assert_eq!(
        ask(&server, &client1, "server1", CONNECT).await.unwrap(),
        "HTTP/1.1 200 OK"
    );
    assert_eq!(
        ask(&server, &client2, "server1", CONNECT).await.unwrap(),
        "HTTP/1.1 403 Forbidden"
    );
    // client2 claims to be client1 in the attributes it sends: refused outright.
    let forged = b"CONNECT svc.default:443 HTTP/1.1\r\nx-clusterlink-client: {\"peer.clusterlink.net/name\":\"client1\"}\r\n\r\n";
    assert_eq!(
        ask(&server, &client2, "server1", forged).await.unwrap(),
        "HTTP/1.1 400 Bad Request"
    );
    // Other headers naming a peer are simply not read.
    let claimed = b"CONNECT svc.default:443 HTTP/1.1\r\nx-clusterlink-peer: client1\r\nx-forwarded-for: client1\r\n\r\n";
    assert_eq!(
        ask(&server, &client2, "server1", claimed).await.unwrap(),
        "HTTP/1.1 403 Forbidden"
    );
}

#[tokio::test]
async fn expired_foreign_and_misnamed_certificates_are_refused_at_the_handshake() {
    let (f, server) = setup();
    let good = f.credentials("client1");

    // Issued by the right CA, for the right name, but expired.
    let ca = FabricCa::load(&f.fabric_dir()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let issue = |from: time::Duration, to: time::Duration| {
        let validity = clusterlink_pki::Validity::between(now + from, now + to).unwrap();
        let cert = ca.issue_peer("client1", validity).unwrap();
        Credentials {
            roots: good.roots.clone(),
            cas: good.cas.clone(),
            chain: vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap()],
            key: Arc::new(PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap()),
        }
    };
    // Control: issued the same way but valid now, it works; so the refusal below is the expiry.
    let current = issue(time::Duration::days(-1), time::Duration::days(1));
    assert_eq!(
        ask(&server, &current, "server1", CONNECT).await.unwrap(),
        "HTTP/1.1 200 OK"
    );
    let expired = issue(time::Duration::days(-10), time::Duration::days(-1));
    let err = ask(&server, &expired, "server1", CONNECT)
        .await
        .unwrap_err();
    assert!(err.contains("CertificateExpired"), "{err}");
    // The gateway's own account of it gives the certificate's end as a date.
    assert!(
        support::eventually(std::time::Duration::from_secs(10), || server
            .log()
            .contains("the certificate expired at 20")),
        "{}",
        server.log()
    );
    assert!(!server.log().contains("(UNIX)"), "{}", server.log());

    // The right name from another fabric.
    let other = Fabric::new(&["client1"]);
    let mut foreign = other.credentials("client1");
    foreign.roots = good.roots.clone();
    let err = ask(&server, &foreign, "server1", CONNECT)
        .await
        .unwrap_err();
    // Both fabrics are named default_fabric, so the issuer name matches and the signature is
    // what fails to verify against this fabric's CA.
    assert!(
        err.contains("DecryptError") || err.contains("UnknownIssuer"),
        "{err}"
    );

    // The gateway at this address is server1; expecting server2 there must fail on our side.
    let err = ask(&server, &good, "server2", CONNECT).await.unwrap_err();
    assert!(err.contains("not valid for name \"server2\""), "{err}");

    // And the honest client still gets through.
    assert_eq!(
        ask(&server, &good, "server1", CONNECT).await.unwrap(),
        "HTTP/1.1 200 OK"
    );
}

#[tokio::test]
async fn the_management_api_is_not_served_on_the_peer_port() {
    let (f, server) = setup();
    let client1 = f.credentials("client1");
    let get = b"GET /apis/clusterlink.net/v1alpha1/peers HTTP/1.1\r\nhost: x\r\n\r\n";
    assert_eq!(
        ask(&server, &client1, "server1", get).await.unwrap(),
        "HTTP/1.1 400 Bad Request"
    );
    // Plain HTTP is not TLS: the connection ends without an answer.
    let mut plain = tokio::net::TcpStream::connect(&server.peer_address)
        .await
        .unwrap();
    plain.write_all(get).await.unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(!String::from_utf8_lossy(&answer).contains("PeerList"));
}

#[tokio::test]
async fn health_probes_are_answered_one_after_another_on_one_connection() {
    use clusterlink_dataplane::tunnel::{HEALTH_REQUEST, read_head};
    let (f, server) = setup();
    let mut config = mutual_client_config(&f.credentials("client1")).unwrap();
    config.alpn_protocols = vec![ALPN.to_vec()];
    let tcp = tokio::net::TcpStream::connect(&server.peer_address)
        .await
        .unwrap();
    let name = ServerName::try_from("server1").unwrap();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    for _ in 0..3 {
        tls.write_all(HEALTH_REQUEST).await.unwrap();
        let (head, rest) = read_head(&mut tls).await.unwrap();
        assert!(head.starts_with(b"HTTP/1.1 200 OK\r\n"), "{head:?}");
        assert!(rest.is_empty());
    }
}

/// A handshake as `creds` with a client that would resume if offered; whether it resumed.
async fn handshake_kind(
    gw: &GatewayProcess,
    config: &Arc<rustls::ClientConfig>,
) -> Result<rustls::HandshakeKind, String> {
    let tcp = tokio::net::TcpStream::connect(&gw.peer_address)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("server1").unwrap();
    let mut tls = TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    // A probe, answered: any session ticket the server would send has arrived by then.
    tls.write_all(clusterlink_dataplane::tunnel::HEALTH_REQUEST)
        .await
        .map_err(|e| e.to_string())?;
    clusterlink_dataplane::tunnel::read_head(&mut tls)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(tls.get_ref().1.handshake_kind().unwrap())
}

#[tokio::test]
async fn no_session_is_resumed_so_none_outlives_its_certificate() {
    let (f, server) = setup();
    let mut config = mutual_client_config(&f.credentials("client1")).unwrap();
    config.alpn_protocols = vec![ALPN.to_vec()];
    // A client that keeps and offers sessions, as `openssl s_client -sess_out/-sess_in` does.
    config.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let config = Arc::new(config);
    for _ in 0..3 {
        assert_eq!(
            handshake_kind(&server, &config).await.unwrap(),
            rustls::HandshakeKind::Full,
            "a session was resumed: its certificate would not be checked again"
        );
    }
}

#[tokio::test]
async fn a_certificate_without_a_peer_object_asks_by_default_and_is_refused_with_known_peers_only()
{
    let (f, open) = setup();
    let client1 = f.credentials("client1");
    // By default (as in the reference ClusterLink) a fabric certificate may ask; policies decide.
    assert_eq!(
        ask(&open, &client1, "server1", CONNECT).await.unwrap(),
        "HTTP/1.1 200 OK"
    );
    let strict = f.start_with(
        "server1",
        &[
            "--known-peers-only",
            "--data-dir",
            f.root().join("strict-data").to_str().unwrap(),
            "--management-address",
            "127.0.0.1:0",
            "--peer-address",
            "127.0.0.1:0",
        ],
    );
    let backend = Backend::start("strict");
    strict.apply(&format!(
        "apiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {{name: svc}}\nspec: {{host: 127.0.0.1, port: {}}}\n---\n\
         apiVersion: clusterlink.net/v1alpha1\nkind: AccessPolicy\nmetadata: {{name: all}}\n\
         spec: {{action: allow, from: [{{workloadSelector: {{}}}}], to: [{{workloadSelector: {{}}}}]}}\n",
        backend.port
    ));
    let refused = ask(&strict, &client1, "server1", CONNECT).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("read")) || refused == Ok(String::new()),
        "{refused:?}"
    );
    assert_eq!(
        support::metric_with(
            &strict,
            "clusterlink_connections_unserved_total",
            &[("reason", "UnknownPeer")]
        ),
        1.0
    );
    // With its Peer object, the same certificate is served.
    strict.apply(
        "apiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {name: client1}\nspec: {gateways: [{host: 127.0.0.1, port: 9}]}\n",
    );
    assert_eq!(
        ask(&strict, &client1, "server1", CONNECT).await.unwrap(),
        "HTTP/1.1 200 OK"
    );
    // Its Peer object deleted, it is refused again.
    strict.gwctl_ok(&["delete", "peer", "client1"]);
    assert!(support::eventually(
        std::time::Duration::from_secs(10),
        || {
            support::metric_with(
                &strict,
                "clusterlink_connections_unserved_total",
                &[("reason", "UnknownPeer")],
            ) >= 1.0
        }
    ));
    let refused = ask(&strict, &client1, "server1", CONNECT).await;
    assert!(refused != Ok("HTTP/1.1 200 OK".to_string()), "{refused:?}");
}

#[tokio::test]
async fn a_revocation_list_handed_to_a_gateway_refuses_the_certificate_at_the_handshake() {
    let (f, server) = setup();
    let client1 = f.credentials("client1");
    assert_eq!(
        ask(&server, &client1, "server1", CONNECT).await.unwrap(),
        "HTTP/1.1 200 OK"
    );
    let o = support::run(
        support::CLUSTERLINK,
        &["revoke", "--cert", "default_fabric/client1/cert.pem"],
        f.root(),
    );
    assert!(o.status.success(), "{}", support::stderr(&o));
    let list = std::fs::read(f.fabric_dir().join("authority/revocations.pem")).unwrap();
    // A list signed by another CA is refused, and changes nothing.
    let other = Fabric::new(&["client1"]);
    support::run(
        support::CLUSTERLINK,
        &["revoke", "--peer", "client1"],
        other.root(),
    );
    let foreign = std::fs::read(other.fabric_dir().join("authority/revocations.pem")).unwrap();
    let (status, body) = support::raw_http(server.port(), "POST", "/api/v1/revocations", &foreign);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("that no CA of this fabric's trust bundle signed"),
        "{body}"
    );
    let (status, body) = support::raw_http(server.port(), "POST", "/api/v1/revocations", &list);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"taken\":true"), "{body}");
    let err = ask(&server, &client1, "server1", CONNECT)
        .await
        .unwrap_err();
    assert!(err.contains("Revoked"), "{err}");
    // Another peer of the fabric is untouched.
    assert_eq!(
        ask(&server, &f.credentials("client2"), "server1", CONNECT)
            .await
            .unwrap(),
        "HTTP/1.1 403 Forbidden"
    );
}

/// A TLS client with no certificate that offers `alpn` and trusts only this fabric's CA.
fn enrollment_client(f: &Fabric, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let ca = std::fs::read(f.fabric_dir().join("cert.pem")).unwrap();
    let ca = CertificateDer::from_pem_slice(&ca).unwrap();
    let pin = clusterlink_pki::authority::sha256_hex(ca.as_ref());
    let mut config = clusterlink_pki::tls::pinned_ca_client_config(&pin).unwrap();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(config)
}

/// Sends `request` over TLS without a client certificate; the whole answer, or the error.
async fn ask_unauthenticated(
    gw: &GatewayProcess,
    config: &Arc<rustls::ClientConfig>,
    request: &[u8],
) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(&gw.peer_address)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = TlsConnector::from(config.clone())
        .connect(ServerName::try_from("server1").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(request).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

const ENROLL: &[u8] = b"clusterlink-enroll/1";

#[tokio::test]
async fn only_an_issuing_gateway_takes_a_handshake_without_a_certificate_and_only_to_enroll() {
    let (f, plain) = setup();
    let join = b"POST /join HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}";
    // A gateway that does not issue requires a certificate whatever the client offers.
    for alpn in [&[ENROLL][..], &[ALPN, ENROLL][..], &[ALPN][..]] {
        let refused = ask_unauthenticated(&plain, &enrollment_client(&f, alpn), join).await;
        assert!(refused.is_err(), "{alpn:?}: {refused:?}");
    }
    let issuer = f.start_with(
        "server1",
        &[
            "--issuer",
            "--data-dir",
            f.root().join("issuer-data").to_str().unwrap(),
            "--management-address",
            "127.0.0.1:0",
            "--peer-address",
            "127.0.0.1:0",
        ],
    );
    // Without a certificate, only enrollment is served: no tunnel, no probe.
    let tunnel = ask_unauthenticated(&issuer, &enrollment_client(&f, &[ALPN, ENROLL]), CONNECT)
        .await
        .unwrap();
    assert!(tunnel.starts_with("HTTP/1.1 400"), "{tunnel}");
    assert!(
        ask_unauthenticated(&issuer, &enrollment_client(&f, &[ALPN]), CONNECT)
            .await
            .is_err()
    );
    let probe = ask_unauthenticated(
        &issuer,
        &enrollment_client(&f, &[ENROLL]),
        clusterlink_dataplane::tunnel::HEALTH_REQUEST,
    )
    .await
    .unwrap();
    assert!(probe.starts_with("HTTP/1.1 400"), "{probe}");
    // Renewal needs the certificate it renews.
    let renew = ask_unauthenticated(
        &issuer,
        &enrollment_client(&f, &[ENROLL]),
        b"POST /renew HTTP/1.1\r\ncontent-length: 11\r\n\r\n{\"csr\":\"x\"}",
    )
    .await
    .unwrap();
    assert!(renew.contains("none was presented"), "{renew}");
    // A body larger than a request can be is refused unread.
    let huge = ask_unauthenticated(
        &issuer,
        &enrollment_client(&f, &[ENROLL]),
        b"POST /join HTTP/1.1\r\ncontent-length: 104857600\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(
        huge.starts_with("HTTP/1.1 400") && huge.contains("at most"),
        "{huge}"
    );
    // A flood of guessed tokens: each refused as forged, none redeemed, nothing issued.
    for i in 0..200 {
        let body = format!("{{\"token\":\"cljoin1.{i}.{i}\",\"csr\":\"x\"}}");
        let request = format!(
            "POST /join HTTP/1.1\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = ask_unauthenticated(
            &issuer,
            &enrollment_client(&f, &[ENROLL]),
            request.as_bytes(),
        )
        .await
        .unwrap();
        assert!(answer.contains("TokenForged"), "{answer}");
    }
    let authority = f.fabric_dir().join("authority");
    assert_eq!(
        std::fs::read_dir(authority.join("redeemed"))
            .unwrap()
            .count(),
        0
    );
    let ledger = std::fs::read_to_string(authority.join("issued.jsonl")).unwrap();
    assert_eq!(
        ledger.lines().count(),
        3,
        "only the three made by file: {ledger}"
    );
}

#[tokio::test]
async fn a_peer_cannot_push_junk_or_huge_revocation_lists() {
    let (f, server) = setup();
    let client1 = f.credentials("client1");
    let huge = ask(
        &server,
        &client1,
        "server1",
        b"POST /revocations HTTP/1.1\r\ncontent-length: 104857600\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(huge.starts_with("HTTP/1.1 400"), "{huge}");
    let junk = b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n";
    let mut request = format!(
        "POST /revocations HTTP/1.1\r\ncontent-length: {}\r\n\r\n",
        junk.len()
    )
    .into_bytes();
    request.extend_from_slice(junk);
    let answer = ask(&server, &client1, "server1", &request).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Nothing was taken: the gateway holds no list, and client1 is still served.
    let (status, lists) = support::raw_http(server.port(), "GET", "/api/v1/revocations", b"");
    assert_eq!((status, lists.as_str()), (200, ""));
    assert_eq!(
        ask(&server, &client1, "server1", CONNECT).await.unwrap(),
        "HTTP/1.1 200 OK"
    );
}

#[test]
fn a_join_goes_only_to_the_issuing_gateway_the_token_names() {
    let f = Fabric::new(&["server1", "client1"]);
    let issuer_args = |peer: &str| {
        vec![
            "--issuer".to_string(),
            "--data-dir".to_string(),
            f.root().join(format!("{peer}-data")).display().to_string(),
            "--management-address".to_string(),
            "127.0.0.1:0".to_string(),
            "--peer-address".to_string(),
            "127.0.0.1:0".to_string(),
        ]
    };
    let args = issuer_args("server1");
    let _issuer = f.start_with(
        "server1",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    // Another gateway of the same fabric, able to sign (a thief of client1's key with the CA
    // key would be worse off already): the token was made for server1.
    let args = issuer_args("client1");
    let impostor = f.start_with(
        "client1",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let o = support::run(
        support::CLUSTERLINK,
        &[
            "create",
            "join-token",
            "--name",
            "site3",
            "--at",
            &impostor.peer_address,
        ],
        f.root(),
    );
    assert!(o.status.success(), "{}", support::stderr(&o));
    let token = support::stdout(&o).trim().to_string();
    let read = clusterlink_pki::authority::JoinToken::read(&token).unwrap();
    // The issuer file now names client1 (it started last); a token made before would name
    // server1. Make one that names server1 but points at client1, as a redirected network would.
    assert_eq!(read.issuer, "client1");
    std::fs::write(f.fabric_dir().join("authority/issuer"), "server1").unwrap();
    let o = support::run(
        support::CLUSTERLINK,
        &[
            "create",
            "join-token",
            "--name",
            "site3",
            "--at",
            &impostor.peer_address,
        ],
        f.root(),
    );
    let token = support::stdout(&o).trim().to_string();
    let data_dir = f.root().join("site3-data");
    let o = support::run(
        support::CL_GATEWAY,
        &[
            "--join",
            &token,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--management-address",
            "127.0.0.1:0",
            "--peer-address",
            "127.0.0.1:0",
        ],
        f.root(),
    );
    assert!(!o.status.success());
    let err = support::stderr(&o);
    assert!(
        err.contains("not valid for name") && err.contains("server1"),
        "{err}"
    );
    assert!(!data_dir.join("tls/identity.pem").exists());
}

/// A link to `gw`'s peer port, driven by hand: TLS as `creds` with the link ALPN, then yamux as
/// its client. Streams the gateway opens (its keepalives) get a health answer.
struct HandLink {
    opens: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<yamux::Stream>>,
    task: tokio::task::JoinHandle<()>,
}

impl HandLink {
    async fn dial(gw: &GatewayProcess, creds: &Credentials) -> Result<HandLink, String> {
        use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
        let mut config = mutual_client_config(creds).unwrap();
        config.alpn_protocols = vec![clusterlink_pki::tls::LINK_ALPN.to_vec()];
        let tcp = tokio::net::TcpStream::connect(&gw.peer_address)
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from("server1").unwrap();
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let mut connection =
            yamux::Connection::new(tls.compat(), yamux::Config::default(), yamux::Mode::Client);
        let (opens, mut requests) =
            tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<yamux::Stream>>(16);
        let task = tokio::spawn(async move {
            let mut waiting = Vec::new();
            loop {
                let inbound = std::future::poll_fn(|cx| {
                    while let std::task::Poll::Ready(Some(r)) = requests.poll_recv(cx) {
                        waiting.push(r);
                    }
                    while !waiting.is_empty() {
                        match connection.poll_new_outbound(cx) {
                            std::task::Poll::Ready(Ok(s)) => {
                                let _ = waiting.remove(0).send(s);
                            }
                            std::task::Poll::Ready(Err(_)) => return std::task::Poll::Ready(None),
                            std::task::Poll::Pending => break,
                        }
                    }
                    connection.poll_next_inbound(cx)
                })
                .await;
                let Some(Ok(stream)) = inbound else { return };
                tokio::spawn(async move {
                    let mut stream = stream.compat();
                    let mut head = [0u8; 256];
                    let _ = stream.read(&mut head).await;
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Ok(HandLink { opens, task })
    }

    /// Sends `request` on a new stream and returns the answer's first line ("" if none came).
    async fn ask(&self, request: &[u8]) -> String {
        use tokio_util::compat::FuturesAsyncReadCompatExt;
        let (reply, stream) = tokio::sync::oneshot::channel();
        if self.opens.send(reply).await.is_err() {
            return String::new();
        }
        let Ok(stream) = stream.await else {
            return String::new();
        };
        let mut stream = stream.compat();
        if stream.write_all(request).await.is_err() {
            return String::new();
        }
        let mut answer = Vec::new();
        let mut byte = [0u8];
        while !answer.ends_with(b"\r\n") {
            match tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut byte))
                .await
            {
                Ok(Ok(1)) => answer.push(byte[0]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&answer).trim().to_string()
    }
}

impl Drop for HandLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn over_a_link_the_peer_is_still_who_its_certificate_names() {
    let (f, server) = setup();
    let client1 = HandLink::dial(&server, &f.credentials("client1"))
        .await
        .unwrap();
    let client2 = HandLink::dial(&server, &f.credentials("client2"))
        .await
        .unwrap();
    assert_eq!(client1.ask(CONNECT).await, "HTTP/1.1 200 OK");
    assert_eq!(client2.ask(CONNECT).await, "HTTP/1.1 403 Forbidden");
    let forged = b"CONNECT svc.default:443 HTTP/1.1\r\nx-clusterlink-client: {\"peer.clusterlink.net/name\":\"client1\"}\r\n\r\n";
    assert_eq!(client2.ask(forged).await, "HTTP/1.1 400 Bad Request");
    // Garbage on one stream costs that stream, not the link.
    assert_eq!(
        client1.ask(b"\x16\x03\x01 not a request\r\n\r\n").await,
        "HTTP/1.1 400 Bad Request"
    );
    assert_eq!(client1.ask(CONNECT).await, "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn a_peer_holds_at_most_four_links() {
    let (f, server) = setup();
    let creds = f.credentials("client1");
    let mut links = Vec::new();
    for _ in 0..4 {
        let link = HandLink::dial(&server, &creds).await.unwrap();
        assert_eq!(link.ask(CONNECT).await, "HTTP/1.1 200 OK");
        links.push(link);
    }
    // The fifth is closed after the handshake, and counted.
    let fifth = HandLink::dial(&server, &creds).await.unwrap();
    assert_eq!(fifth.ask(CONNECT).await, "");
    assert!(support::eventually(
        std::time::Duration::from_secs(10),
        || support::metric_with(
            &server,
            "clusterlink_connections_unserved_total",
            &[("reason", "PeerLimit")]
        ) == 1.0
    ));
    // Another peer still links; a link closed makes room.
    let other = HandLink::dial(&server, &f.credentials("client2"))
        .await
        .unwrap();
    assert_eq!(
        other.ask(b"GET /healthz HTTP/1.1\r\n\r\n").await,
        "HTTP/1.1 200 OK"
    );
    drop(links.pop());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let link = HandLink::dial(&server, &creds).await.unwrap();
        if link.ask(CONNECT).await == "HTTP/1.1 200 OK" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a closed link made no room"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
