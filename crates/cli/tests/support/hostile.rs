//! Attackers for the attack tests: strangers that open connections and say nothing, and peers of
//! the fabric (with real certificates) that speak the tunnel protocol by hand, as a broken or
//! hostile gateway would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use clusterlink_dataplane::tunnel::{PeerRequest, TunnelRequest, health_response, read_head};
use clusterlink_pki::tls::{
    Credentials, PEER_ALPN, TlsFiles, mutual_client_config, mutual_server_config,
};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;

use super::Fabric;

/// Source addresses in `networks` different /24s of loopback (127.N.0.1), as many attackers or
/// one attacker with many networks would have.
pub fn networks(networks: u8) -> Vec<String> {
    (1..=networks).map(|n| format!("127.{n}.0.1")).collect()
}

/// A connection from `source` to `destination`, opened and left silent.
pub fn silent_connection(source: &str, destination: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    let source: std::net::IpAddr = source.parse().unwrap();
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&destination.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// `count` silent connections to `destination`, taking the `sources` in turn.
pub fn silent_flood(sources: &[String], destination: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count)
        .filter_map(|i| silent_connection(&sources[i % sources.len()], destination).ok())
        .collect()
}

/// Whether the far end has closed `s` (end of file or reset), without waiting.
pub fn is_closed(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let closed = match (&*s).read(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

/// A gateway of the fabric's peer `name`, played by hand: it connects to a peer port with the
/// peer's real certificate and the tunnel protocol, and sends whatever it is told.
pub struct HandPlayedPeer {
    config: Arc<rustls::ClientConfig>,
}

pub type PeerStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

impl HandPlayedPeer {
    pub fn new(fabric: &Fabric, name: &str) -> HandPlayedPeer {
        let dir = fabric.fabric_dir();
        let creds = Credentials::load(&TlsFiles::in_fabric(&dir, &dir.join(name))).unwrap();
        let mut config = mutual_client_config(&creds).unwrap();
        config.alpn_protocols = vec![PEER_ALPN.to_vec()];
        HandPlayedPeer {
            config: Arc::new(config),
        }
    }

    /// A mutual-TLS connection to the gateway of `peer` at `address`.
    pub fn connect(&self, address: &str, peer: &str) -> PeerStream {
        let tcp = TcpStream::connect(address).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let name = ServerName::try_from(peer.to_string()).unwrap();
        let connection = rustls::ClientConnection::new(self.config.clone(), name).unwrap();
        let mut stream = rustls::StreamOwned::new(connection, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).unwrap();
        }
        stream
    }

    /// Sends `head` on a new connection and reads the answer's head; the connection stays open
    /// (an accepted tunnel is then relayed on it).
    pub fn ask(&self, address: &str, peer: &str, head: &[u8]) -> (PeerStream, String) {
        let mut stream = self.connect(address, peer);
        stream.write_all(head).unwrap();
        stream.flush().unwrap();
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => answer.push(byte[0]),
                _ => break,
            }
        }
        (stream, String::from_utf8_lossy(&answer).into_owned())
    }
}

/// A gateway of the fabric's peer `name` played by the test: `serve` runs on a thread of its
/// own with a loopback listener and a TLS acceptor holding the peer's certificate (and the
/// tunnel protocol's ALPN). Its address.
pub fn scripted_gateway<F, Fut>(fabric: &Fabric, name: &str, serve: F) -> String
where
    F: FnOnce(tokio::net::TcpListener, tokio_rustls::TlsAcceptor) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let dir = fabric.fabric_dir();
    let creds = Credentials::load(&TlsFiles::in_fabric(&dir, &dir.join(name))).unwrap();
    let mut config = mutual_server_config(&creds).unwrap();
    config.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            serve(listener, acceptor).await
        });
    });
    address
}

/// A gateway of the fabric's peer `name` that answers health probes as any gateway does, and
/// every tunnel request (dry runs included) with `answer(request)`, bytes as they go on the
/// wire: what a hostile exporting gateway says to the gateways that import from it.
pub struct HostileExporter {
    pub address: String,
}

impl HostileExporter {
    pub fn start(
        fabric: &Fabric,
        name: &str,
        answer: impl Fn(&TunnelRequest) -> Vec<u8> + Send + Sync + 'static,
    ) -> HostileExporter {
        let answer = Arc::new(answer);
        let address = scripted_gateway(fabric, name, move |listener, acceptor| async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, answer) = (acceptor.clone(), answer.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    while let Ok((head, _)) = read_head(&mut tls).await {
                        match PeerRequest::decode(&head) {
                            Ok(PeerRequest::Health) => {
                                let ok = health_response(&Default::default());
                                if tls.write_all(&ok).await.is_err() {
                                    return;
                                }
                            }
                            Ok(PeerRequest::Tunnel(request)) => {
                                let _ = tls.write_all(&answer(&request)).await;
                                let _ = tls.shutdown().await;
                                return;
                            }
                            // It holds no revocation lists, and asks for none.
                            Ok(PeerRequest::Revocations { .. } | PeerRequest::Catalog) | Err(_) => {
                                return;
                            }
                        }
                    }
                });
            }
        });
        HostileExporter { address }
    }

    /// The Peer object that names this gateway.
    pub fn peer_manifest(&self, name: &str) -> String {
        let (host, port) = self.address.rsplit_once(':').unwrap();
        format!(
            "---\napiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {{name: {name}}}\nspec: {{gateways: [{{host: '{host}', port: {port}}}]}}\n"
        )
    }
}
