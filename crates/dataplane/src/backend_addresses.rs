//! The addresses of export backends named by DNS, kept for a few seconds.
//!
//! An export of a Kubernetes Service is dialed as `<name>.<namespace>.svc`. In a pod the resolver
//! tries its search domains first (`ndots:5`), so without this every tunnel would wait for several
//! DNS round trips before its backend connect even starts. A name's addresses are kept for
//! [`Limits::backend_addresses`], and forgotten as soon as every one of them refuses a
//! connection, so a Service recreated with a new address is found again at once (or, when its
//! old address swallows connections instead of refusing them, once they expire). IP addresses
//! are never looked up, and failed lookups are not kept.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use tokio::time::Instant;

use crate::limits::Limits;

/// Names kept at most: far more than the exports of one gateway (each names one backend). A
/// full table is emptied and refilled rather than tracked for its oldest entry.
const MOST_NAMES: usize = 4096;

/// How a name becomes addresses: the system resolver, or a stand-in in tests.
type Resolve = fn(String, u16) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

fn system_resolver(
    host: String,
    port: u16,
) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>> {
    Box::pin(async move {
        Ok(tokio::net::lookup_host((host.as_str(), port))
            .await?
            .collect())
    })
}

pub(crate) struct BackendAddresses {
    resolve: Resolve,
    kept: parking_lot::Mutex<HashMap<(String, u16), Kept>>,
}

struct Kept {
    addresses: Arc<[SocketAddr]>,
    until: Instant,
}

/// A backend's addresses, and whether they were kept from an earlier lookup (and so may have
/// gone stale).
pub(crate) struct Addresses {
    pub addresses: Arc<[SocketAddr]>,
    pub kept: bool,
}

impl Default for BackendAddresses {
    fn default() -> Self {
        BackendAddresses::with_resolver(system_resolver)
    }
}

impl BackendAddresses {
    fn with_resolver(resolve: Resolve) -> Self {
        BackendAddresses {
            resolve,
            kept: Default::default(),
        }
    }

    /// The addresses of `host`: itself if it is an IP address, else those of a recent lookup,
    /// else a lookup's now.
    pub async fn of(&self, host: &str, port: u16) -> io::Result<Addresses> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Addresses {
                addresses: Arc::new([SocketAddr::new(ip, port)]),
                kept: false,
            });
        }
        let key = (host.to_string(), port);
        if let Some(kept) = self.kept.lock().get(&key)
            && kept.until > Instant::now()
        {
            return Ok(Addresses {
                addresses: kept.addresses.clone(),
                kept: true,
            });
        }
        let found: Arc<[SocketAddr]> = (self.resolve)(key.0.clone(), port).await?.into();
        if found.is_empty() {
            return Err(io::Error::other(format!("{host} has no address")));
        }
        let mut kept = self.kept.lock();
        if kept.len() >= MOST_NAMES {
            kept.clear();
        }
        let until = Instant::now() + Limits::DEFAULT.backend_addresses;
        let addresses = found.clone();
        kept.insert(key, Kept { addresses, until });
        Ok(Addresses {
            addresses: found,
            kept: false,
        })
    }

    /// Forgets `host`'s addresses: none of them took a connection.
    pub fn forget(&self, host: &str, port: u16) {
        self.kept.lock().remove(&(host.to_string(), port));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    thread_local! {
        /// Per test: each runs on a thread of its own.
        static LOOKUPS: AtomicUsize = const { AtomicUsize::new(0) };
    }

    fn lookups() -> usize {
        LOOKUPS.with(|l| l.load(Ordering::SeqCst))
    }

    /// Names resolve to 10.0.N.M, N.M the lookups so far: each lookup's answer is told apart.
    fn counting(
        host: String,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>> {
        let [.., n, m] =
            (LOOKUPS.with(|l| l.fetch_add(1, Ordering::SeqCst)) as u16 + 1).to_be_bytes();
        Box::pin(async move {
            match host.as_str() {
                "nowhere" => Err(io::Error::other("no such name")),
                "empty" => Ok(Vec::new()),
                _ => Ok(vec![SocketAddr::from(([10, 0, n, m], port))]),
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_is_looked_up_once_while_kept_and_again_when_expired_or_forgotten() {
        let addresses = BackendAddresses::with_resolver(counting);
        let first = addresses.of("web.apps.svc", 80).await.unwrap();
        assert!(!first.kept);
        let again = addresses.of("web.apps.svc", 80).await.unwrap();
        assert!(again.kept);
        assert_eq!(again.addresses, first.addresses);
        // Another port is another entry.
        let other = addresses.of("web.apps.svc", 81).await.unwrap();
        assert!(!other.kept);
        assert_eq!(other.addresses[0].port(), 81);

        tokio::time::advance(Limits::DEFAULT.backend_addresses).await;
        let expired = addresses.of("web.apps.svc", 80).await.unwrap();
        assert!(!expired.kept);
        assert_ne!(expired.addresses, first.addresses);

        addresses.forget("web.apps.svc", 80);
        let forgotten = addresses.of("web.apps.svc", 80).await.unwrap();
        assert!(!forgotten.kept);
        assert_ne!(forgotten.addresses, expired.addresses);
    }

    #[tokio::test]
    async fn ip_addresses_are_not_looked_up_and_failures_not_kept() {
        let addresses = BackendAddresses::with_resolver(counting);
        let before = lookups();
        let ip = addresses.of("192.0.2.7", 443).await.unwrap();
        assert_eq!(
            &ip.addresses[..],
            &[SocketAddr::from(([192, 0, 2, 7], 443))]
        );
        let v6 = addresses.of("::1", 443).await.unwrap();
        assert_eq!(v6.addresses[0], "[::1]:443".parse().unwrap());
        assert_eq!(lookups(), before);

        for name in ["nowhere", "empty"] {
            assert!(addresses.of(name, 80).await.is_err());
            assert!(addresses.of(name, 80).await.is_err());
        }
        assert_eq!(lookups(), before + 4, "failures are looked up again");
        assert!(addresses.kept.lock().is_empty());
    }

    #[tokio::test]
    async fn the_names_kept_are_bounded() {
        let addresses = BackendAddresses::with_resolver(counting);
        for i in 0..=MOST_NAMES {
            addresses
                .of(&format!("backend-{i}.apps.svc"), 80)
                .await
                .unwrap();
            assert!(addresses.kept.lock().len() <= MOST_NAMES);
        }
    }

    #[tokio::test]
    async fn the_system_resolver_finds_localhost() {
        let addresses = BackendAddresses::default();
        let found = addresses.of("localhost", 8080).await.unwrap();
        assert!(
            found
                .addresses
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 8080)
        );
        assert!(addresses.of("localhost", 8080).await.unwrap().kept);
    }
}
