//! Client workload attributes in standalone mode: a table from client address ranges to the
//! namespace, service account and labels policies see (`client.clusterlink.net/*`). On
//! Kubernetes the same attributes come from the pod behind the address.
//!
//! ```yaml
//! clients:
//!   - cidr: 10.1.0.0/16
//!     namespace: shop
//!     serviceAccount: frontend
//!     labels: {app: web}
//! ```
//!
//! The first entry whose range holds the client's address wins; a client in no range has no
//! client attributes (policies that require some will not match it).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::attributes::{
    Attributes, CLIENT_LABELS_PREFIX, CLIENT_NAMESPACE, CLIENT_SERVICE_ACCOUNT,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
#[error("client attribute table: {0}")]
pub struct ClientTableError(String);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    clients: Vec<EntryFile>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EntryFile {
    cidr: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    service_account: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
struct Entry {
    network: IpAddr,
    prefix: u8,
    attributes: Attributes,
}

/// Address ranges to client attributes.
#[derive(Debug, Clone, Default)]
pub struct ClientTable {
    entries: Vec<Entry>,
}

impl ClientTable {
    /// Parses the YAML table; every problem names the entry it is in.
    pub fn parse(text: &str) -> Result<ClientTable, ClientTableError> {
        let file: TableFile =
            serde_yaml_ng::from_str(text).map_err(|e| ClientTableError(e.to_string()))?;
        let mut entries = Vec::new();
        for (i, e) in file.clients.into_iter().enumerate() {
            let at = |reason: String| ClientTableError(format!("clients[{i}]: {reason}"));
            let (network, prefix) = parse_cidr(&e.cidr).map_err(at)?;
            let mut attributes = Attributes::new();
            if let Some(ns) = e.namespace {
                crate::validation::check_dns_label(&ns)
                    .map_err(|r| at(format!("namespace: {r}")))?;
                attributes.insert(CLIENT_NAMESPACE.into(), ns);
            }
            if let Some(sa) = e.service_account {
                attributes.insert(CLIENT_SERVICE_ACCOUNT.into(), sa);
            }
            for (k, v) in e.labels {
                crate::validation::check_label_value(&v)
                    .map_err(|r| at(format!("labels[{k}]: {r}")))?;
                attributes.insert(format!("{CLIENT_LABELS_PREFIX}{k}"), v);
            }
            entries.push(Entry {
                network,
                prefix,
                attributes,
            });
        }
        Ok(ClientTable { entries })
    }

    /// How many address ranges it has.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The attributes of the client at `addr` (empty if no range holds it).
    pub fn attributes_of(&self, addr: IpAddr) -> Attributes {
        let addr = canonical(addr);
        self.entries
            .iter()
            .find(|e| in_network(addr, e.network, e.prefix))
            .map(|e| e.attributes.clone())
            .unwrap_or_default()
    }
}

/// Client attributes by exact address. On Kubernetes there is one entry per pod, from the
/// controller's pod cache; it reaches the data plane with each snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientHosts(BTreeMap<IpAddr, Attributes>);

impl ClientHosts {
    pub fn insert(
        &mut self,
        addr: IpAddr,
        namespace: String,
        service_account: String,
        labels: BTreeMap<String, String>,
    ) {
        let mut attributes = Attributes::new();
        attributes.insert(CLIENT_NAMESPACE.into(), namespace);
        attributes.insert(CLIENT_SERVICE_ACCOUNT.into(), service_account);
        for (k, v) in labels {
            attributes.insert(format!("{CLIENT_LABELS_PREFIX}{k}"), v);
        }
        self.0.insert(canonical(addr), attributes);
    }

    pub fn get(&self, addr: IpAddr) -> Option<&Attributes> {
        self.0.get(&canonical(addr))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// IPv4 clients of a dual-stack listener appear as IPv4-mapped IPv6 addresses.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    }
}

fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let (addr, prefix) = text
        .split_once('/')
        .ok_or_else(|| format!("cidr {text:?} must be ADDRESS/PREFIX"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("cidr {text:?}: {addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| format!("cidr {text:?}: prefix must be 0-{max}"))?;
    Ok((addr, prefix))
}

fn in_network(addr: IpAddr, network: IpAddr, prefix: u8) -> bool {
    let (a, n, bits) = match (addr, network) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u32::from(a) as u128, u32::from(n) as u128, 32),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
        _ => return false,
    };
    if prefix == 0 {
        return true;
    }
    let shift = bits - u32::from(prefix);
    (a >> shift) == (n >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "clients:\n  - cidr: 127.0.0.2/32\n    namespace: shop\n    labels: {app: firefox}\n  - cidr: 127.0.0.0/8\n    namespace: shop\n    serviceAccount: curl\n  - cidr: fd00::/8\n    labels: {app: v6}\n";

    #[test]
    fn first_matching_range_wins() {
        let t = ClientTable::parse(TABLE).unwrap();
        let firefox = t.attributes_of("127.0.0.2".parse().unwrap());
        assert_eq!(firefox["client.clusterlink.net/labels.app"], "firefox");
        assert_eq!(firefox["client.clusterlink.net/namespace"], "shop");
        let other = t.attributes_of("127.0.0.1".parse().unwrap());
        assert_eq!(other["client.clusterlink.net/service-account"], "curl");
        assert!(!other.contains_key("client.clusterlink.net/labels.app"));
        assert_eq!(
            t.attributes_of("fd12::1".parse().unwrap())["client.clusterlink.net/labels.app"],
            "v6"
        );
        assert!(t.attributes_of("10.0.0.1".parse().unwrap()).is_empty());
        assert_eq!(
            t.attributes_of("::ffff:127.0.0.2".parse().unwrap()),
            firefox
        );
    }

    #[test]
    fn errors_name_the_entry() {
        for (text, want) in [
            (
                "clients: [{cidr: 10.0.0.0}]",
                "clients[0]: cidr \"10.0.0.0\" must be ADDRESS/PREFIX",
            ),
            (
                "clients: [{cidr: 10.0.0.0/8}, {cidr: 10.0.0.0/33}]",
                "clients[1]: cidr \"10.0.0.0/33\": prefix must be 0-32",
            ),
            (
                "clients: [{cidr: 10.0.0.0/8, namespace: Shop}]",
                "clients[0]: namespace",
            ),
            (
                "clients: [{cidr: 10.0.0.0/8, team: x}]",
                "unknown field `team`",
            ),
        ] {
            let err = ClientTable::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn zero_prefix_matches_everything_of_its_family() {
        assert!(in_network(
            "1.2.3.4".parse().unwrap(),
            "0.0.0.0".parse().unwrap(),
            0
        ));
        assert!(!in_network(
            "::1".parse().unwrap(),
            "0.0.0.0".parse().unwrap(),
            0
        ));
    }
}
