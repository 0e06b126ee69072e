//! What a gateway sends a peer, seen by a scripted gateway of that peer: a client's first bytes
//! travel with the tunnel request and are never delivered twice, and health probes reuse their
//! connection. A real importing gateway, a real exporting gateway, and the scripted one.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use clusterlink_dataplane::tunnel::{
    PeerRequest, RefusalReason, TunnelResponse, health_response, read_head,
};
use support::hostile::scripted_gateway;
use support::manifests::{allow_all, export, import};
use support::{Backend, Fabric, GatewayProcess, free_port, metric, metric_with, reachable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// How long the scripted gateway waits for the frame that should have come with a request:
/// generous, since only a broken gateway makes it wait at all.
const FIRST_FRAME_WAIT: Duration = Duration::from_secs(10);

/// What the scripted gateway does with a tunnel request once it has reported it.
#[derive(Clone, Copy)]
enum Answer {
    Refuse,
    /// Close the connection without a word, as a gateway that crashed would.
    Vanish,
}

/// A gateway of `server9`, driven by the test. It answers health probes like any gateway. Each
/// tunnel request is reported with the bytes of the first frame that came with it (empty if
/// none did), then answered as told. While `gate` is shut, connections wait before their TLS
/// handshake, so the test can have a client send before the importing gateway's request goes out.
struct ScriptedPeer {
    address: String,
    gate: watch::Sender<bool>,
    requests: mpsc::Receiver<Vec<u8>>,
    /// Health probes answered, and connections that carried them.
    probes: Arc<AtomicUsize>,
    probe_connections: Arc<AtomicUsize>,
}

impl ScriptedPeer {
    fn start(fabric: &Fabric, answer: Answer) -> ScriptedPeer {
        let (gate, open) = watch::channel(true);
        let (report, requests) = mpsc::channel();
        let probes = Arc::new(AtomicUsize::new(0));
        let probe_connections = Arc::new(AtomicUsize::new(0));
        let counters = (probes.clone(), probe_connections.clone());
        let address = scripted_gateway(fabric, "server9", move |listener, acceptor| async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, mut open, report) = (acceptor.clone(), open.clone(), report.clone());
                let (probes, probe_connections) = counters.clone();
                tokio::spawn(async move {
                    let _ = open.wait_for(|open| *open).await;
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok((mut head, mut rest)) = read_head(&mut tls).await else {
                        return;
                    };
                    // Health probes come one after another on a connection, as long as it
                    // is answered: a gateway keeps its probe connections.
                    if PeerRequest::decode(&head).is_ok_and(|r| r == PeerRequest::Health) {
                        probe_connections.fetch_add(1, Ordering::Relaxed);
                        loop {
                            probes.fetch_add(1, Ordering::Relaxed);
                            let answer = health_response(&Default::default());
                            if tls.write_all(&answer).await.is_err() {
                                return;
                            }
                            match read_head(&mut tls).await {
                                Ok((next, more)) => (head, rest) = (next, more),
                                Err(_) => return,
                            }
                            if PeerRequest::decode(&head).ok() != Some(PeerRequest::Health) {
                                break;
                            }
                        }
                    }
                    match PeerRequest::decode(&head) {
                        Ok(PeerRequest::Health) => unreachable!("answered above"),
                        // gwctl asks each source of an import it writes.
                        Ok(PeerRequest::Tunnel(r)) if r.dry_run => {
                            let policy = "scripted".to_string();
                            let verdict = TunnelResponse::WouldAllow { policy };
                            let _ = tls.write_all(&verdict.encode()).await;
                            let _ = tls.shutdown().await;
                        }
                        Ok(PeerRequest::Tunnel(_)) => {
                            let frame = first_frame(&mut tls, &mut rest).await;
                            let _ = report.send(frame);
                            if let Answer::Refuse = answer {
                                let refusal = TunnelResponse::Refused {
                                    reason: RefusalReason::PolicyDenied,
                                    message: "scripted refusal".into(),
                                    policy: None,
                                };
                                let _ = tls.write_all(&refusal.encode()).await;
                                let _ = tls.shutdown().await;
                            }
                        }
                        // It holds no revocation lists, and takes none.
                        Ok(PeerRequest::Revocations { .. } | PeerRequest::Catalog) | Err(_) => {}
                    }
                });
            }
        });
        ScriptedPeer {
            address,
            gate,
            requests,
            probes,
            probe_connections,
        }
    }

    fn peer_manifest(&self) -> String {
        let (host, port) = self.address.rsplit_once(':').unwrap();
        format!(
            "---\napiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {{name: server9}}\nspec: {{gateways: [{{host: '{host}', port: {port}}}]}}\n"
        )
    }

    /// The first frame of the next tunnel request.
    fn next_request(&self) -> Vec<u8> {
        self.requests
            .recv_timeout(Duration::from_secs(30))
            .expect("the importing gateway sent no tunnel request to server9")
    }
}

/// The bytes of the first frame after a request head, from what came with the head and what
/// follows without an answer. Empty if none arrives within [`FIRST_FRAME_WAIT`].
async fn first_frame<S: tokio::io::AsyncRead + Unpin>(tls: &mut S, rest: &mut Vec<u8>) -> Vec<u8> {
    let complete = |rest: &[u8]| {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        rest.get(4..4 + len).map(<[u8]>::to_vec)
    };
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(frame) = complete(rest) {
            return frame;
        }
        match tokio::time::timeout(FIRST_FRAME_WAIT, tls.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => rest.extend_from_slice(&chunk[..n]),
            _ => return Vec::new(),
        }
    }
}

/// client1 imports `svc` from server9 (scripted) first, then server1 (a real gateway whose backend
/// echoes what it got, after its name and the byte count).
struct Sites {
    _fabric: Fabric,
    _server: GatewayProcess,
    client: GatewayProcess,
    scripted: ScriptedPeer,
    port: u16,
}

fn sites(answer: Answer) -> Sites {
    let fabric = Fabric::new(&["server1", "server9", "client1"]);
    let server = fabric.start("server1");
    server.apply(&export("svc", Backend::start("server1").port));
    server.apply(&allow_all("allow-all"));
    let client = fabric.start("client1");
    let scripted = ScriptedPeer::start(&fabric, answer);
    client.apply(&support::manifests::peer("server1", &server));
    client.apply(&scripted.peer_manifest());
    client.apply(&allow_all("allow-all"));
    let port = free_port();
    client.apply(&import("svc", port, &["server9", "server1"], "static"));
    client.wait_listening("svc");
    // Until server9 is probed, it is tried last: the test needs it first.
    assert!(support::eventually(Duration::from_secs(20), || reachable(
        &client, "server9"
    ) == "True"));
    Sites {
        _fabric: fabric,
        _server: server,
        client,
        scripted,
        port,
    }
}

/// Connects, and sends `bytes` while server9's gateway holds its handshakes: they are in the
/// importing gateway's socket before its tunnel request can go out.
fn connect_and_send(s: &Sites, bytes: &[u8]) -> std::net::TcpStream {
    use std::io::Write;
    s.scripted.gate.send_replace(false);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    s.scripted.gate.send_replace(true);
    stream
}

#[test]
fn first_bytes_go_with_the_request_and_a_refusal_passes_them_to_the_next_source_once() {
    use std::io::{Read, Write};
    let s = sites(Answer::Refuse);
    let mut stream = connect_and_send(&s, b"hello");
    assert_eq!(s.scripted.next_request(), b"hello");
    stream.write_all(b" world").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    // server1's backend got the first bytes once, then the rest.
    assert_eq!(answer, "server1 11\nhello world");
    let sent = metric(
        &s.client,
        "clusterlink_import_bytes_total{name=\"default/svc\",direction=\"sent\"}",
    );
    assert_eq!(sent, 11.0, "the first bytes are counted once");
}

#[test]
fn a_request_that_carried_first_bytes_and_got_no_answer_is_not_retried_elsewhere() {
    use std::io::Read;
    let s = sites(Answer::Vanish);
    let mut stream = connect_and_send(&s, b"charge card 42");
    assert_eq!(s.scripted.next_request(), b"charge card 42");
    // server1 would have served it: a reset shows the gateway did not try it.
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "expected a reset, got {read:?} and {answer:?}"
    );
    let refused = metric_with(
        &s.client,
        "clusterlink_connections_refused_total",
        &[
            ("side", "egress"),
            ("reason", "PeerUnreachable"),
            ("peer", "server9"),
        ],
    );
    assert_eq!(refused, 1.0);
    let events = s
        .client
        .gwctl_ok(&["get", "events", "--import", "svc", "--problems"]);
    assert!(events.contains("cannot arrive twice"), "{events}");
}

#[test]
fn health_probes_reuse_their_connection() {
    let s = sites(Answer::Refuse);
    let probed = |n| s.scripted.probes.load(Ordering::Relaxed) >= n;
    let before = s.scripted.probes.load(Ordering::Relaxed);
    // Probes come every half second while the peer is reachable.
    assert!(support::eventually(Duration::from_secs(20), || probed(
        before + 6
    )));
    // The gateway renews its probe connection only after 20 s, or after a probe fails (a slow
    // answer on a loaded machine): far fewer connections than probes, where a connection per
    // probe would make them equal.
    let probes = s.scripted.probes.load(Ordering::Relaxed);
    let connections = s.scripted.probe_connections.load(Ordering::Relaxed);
    assert!(
        connections * 3 <= probes,
        "{connections} connections for {probes} probes"
    );
}
