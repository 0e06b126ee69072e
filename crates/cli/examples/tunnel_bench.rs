//! First data-path benchmark: direct TCP against two gateways with the full two-sided policy path,
//! on this machine's loopback, in the same run. Run it with `scripts/bench-tunnel.sh`.
//!
//! Figures: bulk throughput on one connection, new connections per second at concurrency 8
//! (connect, send a byte, read the echo, close), and connect-to-echo latency at concurrency 1.
//! Each figure is the median of several rounds; ratios are computed within a round.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clusterlink::client::Client;
use clusterlink::context::Context;
use clusterlink::demo::LocalGateway;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes per throughput sample: long enough to dwarf connection setup.
const BULK_BYTES: u64 = 2 * 1024 * 1024 * 1024;
const WRITE_CHUNK: usize = 256 * 1024;
const CONNS_DURATION: Duration = Duration::from_secs(3);
const LATENCY_SAMPLES: usize = 2000;
const ROUNDS: usize = 3;

async fn apply(gw: &LocalGateway, path: &str, body: String) -> anyhow::Result<()> {
    let mut client = Client::new(&Context {
        server: gw.management().to_string(),
        ..Default::default()
    })?;
    let reply = client
        .request(Method::PUT, path, Some(body.into_bytes()))
        .await?;
    if !reply.status.is_success() {
        bail!("{path}: {}", reply.error_message());
    }
    Ok(())
}

/// Discards everything, then acknowledges with one byte once the sender half-closed.
async fn sink() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; WRITE_CHUNK];
                while matches!(c.read(&mut buf).await, Ok(n) if n > 0) {}
                let _ = c.write_all(b"k").await;
            });
        }
    });
    Ok(port)
}

/// Echoes one byte and closes.
async fn echo() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                if c.read_exact(&mut b).await.is_ok() {
                    let _ = c.write_all(&b).await;
                }
            });
        }
    });
    Ok(port)
}

async fn throughput_gbits(port: u16) -> anyhow::Result<f64> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).await?;
    c.set_nodelay(true)?;
    let chunk = vec![7u8; WRITE_CHUNK];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < BULK_BYTES {
        c.write_all(&chunk).await?;
        sent += WRITE_CHUNK as u64;
    }
    c.shutdown().await?;
    let mut ack = [0u8; 1];
    c.read_exact(&mut ack).await.context("no acknowledgement")?;
    Ok(sent as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9)
}

async fn one_exchange(port: u16) -> anyhow::Result<()> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).await?;
    c.set_nodelay(true)?;
    c.write_all(b"x").await?;
    let mut b = [0u8; 1];
    c.read_exact(&mut b).await?;
    Ok(())
}

async fn conns_per_second(port: u16, concurrency: usize) -> anyhow::Result<f64> {
    let deadline = Instant::now() + CONNS_DURATION;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    one_exchange(port).await?;
                    n += 1;
                }
                anyhow::Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / CONNS_DURATION.as_secs_f64())
}

async fn latency_p50_ms(port: u16) -> anyhow::Result<(f64, f64)> {
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for _ in 0..LATENCY_SAMPLES {
        let start = Instant::now();
        one_exchange(port).await?;
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    Ok((
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    ))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[derive(Default)]
struct Figures {
    gbits: Vec<f64>,
    conns: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
}

async fn measure(f: &mut Figures, sink: u16, echo: u16) -> anyhow::Result<()> {
    f.gbits.push(throughput_gbits(sink).await?);
    f.conns.push(conns_per_second(echo, 8).await?);
    let (p50, p99) = latency_p50_ms(echo).await?;
    f.p50.push(p50);
    f.p99.push(p99);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bin = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(PathBuf::from)
        .context("no target dir")?;
    let dir = tempfile::tempdir()?;
    for args in [
        vec!["create", "fabric"],
        vec!["create", "peer-cert", "--name", "server1"],
        vec!["create", "peer-cert", "--name", "client1"],
    ] {
        let o = Command::new(bin.join("clusterlink"))
            .args(&args)
            .current_dir(dir.path())
            .output()?;
        if !o.status.success() {
            bail!(
                "clusterlink {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    let server = LocalGateway::start(&bin, dir.path(), "server1")?;
    let client = LocalGateway::start(&bin, dir.path(), "client1")?;
    let (sink, echo) = (sink().await?, echo().await?);
    let api = "/apis/clusterlink.net/v1alpha1";
    let allow = clusterlink::demo::ALLOW_ALL;
    for (name, port) in [("sink", sink), ("echo", echo)] {
        apply(&server, &format!("{api}/namespaces/default/exports/{name}"), format!("apiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {{name: {name}, namespace: default}}\nspec: {{host: 127.0.0.1, port: {port}}}\n")).await?;
    }
    apply(
        &server,
        &format!("{api}/namespaces/default/accesspolicies/allow-all"),
        allow.into(),
    )
    .await?;
    apply(
        &client,
        &format!("{api}/namespaces/default/accesspolicies/allow-all"),
        allow.into(),
    )
    .await?;
    let (host, port) = server.peer_address().rsplit_once(':').unwrap();
    apply(&client, &format!("{api}/peers/server1"), format!("apiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {{name: server1}}\nspec: {{gateways: [{{host: '{host}', port: {port}}}]}}\n")).await?;
    let mut imported = Vec::new();
    for name in ["sink", "echo"] {
        let local = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let applied = Instant::now();
        apply(&client, &format!("{api}/namespaces/default/imports/{name}"), format!("apiVersion: clusterlink.net/v1alpha1\nkind: Import\nmetadata: {{name: {name}, namespace: default}}\nspec: {{port: {local}, sources: [{{peer: server1, exportName: {name}, exportNamespace: default}}]}}\n")).await?;
        while TcpStream::connect(("127.0.0.1", local)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        println!(
            "import {name}: listening {:.1} ms after the apply was acknowledged",
            applied.elapsed().as_secs_f64() * 1000.0
        );
        imported.push(local);
    }
    // Wait until a tunnel works end to end.
    while one_exchange(imported[1]).await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let (mut direct, mut tunnel) = (Figures::default(), Figures::default());
    let mut ratios = Figures::default();
    for round in 0..ROUNDS {
        // Alternate which path goes first so drift on a shared machine does not favour one.
        let (d, t) = if round % 2 == 0 {
            measure(&mut direct, sink, echo).await?;
            measure(&mut tunnel, imported[0], imported[1]).await?;
            (direct.gbits.len() - 1, tunnel.gbits.len() - 1)
        } else {
            measure(&mut tunnel, imported[0], imported[1]).await?;
            measure(&mut direct, sink, echo).await?;
            (direct.gbits.len() - 1, tunnel.gbits.len() - 1)
        };
        ratios.gbits.push(tunnel.gbits[t] / direct.gbits[d]);
        ratios.conns.push(tunnel.conns[t] / direct.conns[d]);
        ratios.p50.push(tunnel.p50[t] / direct.p50[d]);
        eprintln!("round {} done", round + 1);
    }
    println!(
        "\nmedians of {ROUNDS} rounds (2 GiB per throughput sample; {}s of connections at c=8; {LATENCY_SAMPLES} connects at c=1)",
        CONNS_DURATION.as_secs()
    );
    println!(
        "{:<28}{:>14}{:>16}{:>18}{:>14}",
        "path", "Gbit/s (P1)", "conns/s (c=8)", "connect p50 (ms)", "p99 (ms)"
    );
    for (name, f) in [
        ("direct TCP", &direct),
        ("two gateways, mTLS+policy", &tunnel),
    ] {
        println!(
            "{name:<28}{:>14.2}{:>16.0}{:>18.3}{:>14.3}",
            median(f.gbits.clone()),
            median(f.conns.clone()),
            median(f.p50.clone()),
            median(f.p99.clone())
        );
    }
    println!(
        "{:<28}{:>14.3}{:>16.3}{:>18.2}",
        "ratio (gateways / direct)",
        median(ratios.gbits),
        median(ratios.conns),
        median(ratios.p50)
    );
    Ok(())
}
