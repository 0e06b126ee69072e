//! The Go ClusterLink's protocol on the peer port (Peers of `protocol: go`), from a hand-driven
//! TLS client: what a Go gateway sends, and what an attacker holding a fabric certificate would.

mod support;

use std::sync::Arc;
use std::time::Duration;

use clusterlink_dataplane::tunnel::read_head;
use clusterlink_pki::tls::mutual_client_config;
use rustls_pki_types::ServerName;
use support::manifests::{allow_all, export, import, peer, policy};
use support::{
    Exchange, Fabric, GatewayProcess, clients_table, eventually, free_port, metric, reachable,
    was_closed,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A TLS connection to server1's peer port as `peer`, offering no ALPN, as a Go gateway does.
async fn go_connection(
    f: &Fabric,
    server: &GatewayProcess,
    peer: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let config = mutual_client_config(&f.credentials(peer)).unwrap();
    assert!(config.alpn_protocols.is_empty());
    let tcp = TcpStream::connect(&server.peer_address).await?;
    let name = ServerName::try_from("server1").unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// Sends `request` and reads one answer: its head and body (by its content-length) as text. An
/// error when the connection closes first.
async fn ask(tls: &mut TlsStream<TcpStream>, request: &[u8]) -> Result<String, String> {
    tls.write_all(request).await.map_err(|e| e.to_string())?;
    let (head, mut rest) = read_head(tls).await.map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&head).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    while rest.len() < length {
        let mut more = vec![0; length - rest.len()];
        let n = tls.read(&mut more).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed in the middle of a body".into());
        }
        rest.extend_from_slice(&more[..n]);
    }
    Ok(format!("{head}{}", String::from_utf8_lossy(&rest)))
}

fn authorize(export: &str, attributes: &str) -> Vec<u8> {
    let body = format!(
        r#"{{"ServiceName":"{export}","ServiceNamespace":"default","SrcAttributes":{attributes}}}"#
    );
    format!(
        "POST /authz HTTP/1.1\r\nHost: server1:443\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const CLIENT: &str =
    r#"{"client.clusterlink.net/namespace":"shop","peer.clusterlink.net/name":"client1"}"#;

fn token_of(answer: &str) -> String {
    answer
        .lines()
        .find_map(|l| l.strip_prefix("x-access-token: "))
        .unwrap_or_else(|| panic!("no token in {answer:?}"))
        .to_string()
}

fn connect(token: &str) -> Vec<u8> {
    format!(
        "CONNECT server1:443 HTTP/1.1\r\nHost: server1:443\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .into_bytes()
}

/// Opens the tunnel `token` grants on a new connection as `peer`, and sends `payload`: the
/// answer's first line, and what came back through the tunnel (the backend's greeting and its
/// echo) before this side closed it.
async fn tunnel(
    f: &Fabric,
    server: &GatewayProcess,
    peer: &str,
    token: &str,
    payload: &[u8],
) -> (String, String) {
    let mut tls = go_connection(f, server, peer).await.unwrap();
    tls.write_all(&connect(token)).await.unwrap();
    let (head, mut rest) = read_head(&mut tls).await.unwrap();
    let status = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap()
        .to_string();
    if status.starts_with("HTTP/1.1 200") {
        tls.write_all(payload).await.unwrap();
        let expected = "svc-backend\n".len() + payload.len();
        while rest.len() < expected {
            let mut more = [0u8; 256];
            match tls.read(&mut more).await {
                Ok(0) | Err(_) => break,
                Ok(n) => rest.extend_from_slice(&more[..n]),
            }
        }
        // As a Go gateway ends a tunnel: it closes the connection.
        let _ = tls.shutdown().await;
    } else {
        let _ = tls.read_to_end(&mut rest).await;
    }
    (status, String::from_utf8_lossy(&rest).into_owned())
}

/// A backend that greets each connection with `<name>\n` and echoes what it reads as it reads
/// it: the Go protocol carries no half-close, so nothing waits for one. After the client's end it
/// keeps the connection a minute, as an idle server keeps a client's.
fn echo_backend(name: &str) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let greeting = format!("{name}\n");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let greeting = greeting.clone();
            std::thread::spawn(move || {
                let _ = conn.write_all(greeting.as_bytes());
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        std::thread::park_timeout(Duration::from_secs(60));
                        break;
                    }
                    if conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// A conversation through import `port` with an [`echo_backend`]: who greeted, once `payload`
/// came back whole; the connection, still open.
fn converse(port: u16, payload: &[u8]) -> (Exchange, Option<std::net::TcpStream>) {
    use std::io::{BufRead, Read, Write};
    let reset = |e: &std::io::Error| e.kind() == std::io::ErrorKind::ConnectionReset;
    let conn = match std::net::TcpStream::connect(("127.0.0.1", port)) {
        Ok(c) => c,
        Err(e) => return (Exchange::Other(format!("connect: {e}")), None),
    };
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
    let mut greeting = String::new();
    match reader.read_line(&mut greeting) {
        Err(e) if reset(&e) => return (Exchange::Reset, None),
        Err(e) => return (Exchange::Other(format!("read: {e}")), None),
        Ok(0) => return (Exchange::Other("closed without a greeting".into()), None),
        Ok(_) => {}
    }
    let mut echo = vec![0u8; payload.len()];
    if (&conn).write_all(payload).is_err()
        || reader.read_exact(&mut echo).is_err()
        || echo != payload
    {
        return (Exchange::Other("no echo".into()), None);
    }
    let backend = greeting.trim().to_string();
    (Exchange::Served { backend }, Some(conn))
}

/// What [`converse`] saw.
fn talk(port: u16, payload: &[u8]) -> Exchange {
    converse(port, payload).0
}

/// A conversation through `port` that `gw` counts among its active tunnels on `side`.
fn open_counted(port: u16, gw: &GatewayProcess, side: &str) -> std::net::TcpStream {
    let series = format!("clusterlink_connections_active{{side=\"{side}\"}}");
    assert!(eventually(Duration::from_secs(10), || metric(gw, &series) == 0.0));
    let (seen, conn) = converse(port, b"open");
    let conn = conn.unwrap_or_else(|| panic!("{seen:?}"));
    assert!(eventually(Duration::from_secs(10), || metric(gw, &series) >= 1.0));
    conn
}

const GO_PEERS: &str = "apiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {name: client1, labels: {site: admin-set}}\nspec: {gateways: [{host: 127.0.0.1, port: 9}], protocol: go}\n---\n\
apiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {name: client2}\nspec: {gateways: [{host: 127.0.0.1, port: 9}], protocol: go}\n";

/// server1 exports `svc` to client1 and `secret` to client2 only; with `go_peers`, client1 and
/// client2 are Peers of protocol go.
fn setup(go_peers: bool) -> (Fabric, GatewayProcess) {
    let f = Fabric::new(&["server1", "client1", "client2", "client3"]);
    let server = f.start("server1");
    let backend = echo_backend("svc-backend");
    let allow = |name: &str, export: &str, peer: &str| {
        format!(
            "apiVersion: clusterlink.net/v1alpha1\nkind: AccessPolicy\nmetadata: {{name: {name}}}\n\
             spec: {{action: allow, from: [{{workloadSelector: {{matchLabels: {{peer.clusterlink.net/name: {peer}}}}}}}], \
             to: [{{workloadSelector: {{matchLabels: {{export.clusterlink.net/name: {export}}}}}}}]}}\n"
        )
    };
    server.apply(&format!(
        "apiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {{name: svc}}\nspec: {{host: 127.0.0.1, port: {port}}}\n---\n\
         apiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {{name: secret}}\nspec: {{host: 127.0.0.1, port: {port}}}\n---\n{}---\n{}",
        allow("svc-to-client1", "svc", "client1"),
        allow("secret-to-client2", "secret", "client2"),
        port = backend,
    ));
    if go_peers {
        server.apply(GO_PEERS);
    }
    (f, server)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handshake_without_alpn_is_taken_only_where_a_peer_speaks_go() {
    let (f, server) = setup(false);
    let heartbeat = b"GET /healthz HTTP/1.1\r\nHost: server1:443\r\n\r\n";
    // No Peer speaks go: refused at the ClientHello (rustls's client may finish its side first,
    // then the answer never comes).
    let refused = match go_connection(&f, &server, "client1").await {
        Err(_) => true,
        Ok(mut tls) => ask(&mut tls, heartbeat).await.is_err(),
    };
    assert!(
        refused,
        "a handshake without ALPN was served with no Go peer"
    );
    let logged = |line: &str| eventually(Duration::from_secs(10), || server.log().contains(line));
    assert!(logged("no Peer here has protocol: go"), "{}", server.log());

    server.apply(GO_PEERS);
    let answered = eventually(Duration::from_secs(10), || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                let Ok(mut tls) = go_connection(&f, &server, "client1").await else {
                    return false;
                };
                ask(&mut tls, heartbeat)
                    .await
                    .is_ok_and(|a| a.starts_with("HTTP/1.1 200 OK"))
            })
        })
    });
    assert!(answered, "the Go peer's heartbeat was not answered");

    // A certificate of the fabric whose Peer does not say protocol: go gets nothing.
    let mut tls = go_connection(&f, &server, "client3").await.unwrap();
    assert!(ask(&mut tls, heartbeat).await.is_err());
    let why = "peer client3 speaks the Go ClusterLink protocol";
    assert!(logged(why), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_go_peer_is_answered_as_a_go_gateway_and_gets_one_tunnel_per_token() {
    let (f, server) = setup(true);
    server.apply(
        "apiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {name: server1}\nspec: {gateways: [{host: 127.0.0.1, port: 9}]}\n",
    );
    let mut tls = go_connection(&f, &server, "client1").await.unwrap();
    // Heartbeats, one after another on one connection, with the gateway's labels as the Go
    // gateways encode them (base64 of a JSON map).
    for _ in 0..2 {
        let answer = ask(
            &mut tls,
            b"GET /healthz HTTP/1.1\r\nHost: server1:443\r\n\r\n",
        )
        .await
        .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("ClusterLinkPeerLabels: "), "{answer}");
    }
    let answer = ask(&mut tls, &authorize("svc", CLIENT)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let token = token_of(&answer);
    assert_eq!(token.len(), 64, "256 random bits in hex: {token}");

    // The tunnel, on a connection of its own as a Go gateway opens it: bytes both ways,
    // unframed.
    let (status, through) = tunnel(&f, &server, "client1", &token, b"hello").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(through, "svc-backend\nhello");
    // The Go side's close ends the tunnel, though the backend would talk on: nothing is held.
    let active = r#"clusterlink_connections_active{side="ingress"}"#;
    let ended = eventually(Duration::from_secs(10), || metric(&server, active) == 0.0);
    assert!(ended, "a tunnel outlived the Go peer's connection");

    // Used once, the token opens nothing more.
    let (status, text) = tunnel(&f, &server, "client1", &token, b"again").await;
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    assert!(text.contains("unknown, expired or already used"), "{text}");

    // Authorization and tunnel may also share a connection.
    let answer = ask(&mut tls, &authorize("svc", CLIENT)).await.unwrap();
    tls.write_all(&connect(&token_of(&answer))).await.unwrap();
    let (head, _) = read_head(&mut tls).await.unwrap();
    assert!(head.starts_with(b"HTTP/1.1 200 OK\r\n"));
}

#[tokio::test]
async fn a_go_peer_cannot_borrow_a_name_a_label_or_a_token() {
    let (f, server) = setup(true);
    let ask_as = |peer: &'static str, request: Vec<u8>| {
        let (f, server) = (&f, &server);
        async move {
            let mut tls = go_connection(f, server, peer).await.unwrap();
            ask(&mut tls, &request).await.unwrap()
        }
    };

    // `secret` is client2's; client1 saying it is client2 in its attributes changes nothing, and
    // the refusal closes the connection, as a refused tunnel's does.
    let forged = r#"{"client.clusterlink.net/namespace":"shop","peer.clusterlink.net/name":"client2","peer.clusterlink.net/labels.site":"forged"}"#;
    let mut client1 = go_connection(&f, &server, "client1").await.unwrap();
    let answer = ask(&mut client1, &authorize("secret", forged))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.contains("ingress at server1"), "{answer}");
    assert!(ask(&mut client1, &authorize("svc", CLIENT)).await.is_err());

    // Nor do the labels it claims: a policy on `site: forged` does not let it in; its labels are
    // those it reports to heartbeats and those of its Peer object here (`site: admin-set`).
    let allow_site = |site: &str| {
        format!(
            "apiVersion: clusterlink.net/v1alpha1\nkind: AccessPolicy\nmetadata: {{name: secret-to-{site}}}\n\
             spec: {{action: allow, from: [{{workloadSelector: {{matchLabels: {{peer.clusterlink.net/labels.site: {site}}}}}}}], \
             to: [{{workloadSelector: {{matchLabels: {{export.clusterlink.net/name: secret}}}}}}]}}\n"
        )
    };
    server.apply(&allow_site("forged"));
    let answer = ask_as("client1", authorize("secret", forged)).await;
    assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
    server.apply(&allow_site("admin-set"));
    let answer = ask_as("client1", authorize("secret", CLIENT)).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");

    // A missing export is a 404, as the Go gateways' control plane decides it.
    let answer = ask_as("client1", authorize("nope", CLIENT)).await;
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");

    // client1's token, presented by client2 (another Go peer of the fabric): refused, and void.
    let answer = ask_as("client1", authorize("svc", CLIENT)).await;
    let token = token_of(&answer);
    let (status, text) = tunnel(&f, &server, "client2", &token, b"x").await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    assert!(
        text.contains("issued to peer client1, not to client2"),
        "{text}"
    );
    let (status, text) = tunnel(&f, &server, "client1", &token, b"x").await;
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    assert!(text.contains("unknown, expired or already used"), "{text}");

    // A token this gateway never issued (a Go gateway's JWT, say) opens nothing either.
    let (status, _) = tunnel(&f, &server, "client1", "eyJhbGciOiJIUzI1NiJ9.e30.x", b"x").await;
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    let events = server.gwctl_ok(&["get", "events", "--problems"]);
    assert!(events.contains("PolicyDenied"), "{events}");
}

#[tokio::test]
async fn hostile_go_requests_are_refused_and_bounded() {
    let (f, server) = setup(true);
    // A body larger than any authorization: refused on its head, before it is read.
    let mut tls = go_connection(&f, &server, "client1").await.unwrap();
    let huge = b"POST /authz HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n";
    let answer = ask(&mut tls, huge).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        ask(&mut tls, huge).await.is_err(),
        "the connection stays open"
    );

    for (request, expected) in [
        (
            b"POST /authz HTTP/1.1\r\nContent-Length: 9\r\n\r\n{nonsense".to_vec(),
            "400",
        ),
        (
            authorize("svc", r#"{"client.clusterlink.net/namespace":1}"#),
            "400",
        ),
        (
            b"POST /authz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            "400",
        ),
        (b"DELETE /api/v1/exports HTTP/1.1\r\n\r\n".to_vec(), "400"),
        (b"CONNECT server1:443 HTTP/1.1\r\n\r\n".to_vec(), "400"),
    ] {
        let mut tls = go_connection(&f, &server, "client1").await.unwrap();
        let answer = ask(&mut tls, &request).await.unwrap();
        let text = String::from_utf8_lossy(&request).into_owned();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {expected}")),
            "{text:?}: {answer}"
        );
    }

    // Tokens asked for and never used: a peer holds a bounded number. Tokens issued more than
    // a token's life ago have expired and free their places, so on a machine slow enough for
    // that, more may be issued; never more within one life.
    let defaults = clusterlink_dataplane::limits::Limits::DEFAULT;
    let (limit, life) = (defaults.go_tokens_per_peer, defaults.go_token_life);
    let mut tls = go_connection(&f, &server, "client1").await.unwrap();
    let started = std::time::Instant::now();
    let mut issued = 0;
    let refused = loop {
        let answer = ask(&mut tls, &authorize("svc", CLIENT)).await.unwrap();
        if !answer.starts_with("HTTP/1.1 200") {
            break answer;
        }
        issued += 1;
        assert!(
            issued <= limit || started.elapsed() >= life,
            "{issued} tokens within {:?}",
            started.elapsed()
        );
        assert!(issued <= 4 * limit, "no bound on tokens");
    };
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(issued >= limit, "refused after {issued} tokens: {refused}");
    // Another peer has its own share.
    let mut other = go_connection(&f, &server, "client2").await.unwrap();
    let answer = ask(&mut other, &authorize("secret", CLIENT)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A Peer manifest of protocol go for `gw`.
fn go_peer(name: &str, gw: &GatewayProcess) -> String {
    let (host, port) = gw.peer_address.rsplit_once(':').unwrap();
    format!(
        "---\napiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {{name: {name}}}\nspec: {{gateways: [{{host: '{host}', port: {port}}}], protocol: go}}\n"
    )
}

/// Two of this project's gateways that take each other for Go gateways: every role of the Go
/// protocol, both ways, with this project's decisions and cuts on each side.
#[test]
fn gateways_speaking_the_go_protocol_carry_decide_and_cut_tunnels() {
    const CONVERGE: Duration = Duration::from_secs(10);
    let fabric = Fabric::new(&["server1", "client1"]);
    let table = clients_table(&["{cidr: 127.0.0.0/8, namespace: shop}"]);
    let local = [
        "--management-address",
        "127.0.0.1:0",
        "--peer-address",
        "127.0.0.1:0",
    ];
    let attributes = ["--client-attributes", table.to_str().unwrap()];
    let client = fabric.start_with("client1", &[&local[..], &attributes[..]].concat());
    let server = fabric.start_with("server1", &[&local[..], &["--label", "tier=gold"]].concat());
    server.apply(&format!(
        "{}{}{}",
        export("svc", echo_backend("server1")),
        go_peer("client1", &client),
        allow_all("allow-all")
    ));
    let port = free_port();
    client.apply(&format!(
        "{}{}{}",
        go_peer("server1", &server),
        allow_all("allow-all"),
        import("svc", port, &["server1"], "static")
    ));
    client.wait_listening("svc");
    // Probed with heartbeats, which carry the peer's labels.
    assert!(eventually(CONVERGE, || reachable(&client, "server1") == "True"));
    let reported = || {
        let json = client.gwctl_ok(&["get", "peer", "server1", "-o", "json"]);
        serde_json::from_str::<serde_json::Value>(&json).unwrap()["status"]["labels"]["tier"]
            == "gold"
    };
    assert!(
        eventually(CONVERGE, reported),
        "the heartbeat's labels were not taken"
    );
    let described = client.gwctl_ok(&["describe", "peer", "server1"]);
    assert!(described.contains("Protocol:   go"), "{described}");
    assert!(described.contains("has no catalog"), "{described}");
    let served = Exchange::Served {
        backend: "server1".into(),
    };
    assert!(eventually(CONVERGE, || talk(port, b"hello") == served));

    // Egress policy on the importing side: decided there, as for any peer.
    client.apply(&policy(
        "AccessPolicy",
        "deny-gold",
        "deny",
        "{}",
        "{matchLabels: {peer.clusterlink.net/labels.tier: gold}}",
    ));
    assert!(eventually(CONVERGE, || talk(port, b"x") == Exchange::Reset));
    client.gwctl_ok(&["delete", "policy", "deny-gold"]);
    assert!(eventually(CONVERGE, || talk(port, b"hello") == served));

    // Ingress policy on the exporting side: its refusal reaches the importer as the peer's.
    server.apply(&policy(
        "AccessPolicy",
        "deny-shop",
        "deny",
        "{matchLabels: {client.clusterlink.net/namespace: shop}}",
        "{}",
    ));
    assert!(eventually(CONVERGE, || talk(port, b"x") == Exchange::Reset));
    let events = client.gwctl_ok(&["get", "events", "--problems"]);
    let theirs =
        "the Go gateway answered 403: ingress at server1: denied by AccessPolicy default/deny-shop";
    assert!(events.contains(theirs), "{events}");
    server.gwctl_ok(&["delete", "policy", "deny-shop"]);
    assert!(eventually(CONVERGE, || talk(port, b"hello") == served));

    // A live tunnel is cut when either side withdraws its allow.
    for (gw, side) in [(&server, "ingress"), (&client, "egress")] {
        let tunnel = open_counted(port, gw, side);
        gw.gwctl_ok(&["delete", "policy", "allow-all"]);
        let cut = was_closed(tunnel);
        assert!(
            cut,
            "a Go tunnel stayed open after {side} access was revoked"
        );
        gw.apply(&allow_all("allow-all"));
        assert!(eventually(CONVERGE, || talk(port, b"hello") == served));
    }

    // explain asks the Go gateway's authorization as its dry run.
    let explained = client.gwctl_ok(&["explain", "svc", "--client", "127.0.0.1"]);
    assert!(explained.contains("which names none"), "{explained}");

    // A Peer that no longer says protocol: go has its Go tunnels cut.
    let tunnel = open_counted(port, &server, "ingress");
    server.apply(&peer("client1", &client));
    assert!(
        was_closed(tunnel),
        "a Go tunnel outlived its peer's protocol: go"
    );
}

/// A client that speaks first, refused by a source of this project's protocol, then carried by
/// a Go source: the bytes the first request took from it reach the Go source's backend, after
/// the Go tunnel's answer (a Go gateway drops what comes before it).
#[test]
fn a_clients_first_bytes_survive_a_refusal_before_a_go_source() {
    use std::io::{Read, Write};
    const CONVERGE: Duration = Duration::from_secs(10);
    let fabric = Fabric::new(&["server1", "server2", "client1"]);
    let client = fabric.start("client1");
    let go_server = fabric.start("server1");
    let native_server = fabric.start("server2");
    go_server.apply(&format!(
        "{}{}{}",
        export("svc", echo_backend("server1")),
        go_peer("client1", &client),
        allow_all("allow-all")
    ));
    // server2 exports svc but allows nothing: every request to it is refused.
    native_server.apply(&export("svc", echo_backend("server2")));
    let port = free_port();
    client.apply(&format!(
        "{}{}{}{}",
        go_peer("server1", &go_server),
        peer("server2", &native_server),
        allow_all("allow-all"),
        import("svc", port, &["server2", "server1"], "static")
    ));
    client.wait_listening("svc");
    let first_words = || {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.set_read_timeout(Some(CONVERGE)).unwrap();
        // Sent before anything is answered: the first source's request takes them.
        conn.write_all(b"early").unwrap();
        let mut answer = vec![0u8; "server1\nearly".len()];
        conn.read_exact(&mut answer).is_ok() && answer == b"server1\nearly"
    };
    assert!(eventually(CONVERGE, first_words), "{}", client.log());
    let events = client.gwctl_ok(&["get", "events", "--problems"]);
    assert!(
        events.contains("server2"),
        "server2 was never asked: {events}"
    );
}
