//! What both demos do: say each step, make the fabric, find the binaries, read a service's
//! answer and a gateway's reason for refusing.

use std::path::{Path, PathBuf};

use clusterlink_testbed::launcher::create_fabric;
use tokio::io::AsyncReadExt;

/// Prints the heading of a step.
pub(super) fn step(title: &str) {
    println!("\n{title}");
}

/// Where `clusterlink` was started from; `cl-gateway` and `gwctl` are built beside it.
pub(super) fn bin_dir() -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default())
}

/// [`create_fabric`], saying where each peer's certificate is.
pub(super) fn create_and_show_fabric(dir: &Path, peers: &[&str]) -> anyhow::Result<()> {
    create_fabric(dir, peers)?;
    let fabric = dir.join(clusterlink_pki::DEFAULT_FABRIC);
    for peer in peers {
        let cert = fabric.join(peer).join(clusterlink_pki::CERT_FILE);
        println!("   {peer}: {}", cert.display());
    }
    Ok(())
}

/// The reason of the last refused source in a gateway's log.
pub(super) fn last_refusal(log: &Path) -> Option<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .rev()
        // The policy's refusal, not the client's reset that follows it.
        .filter(|l| l.contains("reason=\"PolicyDenied\""))
        .find_map(|l| {
            l.split_once("connection refused: ")
                .map(|(_, r)| r.to_string())
        })
        // The log line goes on with its structured fields; the reason is what comes first.
        .map(|r| r.split(" side=").next().unwrap_or_default().to_string())
}

/// How a failed connection reads in the demo's output.
pub(super) fn describe_failure(e: std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset => "connection reset".to_string(),
        _ => e.to_string(),
    }
}

/// Reads a service's one-line answer; a reset or an empty close is the error.
pub(super) async fn read_reply(mut conn: tokio::net::TcpStream) -> Result<String, String> {
    let mut reply = String::new();
    conn.read_to_string(&mut reply)
        .await
        .map_err(describe_failure)?;
    if reply.is_empty() {
        Err("closed without an answer".into())
    } else {
        Ok(reply.trim().to_string())
    }
}
