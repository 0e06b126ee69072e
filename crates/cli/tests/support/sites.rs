//! Sites as network namespaces, a gateway in each, and services that live inside sites.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use clusterlink_testbed::netns::{Site, Wan};

use super::{Exchange, Fabric, GatewayProcess};

/// Every site's gateway listens here; it is the one port a site's firewall lets in.
pub const PEER_PORT: u16 = 443;
/// A connection attempt across sites that has not completed by then was dropped by a firewall.
const CROSS_SITE_CONNECT: Duration = Duration::from_secs(2);

/// Whether namespace tests can run here. Under `CI=true` they must: anything missing (root
/// included) is a failure, never a skip. Elsewhere a test that cannot run says why on stderr and
/// passes.
pub fn can_run(test: &str, programs: &[&str]) -> bool {
    // One probe per test binary: the machine does not change between its tests.
    static AVAILABLE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let available = AVAILABLE
        .get_or_init(|| clusterlink_testbed::netns::available().map_err(|e| e.to_string()));
    let problem = match available {
        Err(e) => Some(e.clone()),
        Ok(()) => {
            let missing: Vec<&str> = programs
                .iter()
                .copied()
                .filter(|p| !clusterlink_testbed::netns::on_path(p))
                .collect();
            (!missing.is_empty()).then(|| {
                format!(
                    "{} not installed (scripts/install-test-deps.sh installs them)",
                    missing.join(", ")
                )
            })
        }
    };
    let Some(problem) = problem else {
        return true;
    };
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if ci {
        panic!("{test}: CI=true, so namespace tests must run, but: {problem}");
    }
    eprintln!("SKIPPED {test}: {problem}");
    false
}

/// Sites on a WAN with a fabric certificate each. Fields drop in order: the WAN (and every
/// process inside it) goes before the fabric's directory.
pub struct SiteBed {
    pub wan: Wan,
    pub fabric: Fabric,
}

impl SiteBed {
    pub fn new(sites: &[&str]) -> SiteBed {
        let fabric = Fabric::new(sites);
        let wan = Wan::create(sites, &[PEER_PORT]).expect("create the sites");
        SiteBed { wan, fabric }
    }

    /// [`SiteBed::new`], with the sites in `behind_nat` behind a masquerading NAT router each:
    /// they reach the others, and nothing reaches them.
    pub fn with_nat(sites: &[&str], behind_nat: &[&str]) -> SiteBed {
        let fabric = Fabric::new(sites);
        let wan = Wan::create_with_nat(sites, behind_nat, &[PEER_PORT]).expect("create the sites");
        SiteBed { wan, fabric }
    }

    pub fn site(&self, name: &str) -> &Site {
        self.wan.site(name).expect("a site of this bed")
    }

    /// The gateway of site `name`: peer port on the site's WAN address, management API and import
    /// listeners on the site's loopback, its store in the fabric directory (so a restart finds it).
    pub fn start(&self, name: &str) -> GatewayProcess {
        self.start_with(name, &[])
    }

    /// [`SiteBed::start`] with these further arguments.
    pub fn start_with(&self, name: &str, extra: &[&str]) -> GatewayProcess {
        let site = self.site(name);
        let peer_address = format!("{}:{PEER_PORT}", site.address);
        let data_dir = self.fabric.data_dir(name);
        let mut args = vec![
            "--peer",
            name,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--peer-address",
            &peer_address,
            "--management-address",
            "127.0.0.1:0",
            "--import-address",
            "127.0.0.1",
        ];
        args.extend_from_slice(extra);
        GatewayProcess::spawn_in(Some(site), self.fabric.root(), &args)
    }
}

/// A TCP service inside a site: greets each connection with `<name>\n`, then echoes everything
/// until the client half-closes, then closes. Stops (and closes every connection) when dropped.
pub struct EchoService {
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoService {
    pub fn start(site: &Site, name: &str) -> EchoService {
        let listener = site.bind("0.0.0.0:0".parse().unwrap()).unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let greeting = format!("{name}\n").into_bytes();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (mut conn, _) = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok(c) => c,
                            Err(_) => continue,
                        },
                        _ = &mut stopped => break,
                    };
                    let greeting = greeting.clone();
                    let _ = conn.set_nodelay(true);
                    tokio::spawn(async move {
                        use tokio::io::AsyncWriteExt;
                        if conn.write_all(&greeting).await.is_ok() {
                            let (mut r, mut w) = conn.split();
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                            let _ = w.shutdown().await;
                        }
                    });
                }
            });
        });
        EchoService {
            port,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for EchoService {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let _ = self.thread.take().map(|t| t.join());
    }
}

/// A conversation with an [`EchoService`] through `port` on `site`'s loopback (an import): who
/// answered, and whether `payload` came back whole after a half-close.
pub fn talk(site: &Site, port: u16, payload: &[u8]) -> Exchange {
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let conn = match site.connect(to, CROSS_SITE_CONNECT) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Exchange::Reset,
        Err(e) => return Exchange::Other(format!("connect: {e}")),
    };
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut greeting = String::new();
    match reader.read_line(&mut greeting) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Exchange::Reset,
        Err(e) => return Exchange::Other(format!("read: {e}")),
        Ok(0) => return Exchange::Other("closed without a greeting".into()),
        Ok(_) => {}
    }
    let mut writer = conn;
    if writer.write_all(payload).is_err() || writer.shutdown(std::net::Shutdown::Write).is_err() {
        return Exchange::Other("write failed".into());
    }
    let mut echo = Vec::new();
    match reader.read_to_end(&mut echo) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Exchange::Reset,
        Err(e) => Exchange::Other(format!("read: {e}")),
        Ok(_) if echo != payload => Exchange::Other(format!("bad echo of {} bytes", echo.len())),
        Ok(_) => Exchange::Served {
            backend: greeting.trim().to_string(),
        },
    }
}

/// An open conversation through an import: greeted, and echoing.
pub struct Conversation {
    pub conn: TcpStream,
    pub backend: String,
}

impl Conversation {
    pub fn open(site: &Site, port: u16) -> Conversation {
        let conn = site
            .connect(([127, 0, 0, 1], port).into(), CROSS_SITE_CONNECT)
            .unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // Request-reply traffic: without this, Nagle and delayed ACKs add 40 ms per exchange.
        conn.set_nodelay(true).unwrap();
        let mut greeting = Vec::new();
        let mut byte = [0u8];
        while byte[0] != b'\n' {
            (&conn).read_exact(&mut byte).expect("a greeting");
            greeting.push(byte[0]);
        }
        Conversation {
            conn,
            backend: String::from_utf8_lossy(&greeting).trim().to_string(),
        }
    }

    /// Whether `message` still comes back.
    pub fn echoes(&mut self, message: &[u8]) -> bool {
        let mut back = vec![0u8; message.len()];
        self.conn.write_all(message).is_ok()
            && self.conn.read_exact(&mut back).is_ok()
            && back == message
    }

    /// Whether the far end closed or reset the connection (a read timeout means it stayed open).
    pub fn is_closed(&mut self) -> bool {
        let _ = self.conn.write_all(b"anyone?");
        match self.conn.read(&mut [0u8; 64]) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
        }
    }
}

/// Whether a plain TCP connection from `from` to `to` gets through (no ClusterLink involved).
pub fn reaches(from: &Site, to: SocketAddr) -> bool {
    from.connect(to, CROSS_SITE_CONNECT).is_ok()
}

/// Writes a configuration in `dir` for an nginx (run as the test's own process, no daemon)
/// serving `dir/www` on `port` of every address; returns its path.
pub fn nginx_config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("www")).unwrap();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 512; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{ listen 0.0.0.0:{port}; root {d}/www; }}
}}
",
            d = dir.display()
        ),
    )
    .unwrap();
    conf
}

/// `count` connections from inside `site` to `port` on its loopback (an import), all open at once
/// (at most `at_once` being set up together), each greeted by `backend` ([`EchoService`]) and
/// echoing a message of its own. Returned open, so their tunnels stay up until dropped.
pub fn open_echoing(
    site: &Site,
    port: u16,
    count: usize,
    at_once: usize,
    backend: &str,
) -> Vec<TcpStream> {
    let greeting = format!("{backend}\n").into_bytes();
    site.enter(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(at_once));
            let mut opening = tokio::task::JoinSet::new();
            for i in 0..count {
                let (gate, expected) = (gate.clone(), greeting.clone());
                opening.spawn(async move {
                    let _turn = gate.acquire().await.unwrap();
                    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                    let mut greeting = vec![0u8; expected.len()];
                    conn.read_exact(&mut greeting).await?;
                    let message = format!("connection {i:04}");
                    conn.write_all(message.as_bytes()).await?;
                    let mut echo = vec![0u8; message.len()];
                    conn.read_exact(&mut echo).await?;
                    assert_eq!((greeting, echo), (expected, message.into_bytes()));
                    conn.into_std()
                });
            }
            opening
                .join_all()
                .await
                .into_iter()
                .collect::<std::io::Result<Vec<_>>>()
        })
    })
    .unwrap()
    .unwrap()
}

/// Open descriptors of a gateway process (it is root's, like the test).
pub fn open_fds(gw: &GatewayProcess) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", gw.child.id()))
        .unwrap()
        .count()
}
