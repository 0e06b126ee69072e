//! `gwctl link`: the Peer manifest another site applies to reach this gateway, as
//! `linkerd multicluster link` prints what the other cluster applies.

use anyhow::{Context as _, bail};
use clusterlink_api::rest::VERSION_PATH;
use http::Method;

use crate::client::Client;

/// The manifest, as YAML, from what the gateway says of itself (`/version`: its peer name and
/// the addresses of its peer port), with `addresses` in place of those when given.
pub(super) async fn peer_manifest(
    client: &mut Client,
    addresses: &[String],
    labels: &[String],
) -> anyhow::Result<String> {
    let reply = client.request(Method::GET, VERSION_PATH, None).await?;
    reply.ensure_ok()?;
    let version = &reply.body;
    let Some(name) = version["peer"].as_str() else {
        bail!("the gateway did not say its peer name (is it an older version?)");
    };
    let found: Vec<(String, u16)> = version["peerAddresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str()?.parse::<std::net::SocketAddr>().ok())
        .map(|a| (a.ip().to_string(), a.port()))
        .collect();
    let port = found.first().map(|(_, p)| *p);
    let gateways: Vec<(String, u16)> = if addresses.is_empty() {
        if found.is_empty() {
            bail!(
                "gateway {name} cannot tell which address other sites reach it at (its peer \
                 port listens on every address and this host has no default route): give \
                 --address HOST"
            );
        }
        found
    } else {
        addresses
            .iter()
            .map(|a| split_address(a, port))
            .collect::<anyhow::Result<_>>()?
    };
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .with_context(|| format!("--label {pair:?} is not KEY=VALUE"))?;
            Ok((k.to_string(), serde_json::Value::from(v)))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut metadata = serde_json::json!({ "name": name });
    if !labels.is_empty() {
        metadata["labels"] = labels.into();
    }
    let manifest = serde_json::json!({
        "apiVersion": clusterlink_api::API_VERSION,
        "kind": "Peer",
        "metadata": metadata,
        "spec": {
            "gateways": gateways
                .iter()
                .map(|(host, port)| serde_json::json!({"host": host, "port": port}))
                .collect::<Vec<_>>(),
        },
    });
    // Validated as the receiving gateway will: a bad --address or label fails here, not there.
    let mut peer = clusterlink_api::manifest::object_from_value(manifest)
        .map_err(|e| anyhow::anyhow!("the Peer manifest would be refused: {e}"))?;
    peer.default_namespace(clusterlink_api::SYSTEM_NAMESPACE);
    peer.validate()
        .map_err(|e| anyhow::anyhow!("the Peer manifest would be refused: {e}"))?;
    Ok(format!(
        "# Apply at the sites that import from {name}: gwctl apply -f <this file>\n{}",
        serde_yaml_ng::to_string(&peer).context("writing the manifest")?
    ))
}

/// `HOST` or `HOST:PORT` (`[V6]:PORT`), the port defaulting to `port`.
fn split_address(text: &str, port: Option<u16>) -> anyhow::Result<(String, u16)> {
    if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
        return Ok((addr.ip().to_string(), addr.port()));
    }
    if let Ok(ip) = text.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return with_port(ip.to_string(), port, text);
    }
    match text.rsplit_once(':') {
        Some((host, p)) => {
            let p = p
                .parse::<u16>()
                .with_context(|| format!("--address {text:?}: {p:?} is not a port"))?;
            Ok((host.to_string(), p))
        }
        None => with_port(text.to_string(), port, text),
    }
}

fn with_port(host: String, port: Option<u16>, text: &str) -> anyhow::Result<(String, u16)> {
    match port {
        Some(p) => Ok((host, p)),
        None => bail!("--address {text:?}: the gateway did not say its peer port; give HOST:PORT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_the_peer_port_unless_they_name_one() {
        assert_eq!(
            split_address("gw.example.com", Some(443)).unwrap(),
            ("gw.example.com".into(), 443)
        );
        assert_eq!(
            split_address("gw.example.com:8443", Some(443)).unwrap(),
            ("gw.example.com".into(), 8443)
        );
        assert_eq!(
            split_address("[2001:db8::1]:9443", None).unwrap(),
            ("2001:db8::1".into(), 9443)
        );
        assert_eq!(
            split_address("2001:db8::1", Some(443)).unwrap(),
            ("2001:db8::1".into(), 443)
        );
        assert!(split_address("gw:x", Some(443)).is_err());
        assert!(split_address("gw", None).is_err());
    }
}
