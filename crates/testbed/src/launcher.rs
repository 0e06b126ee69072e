//! A fabric of test certificates, and `cl-gateway` processes started from it: on free loopback
//! ports, or inside a [`Site`].

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};

use crate::netns::Site;

/// A gateway that has not printed its ready line by then will not.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The fabric CA in `dir` (made if absent) and a certificate for each of `peers`, valid 30 days.
pub fn create_fabric(dir: &Path, peers: &[&str]) -> anyhow::Result<()> {
    let fabric = dir.join(clusterlink_pki::DEFAULT_FABRIC);
    if !fabric.join(clusterlink_pki::CERT_FILE).exists() {
        clusterlink_pki::create_fabric(
            dir,
            clusterlink_pki::DEFAULT_FABRIC,
            clusterlink_pki::Validity::days(30)?,
        )?;
    }
    for peer in peers {
        if !fabric.join(peer).exists() {
            clusterlink_pki::create_peer_cert(&fabric, peer, clusterlink_pki::Validity::days(30)?)?;
        }
    }
    Ok(())
}

/// A `cl-gateway` process, on free loopback ports or inside a site; stopped when dropped.
pub struct LocalGateway {
    peer: &'static str,
    child: Child,
    management: String,
    peer_address: String,
    log: PathBuf,
}

impl Drop for LocalGateway {
    fn drop(&mut self) {
        // SIGTERM first so the gateway shuts down cleanly; kill if it does not.
        crate::terminate(&self.child);
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LocalGateway {
    /// Starts the gateway of `peer` from the fabric in `dir`, with `cl-gateway` from `bin_dir`,
    /// on loopback, and waits for its ready line. Its log goes to `<dir>/<peer>.log`.
    pub fn start(bin_dir: &Path, dir: &Path, peer: &'static str) -> anyhow::Result<LocalGateway> {
        let exe = gateway_binary(bin_dir)?;
        let mut command = Command::new(&exe);
        command.args(["--peer-address", "127.0.0.1:0"]);
        LocalGateway::spawn(command, dir, peer)
    }

    /// Starts `peer`'s gateway inside `site`, with its peer port on the site's WAN address at
    /// `peer_port` (and its management API and imports on the site's loopback), and `extra`
    /// arguments.
    pub fn start_in(
        bin_dir: &Path,
        dir: &Path,
        peer: &'static str,
        site: &Site,
        peer_port: u16,
        extra: &[&str],
    ) -> anyhow::Result<LocalGateway> {
        let exe = gateway_binary(bin_dir)?;
        // Spawned from the caller's thread: the site's processes die with that thread.
        let mut command = site.command(&exe);
        command.args([
            "--peer-address",
            &format!("{}:{peer_port}", site.address),
            "--import-address",
            "127.0.0.1",
        ]);
        command.args(extra);
        LocalGateway::spawn(command, dir, peer)
    }

    fn spawn(mut command: Command, dir: &Path, peer: &'static str) -> anyhow::Result<LocalGateway> {
        let log = dir.join(format!("{peer}.log"));
        let log_file = std::fs::File::create(&log)?;
        let mut child = command
            // The services of the tests and the demo listen on loopback.
            .args(["--peer", peer, "--management-address", "127.0.0.1:0"])
            .arg("--allow-loopback-backends")
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {:?}", command.get_program()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout of the {peer} gateway"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(READY_TIMEOUT).unwrap_or_default();
        let mut gateway = LocalGateway {
            peer,
            child,
            management: String::new(),
            peer_address: String::new(),
            log,
        };
        let ready: serde_json::Value = serde_json::from_str(&line).map_err(|_| {
            anyhow!(
                "the {peer} gateway did not start; see {}",
                gateway.log.display()
            )
        })?;
        let field = |name: &str| ready[name].as_str().unwrap_or_default().to_string();
        gateway.management = field("management");
        gateway.peer_address = field("peer_address");
        Ok(gateway)
    }

    /// The peer this gateway serves.
    pub fn peer(&self) -> &'static str {
        self.peer
    }

    /// The management API URL.
    pub fn management(&self) -> &str {
        &self.management
    }

    /// Where other gateways reach this one.
    pub fn peer_address(&self) -> &str {
        &self.peer_address
    }

    /// The gateway's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The gateway process's id, for measuring it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn gateway_binary(bin_dir: &Path) -> anyhow::Result<PathBuf> {
    let exe = bin_dir.join("cl-gateway");
    if !exe.exists() {
        bail!(
            "{} not found: build all binaries first (cargo build --release)",
            exe.display()
        );
    }
    Ok(exe)
}
