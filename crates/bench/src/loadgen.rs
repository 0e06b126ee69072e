//! The Rust load generator and the two small backends it talks to through each path.
//!
//! A connection here is what a short-lived client does: connect, send a few bytes, read the echo,
//! close. Its latency runs from the start of the connect to the last echoed byte, so it includes
//! every hop's connection setup (and, through a gateway pair, its tunnel setup).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes each connection sends and expects back: "a few bytes", less than one TCP segment.
const MESSAGE: &[u8] = b"clusterlink-bench ping 0123456789abcdef0123456789abcdef";
/// A connection slower than this has hung (a proxy refused or stalled); the run fails loudly.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Echoes whatever a connection sends until the client closes.
pub async fn echo_backend() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = conn.set_nodelay(true);
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

/// Accepts connections and holds them open until the client closes; counts how many it holds.
pub struct HoldBackend {
    pub addr: SocketAddr,
    held: Arc<AtomicUsize>,
}

impl HoldBackend {
    pub async fn start() -> anyhow::Result<HoldBackend> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let held = Arc::new(AtomicUsize::new(0));
        let counter = held.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let counter = counter.clone();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut byte = [0u8; 1];
                    while matches!(conn.read(&mut byte).await, Ok(n) if n > 0) {}
                    counter.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(HoldBackend { addr, held })
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }
}

/// One short-lived connection through `front`; returns how long its TCP connect took.
pub async fn exchange(front: SocketAddr) -> anyhow::Result<Duration> {
    let attempt = async {
        let started = Instant::now();
        let mut conn = TcpStream::connect(front).await?;
        let connected = started.elapsed();
        conn.set_nodelay(true)?;
        conn.write_all(MESSAGE).await?;
        let mut echoed = [0u8; MESSAGE.len()];
        conn.read_exact(&mut echoed).await?;
        anyhow::ensure!(echoed == MESSAGE, "the echo differs from what was sent");
        anyhow::Ok(connected)
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, attempt)
        .await
        .with_context(|| format!("an exchange through {front} took over {EXCHANGE_TIMEOUT:?}"))?
}

/// What `concurrency` clients doing back-to-back exchanges achieved in `duration`.
#[derive(Debug, Clone)]
pub struct ConnectionRun {
    pub per_second: f64,
    /// Each exchange's latency in milliseconds, sorted.
    pub latencies_ms: Vec<f64>,
    /// The exchanges' TCP connects together, in milliseconds: the part no proxy's work is in.
    pub connecting_ms: f64,
}

impl ConnectionRun {
    pub fn mean_ms(&self) -> f64 {
        self.latencies_ms.iter().sum::<f64>() / self.latencies_ms.len() as f64
    }

    pub fn connect_mean_ms(&self) -> f64 {
        self.connecting_ms / self.latencies_ms.len() as f64
    }

    pub fn percentile(&self, p: f64) -> f64 {
        percentile(&self.latencies_ms, p)
    }
}

/// The `p`-th percentile (0..=100) of sorted `values`, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub async fn connections(
    front: SocketAddr,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<ConnectionRun> {
    let started = Instant::now();
    let deadline = started + duration;
    let clients: Vec<_> = (0..concurrency)
        .map(|_| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut connecting = Duration::ZERO;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    connecting += exchange(front).await?;
                    latencies.push(t.elapsed().as_secs_f64() * 1e3);
                }
                anyhow::Ok((latencies, connecting))
            })
        })
        .collect();
    let mut latencies_ms = Vec::new();
    let mut connecting = Duration::ZERO;
    for client in clients {
        let (latencies, connects) = client.await??;
        latencies_ms.extend(latencies);
        connecting += connects;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies_ms.sort_by(f64::total_cmp);
    Ok(ConnectionRun {
        per_second: latencies_ms.len() as f64 / elapsed,
        latencies_ms,
        connecting_ms: connecting.as_secs_f64() * 1e3,
    })
}

/// Opens `count` connections through `front` and returns them once `hold` holds every one of
/// them, i.e. once each is a complete tunnel to the backend.
pub async fn idle_connections(
    front: SocketAddr,
    hold: &HoldBackend,
    count: usize,
) -> anyhow::Result<Vec<TcpStream>> {
    /// Connects in flight at once: fast, without overflowing a proxy's accept backlog.
    const OPENING_AT_ONCE: usize = 64;
    let before = hold.held();
    let mut open = Vec::with_capacity(count);
    let mut pending = tokio::task::JoinSet::new();
    let mut started = 0;
    while open.len() < count {
        while started < count && pending.len() < OPENING_AT_ONCE {
            pending.spawn(async move {
                let conn = TcpStream::connect(front).await?;
                anyhow::Ok(conn)
            });
            started += 1;
        }
        let conn = pending.join_next().await.expect("some pending")??;
        open.push(conn);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while hold.held() < before + count {
        if Instant::now() > deadline {
            bail!(
                "only {} of {count} connections reached the backend through {front}",
                hold.held() - before
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(open)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[tokio::test]
    async fn exchanges_and_idle_connections_reach_the_backends() {
        let echo = echo_backend().await.unwrap();
        let run = connections(echo, 2, Duration::from_millis(200))
            .await
            .unwrap();
        assert!(run.per_second > 0.0 && !run.latencies_ms.is_empty());
        assert!(run.connect_mean_ms() > 0.0 && run.connect_mean_ms() < run.mean_ms());

        let hold = HoldBackend::start().await.unwrap();
        let open = idle_connections(hold.addr, &hold, 50).await.unwrap();
        assert_eq!(open.len(), 50);
        assert_eq!(hold.held(), 50);
        drop(open);
    }
}
