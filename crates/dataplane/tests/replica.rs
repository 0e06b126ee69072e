//! The snapshot stream from a control plane to a data-plane replica, over real mutual TLS on
//! real sockets: the replica follows every change, keeps its last snapshot while the control
//! plane is away, converges again when it returns, and no other peer can read the stream. The
//! control plane's side is a watch of objects, as its model publishes them.

use std::sync::Arc;
use std::time::Duration;

use clusterlink_api::clients::ClientHosts;
use clusterlink_api::{Kind, Object, ObjectKey, Objects};
use clusterlink_dataplane::replica;
use clusterlink_pki::reload::GatewayTls;
use clusterlink_pki::tls::{Credentials, TlsFiles};
use clusterlink_pki::{Validity, create_fabric, create_peer_cert};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

/// A bound on each wait, not a readiness delay: every wait below ends on an event.
const PATIENCE: Duration = Duration::from_secs(20);

fn fabric_with(dir: &std::path::Path, peers: &[&str]) -> std::path::PathBuf {
    create_fabric(dir, "fab", Validity::days(30).unwrap()).unwrap();
    let fabric = dir.join("fab");
    for peer in peers {
        create_peer_cert(&fabric, peer, Validity::days(30).unwrap()).unwrap();
    }
    fabric
}

fn tls_of(fabric: &std::path::Path, peer: &str) -> watch::Receiver<Arc<GatewayTls>> {
    let credentials = Credentials::load(&TlsFiles::in_fabric(fabric, &fabric.join(peer))).unwrap();
    watch::channel(Arc::new(GatewayTls::new(&credentials).unwrap())).1
}

fn object(yaml: &str) -> Object {
    clusterlink_api::parse_manifest(yaml, "default").unwrap()
}

const PEER: &str = "{apiVersion: clusterlink.net/v1alpha1, kind: Peer, metadata: {name: server2, namespace: clusterlink-system}, spec: {gateways: [{host: 10.0.0.2, port: 443}]}}";
const EXPORT: &str = "{apiVersion: clusterlink.net/v1alpha1, kind: Export, metadata: {name: reviews, namespace: shop}, spec: {host: reviews.shop.svc, port: 9080}}";

fn keys(objects: &Objects) -> Vec<ObjectKey> {
    objects.keys().cloned().collect()
}

/// Waits until the replica's objects satisfy `done`.
async fn until(replica: &watch::Receiver<Arc<Objects>>, done: impl Fn(&Objects) -> bool) {
    let mut rx = replica.clone();
    let converged = tokio::time::timeout(PATIENCE, async {
        while !done(&rx.borrow_and_update()) {
            rx.changed().await.unwrap();
        }
    })
    .await;
    assert!(
        converged.is_ok(),
        "replica never converged; it holds {:?}",
        keys(&replica.borrow())
    );
}

/// A control plane's objects: applied and deleted through the sender, served from receivers.
fn model(yaml: &[&str]) -> watch::Sender<Arc<Objects>> {
    let objects = yaml
        .iter()
        .map(|y| object(y))
        .map(|o| (o.key(), o))
        .collect();
    watch::channel(Arc::new(objects)).0
}

fn apply(model: &watch::Sender<Arc<Objects>>, yaml: &str) {
    let obj = object(yaml);
    model.send_modify(|objects| {
        Arc::make_mut(objects).insert(obj.key(), obj);
    });
}

fn delete(model: &watch::Sender<Arc<Objects>>, key: &ObjectKey) {
    model.send_modify(|objects| {
        Arc::make_mut(objects).remove(key);
    });
}

fn start_server(
    listener: TcpListener,
    tls: watch::Receiver<Arc<GatewayTls>>,
    control_plane: &watch::Sender<Arc<Objects>>,
    hosts: watch::Receiver<Arc<ClientHosts>>,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(replica::serve(
        listener,
        "server1".into(),
        tls,
        control_plane.subscribe(),
        hosts,
        Default::default(),
        shutdown,
    ));
    (stop, task)
}

#[tokio::test]
async fn a_replica_follows_keeps_its_last_snapshot_and_converges_again() {
    let dir = tempfile::tempdir().unwrap();
    let fabric = fabric_with(dir.path(), &["server1"]);
    let tls = tls_of(&fabric, "server1");

    let control_plane = model(&[PEER]);
    let mut hosts = ClientHosts::default();
    let web = [("app".to_string(), "web".to_string())].into();
    hosts.insert(
        "10.244.0.5".parse().unwrap(),
        "shop".into(),
        "web".into(),
        web,
    );
    let (hosts_tx, hosts_rx) = watch::channel(Arc::new(hosts.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop_server, server) = start_server(listener, tls.clone(), &control_plane, hosts_rx);

    let (replica_objects_tx, replica_objects) = watch::channel(Arc::<Objects>::default());
    let (replica_hosts_tx, mut replica_hosts) = watch::channel(Arc::<ClientHosts>::default());
    let (_stop_replica, replica_shutdown) = watch::channel(false);
    let (first_applied, first_snapshot) = oneshot::channel();
    tokio::spawn(replica::follow(
        address.to_string(),
        "server1".into(),
        tls.clone(),
        replica_objects_tx,
        replica_hosts_tx,
        first_applied,
        replica_shutdown,
    ));

    let peer_key = ObjectKey::new(Kind::Peer, "clusterlink-system", "server2");
    let export_key = ObjectKey::new(Kind::Export, "shop", "reviews");
    tokio::time::timeout(PATIENCE, first_snapshot)
        .await
        .expect("the first snapshot arrives")
        .unwrap();
    assert!(
        replica_objects.borrow().contains_key(&peer_key),
        "announced only once it is published"
    );
    let same_hosts = tokio::time::timeout(PATIENCE, replica_hosts.wait_for(|h| **h == hosts));
    assert!(same_hosts.await.is_ok(), "the client hosts never arrived");

    // Changes follow: an export added, the peer deleted, a pod gone.
    apply(&control_plane, EXPORT);
    delete(&control_plane, &peer_key);
    until(&replica_objects, |o| keys(o) == [export_key.clone()]).await;
    hosts_tx.send_replace(Arc::default());
    let emptied = tokio::time::timeout(PATIENCE, replica_hosts.wait_for(|h| h.is_empty()));
    assert!(emptied.await.is_ok(), "the removed pod stayed");

    // The control plane goes away. Its port is taken by a listener that accepts and says
    // nothing: once the replica knocks there, it has seen the stream end.
    stop_server.send(true).unwrap();
    server.await.unwrap();
    let silent = TcpListener::bind(address).await.unwrap();
    let (knock, _) = tokio::time::timeout(PATIENCE, silent.accept())
        .await
        .expect("the replica reconnects")
        .unwrap();
    assert_eq!(
        keys(&replica_objects.borrow()),
        [export_key],
        "the last snapshot stays in force"
    );
    drop(knock);

    // A control plane (restarted, with other state) serves again on the same address.
    let restarted = model(&[PEER]);
    let (_stop, _server) = start_server(silent, tls, &restarted, watch::channel(Arc::default()).1);
    until(&replica_objects, |o| keys(o) == [peer_key.clone()]).await;
}

#[tokio::test]
async fn another_peer_cannot_read_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let fabric = fabric_with(dir.path(), &["server1", "intruder"]);
    let control_plane = model(&[PEER]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let hosts = watch::channel(Arc::default()).1;
    let (_stop, _server) =
        start_server(listener, tls_of(&fabric, "server1"), &control_plane, hosts);

    // A valid certificate of the same fabric, but of another peer: it verifies the server's name
    // "server1" fine, and the server closes without sending a byte of configuration.
    let intruder = tls_of(&fabric, "intruder");
    let connector = tokio_rustls::TlsConnector::from(intruder.borrow().client.clone());
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("server1").unwrap();
    let mut received = Vec::new();
    // TLS 1.3 may finish the client side before the server has checked the client certificate,
    // so the refusal shows as a failed handshake or as a stream that ends; never as data.
    if let Ok(mut stream) = connector.connect(name, tcp).await {
        let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut received)).await;
        assert!(read.is_ok(), "the server neither closed nor refused");
    }
    assert!(
        received.is_empty(),
        "the intruder received {} bytes",
        received.len()
    );

    // The same exchange with this peer's own certificate does carry a snapshot.
    let own = tls_of(&fabric, "server1");
    let connector = tokio_rustls::TlsConnector::from(own.borrow().client.clone());
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("server1").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    let len = stream.read_u32().await.unwrap();
    assert!(len > 0 && len <= replica::MAX_SNAPSHOT_BYTES);
}

#[tokio::test]
async fn strangers_cannot_crowd_replicas_out_of_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let fabric = fabric_with(dir.path(), &["server1"]);
    let tls = tls_of(&fabric, "server1");
    let control_plane = model(&[PEER]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (_hosts_tx, hosts_rx) = watch::channel(Arc::<ClientHosts>::default());
    let (_stop, _server) = start_server(listener, tls.clone(), &control_plane, hosts_rx);

    // Another address of the replicas' own network opens far more connections than one network
    // may hold, and sends nothing: beyond its share, the oldest are closed at once.
    let share = clusterlink_dataplane::Limits::DEFAULT.replicas.per_source;
    let mut strangers = Vec::new();
    for _ in 0..share + 40 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        strangers.push(socket.connect(address).await.unwrap());
    }
    // One deadline for all, well before the handshake timeout would close the others too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut closed = 0;
    for stranger in &mut strangers {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout_at(deadline, stranger.read(&mut byte));
        if matches!(read.await, Ok(Ok(0) | Err(_))) {
            closed += 1;
        }
    }
    assert!(closed >= 30, "only {closed} of {} closed", strangers.len());

    // A replica on the same network still connects (a silent stranger makes room) and receives
    // the configuration.
    let (objects_tx, _objects) = watch::channel(Arc::<Objects>::default());
    let (hosts_tx, _hosts) = watch::channel(Arc::<ClientHosts>::default());
    let (_stop_replica, shutdown) = watch::channel(false);
    let (first_applied, first_snapshot) = oneshot::channel();
    tokio::spawn(replica::follow(
        address.to_string(),
        "server1".into(),
        tls,
        objects_tx,
        hosts_tx,
        first_applied,
        shutdown,
    ));
    let arrived = tokio::time::timeout(PATIENCE, first_snapshot).await;
    assert!(matches!(arrived, Ok(Ok(()))), "the replica got no snapshot");
    drop(strangers);
}

/// A control plane that vanished without a reset (its node lost, its link cut) looks, from the
/// replica, like a stream that says nothing. Heartbeats keep a quiet stream alive; silence beyond
/// the limit makes the replica reconnect.
#[tokio::test]
async fn a_replica_reconnects_when_the_stream_falls_silent_but_not_while_heartbeats_come() {
    use tokio::io::AsyncWriteExt as _;
    let limits = clusterlink_dataplane::limits::Limits::DEFAULT;
    let dir = tempfile::tempdir().unwrap();
    let fabric = fabric_with(dir.path(), &["server1"]);
    let tls = tls_of(&fabric, "server1");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();

    let (objects_tx, _objects) = watch::channel(Arc::<Objects>::default());
    let (hosts_tx, _hosts) = watch::channel(Arc::<ClientHosts>::default());
    let (_stop_replica, shutdown) = watch::channel(false);
    let (first_applied, first_snapshot) = oneshot::channel();
    tokio::spawn(replica::follow(
        address.to_string(),
        "server1".into(),
        tls.clone(),
        objects_tx,
        hosts_tx,
        first_applied,
        shutdown,
    ));

    // A control plane written by hand, speaking the stream's framing: one snapshot, then
    // heartbeats (zero-length frames) for longer than the silence limit, then nothing at all.
    let (tcp, _) = tokio::time::timeout(PATIENCE, listener.accept())
        .await
        .expect("the replica connects")
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.borrow().management.clone());
    let mut stream = acceptor.accept(tcp).await.unwrap();
    let body = serde_json::to_vec(&replica::ReplicaSnapshot::default()).unwrap();
    stream
        .write_all(&(body.len() as u32).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&body).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::timeout(PATIENCE, first_snapshot)
        .await
        .expect("the first snapshot is applied")
        .unwrap();

    let heartbeats_until = tokio::time::Instant::now() + limits.replica_silence * 3 / 2;
    while tokio::time::Instant::now() < heartbeats_until {
        stream.write_all(&0u32.to_be_bytes()).await.unwrap();
        stream.flush().await.unwrap();
        let reconnect = tokio::time::timeout(limits.replica_heartbeat, listener.accept()).await;
        assert!(
            reconnect.is_err(),
            "the replica dropped a stream that sent heartbeats"
        );
    }

    // Silence, with the connection still open: the replica must give up on it and knock again.
    let again = tokio::time::timeout(PATIENCE, listener.accept()).await;
    assert!(
        again.is_ok(),
        "the replica stayed on a silent stream for {PATIENCE:?}"
    );
    drop(stream);
}
