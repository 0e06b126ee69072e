//! What peers offer each other, and what mirroring makes of it.
//!
//! A gateway offers an authenticated peer its **catalog**: the exports that peer could reach, as
//! the exporter's own policies decide (an export they deny to that peer for every client is left
//! out). Discovery never widens access: an offer is something the peer could already connect to.
//!
//! A Peer whose spec has a `mirror` rule imports what that peer offers: every offered export
//! whose labels the rule selects becomes an Import of the same name in the same namespace,
//! marked with [`MIRRORED_LABEL`]. The same export offered by several peers becomes one Import
//! with a source per peer (a federated service), balanced and failed over like any other.
//! [`plan`] decides the Imports; it is pure, so a standalone gateway and a cluster's controller
//! reach the same answer. The importing side's egress policy still decides every connection.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::resources::{DEFAULT_MAX_IMPORTS, MirrorRule};
use crate::resources::{
    Import, ImportSource, ImportSpec, Kind, LbScheme, Object, ObjectKey, Objects, Port,
};
use crate::validation::{check_dns_label, check_dns_subdomain, check_rfc1035_label};

/// Offers one catalog may hold: far beyond any site's exports, small enough that a hostile peer
/// cannot make another gateway hold much (with [`MAX_CATALOG_BYTES`]).
pub const MAX_OFFERS: usize = 10_000;
/// The largest catalog body read from a peer: `MAX_OFFERS` offers with a few labels each.
pub const MAX_CATALOG_BYTES: usize = 4 << 20;

/// On Kubernetes, a Service labelled `clusterlink.net/export: "true"` is exported with its
/// ports (one Export per port), and taking the label off withdraws it.
pub const EXPORT_LABEL: &str = "clusterlink.net/export";

/// The label on an Import that mirroring manages: it is created, changed and deleted with the
/// offers. An Import without it is never touched by mirroring.
pub const MIRRORED_LABEL: &str = "clusterlink.net/mirrored";
/// The annotation naming the peers a mirrored Import's sources come from.
pub const MIRRORED_FROM_ANNOTATION: &str = "clusterlink.net/mirrored-from";

/// One export a peer may reach.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Offer {
    pub namespace: String,
    pub name: String,
    /// The export's port, which a mirrored Import listens on (plus the rule's offset).
    pub port: Port,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A gateway's offers to one peer, in (namespace, name) order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Catalog {
    pub offers: Vec<Offer>,
}

/// Why a catalog from a peer was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    #[error("the catalog is not valid JSON of offers: {0}")]
    Syntax(String),
    #[error("the catalog lists {0} offers, more than the {MAX_OFFERS} taken from a peer")]
    TooMany(usize),
    #[error("offer {index}: {problem}")]
    BadOffer { index: usize, problem: String },
}

impl Catalog {
    /// Reads a catalog a peer sent: every name and label checked as an Export's would be, in
    /// order, without duplicates, so nothing a peer sends reaches a view or an Import unchecked.
    pub fn parse(body: &[u8]) -> Result<Catalog, CatalogError> {
        let catalog: Catalog =
            serde_json::from_slice(body).map_err(|e| CatalogError::Syntax(e.to_string()))?;
        if catalog.offers.len() > MAX_OFFERS {
            return Err(CatalogError::TooMany(catalog.offers.len()));
        }
        for (index, offer) in catalog.offers.iter().enumerate() {
            let bad = |problem: String| CatalogError::BadOffer { index, problem };
            check_dns_label(&offer.namespace).map_err(|e| bad(format!("namespace: {e}")))?;
            check_dns_subdomain(&offer.name).map_err(|e| bad(format!("name: {e}")))?;
            let mut errors = crate::validation::FieldErrors::default();
            crate::meta::ObjectMeta {
                labels: offer.labels.clone(),
                ..Default::default()
            }
            .validate_labels(&mut errors);
            if let Err(e) = errors.into_result() {
                return Err(bad(e.to_string()));
            }
            if index > 0 && catalog.offers[index - 1].key() >= offer.key() {
                return Err(bad(format!(
                    "{} is out of order or listed twice",
                    offer.key_text()
                )));
            }
        }
        Ok(catalog)
    }
}

impl Catalog {
    /// Whether export `namespace/name` is among the offers.
    pub fn offers(&self, namespace: &str, name: &str) -> bool {
        // Parsed catalogs are in order (`parse` refuses any other), as built ones are.
        self.offers
            .binary_search_by(|o| o.key().cmp(&(namespace, name)))
            .is_ok()
    }
}

/// Why a source whose export `peer` does not offer gets no tunnel: the one wording every view
/// uses.
pub fn not_offered(peer: &str, namespace: &str, name: &str) -> String {
    format!(
        "{peer} does not offer export {namespace}/{name}: it has no such export, or its policies \
         deny it to every client of this site"
    )
}

impl Offer {
    fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }

    /// `namespace/name`, as gwctl names exports.
    pub fn key_text(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What happened to one offer under its peer's mirror rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OfferState {
    /// Imported by the named Import (namespace/name).
    Imported(String),
    /// The peer has no mirror rule, or its rule does not select the offer.
    NotSelected,
    /// Selected, but not imported, for the reason given.
    NotImported(String),
}

/// What peers offer this gateway, by peer, as last fetched.
pub type Catalogs = BTreeMap<String, Catalog>;

/// One offer and what became of it, as views show it (`GET /api/v1/offers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OfferStatus {
    pub offer: Offer,
    pub state: OfferState,
}

/// By peer, what it offers this gateway and what became of each offer. A peer whose catalog is
/// not known yet (not answered a probe since this gateway started) is not listed.
pub type OffersView = BTreeMap<String, Vec<OfferStatus>>;

impl MirrorPlan {
    /// The offers' part of the plan, as views show it.
    pub fn view(&self) -> OffersView {
        self.offers
            .iter()
            .map(|(peer, offers)| {
                let statuses = offers
                    .iter()
                    .map(|(offer, state)| OfferStatus {
                        offer: offer.clone(),
                        state: state.clone(),
                    })
                    .collect();
                (peer.clone(), statuses)
            })
            .collect()
    }
}

/// The Imports mirroring wants, and what became of every offer.
#[derive(Debug, Default, PartialEq)]
pub struct MirrorPlan {
    /// Imports to create or bring to this spec (each carries [`MIRRORED_LABEL`]).
    pub apply: Vec<Import>,
    /// Mirrored Imports no offer backs any more.
    pub delete: Vec<ObjectKey>,
    /// By peer, each offer's state, in the catalog's order.
    pub offers: BTreeMap<String, Vec<(Offer, OfferState)>>,
}

/// Whether an Import is managed by mirroring.
pub fn is_mirrored(import: &Import) -> bool {
    import
        .metadata
        .labels
        .get(MIRRORED_LABEL)
        .map(String::as_str)
        == Some("true")
}

/// Decides the mirrored Imports from the Peers' rules in `objects` and the catalogs peers
/// offered (`catalogs`, by peer). An offer of a peer whose catalog is not known (never fetched)
/// is not withdrawn: only what a peer says changes its Imports.
pub fn plan(objects: &Objects, catalogs: &Catalogs) -> MirrorPlan {
    let mut result = MirrorPlan::default();
    // (namespace, name) → (port, peers offering it), in peer order.
    let mut wanted: BTreeMap<(String, String), (Port, Vec<String>)> = BTreeMap::new();
    for object in objects.values() {
        let Object::Peer(peer) = object else { continue };
        let peer_name = &peer.metadata.name;
        let Some(catalog) = catalogs.get(peer_name) else {
            continue;
        };
        let mut states = Vec::with_capacity(catalog.offers.len());
        let mut imported = 0;
        for offer in &catalog.offers {
            let state = match &peer.spec.mirror {
                Some(rule)
                    if rule.exports.matches(&offer.labels)
                        && (rule.namespaces.is_empty()
                            || rule.namespaces.contains(&offer.namespace)) =>
                {
                    match (import_port(offer, rule), check_rfc1035_label(&offer.name)) {
                        (Err(why), _) => OfferState::NotImported(why),
                        (_, Err(e)) => {
                            OfferState::NotImported(format!("its name cannot name an Import: {e}"))
                        }
                        _ if imported >= rule.max_imports() => OfferState::NotImported(format!(
                            "the Peer's spec.mirror.maxImports ({}) is reached",
                            rule.max_imports()
                        )),
                        (Ok(port), Ok(())) => {
                            imported += 1;
                            let entry = wanted
                                .entry((offer.namespace.clone(), offer.name.clone()))
                                .or_insert((port, Vec::new()));
                            entry.1.push(peer_name.clone());
                            OfferState::Imported(offer.key_text())
                        }
                    }
                }
                _ => OfferState::NotSelected,
            };
            states.push((offer.clone(), state));
        }
        result.offers.insert(peer_name.clone(), states);
    }
    for ((namespace, name), (port, peers)) in &wanted {
        let key = ObjectKey::new(Kind::Import, namespace.clone(), name.clone());
        if let Some(Object::Import(existing)) = objects.get(&key)
            && !is_mirrored(existing)
        {
            let why = format!(
                "Import {namespace}/{name} exists and is not managed by mirroring (it has no {MIRRORED_LABEL} label)"
            );
            for states in result.offers.values_mut() {
                for (offer, state) in states.iter_mut() {
                    if offer.namespace == *namespace && offer.name == *name {
                        *state = OfferState::NotImported(why.clone());
                    }
                }
            }
            continue;
        }
        let mut import = mirrored_import(namespace, name, *port, peers);
        if let Some(Object::Import(existing)) = objects.get(&key) {
            // Kept as allocated (on Kubernetes the controller records it in the spec).
            import.spec.target_port = existing.spec.target_port;
        }
        let unchanged = matches!(objects.get(&key), Some(existing) if existing.same_desired_state(&Object::Import(import.clone())));
        if !unchanged {
            result.apply.push(import);
        }
    }
    for object in objects.values() {
        let Object::Import(import) = object else {
            continue;
        };
        let key = (
            import.metadata.namespace.clone(),
            import.metadata.name.clone(),
        );
        if is_mirrored(import) && !wanted.contains_key(&key) && !still_unknown(import, catalogs) {
            result.delete.push(object.key());
        }
    }
    result
}

/// True when one of a mirrored Import's peers has no known catalog (a peer not probed yet, say
/// after a restart): the Import stays until that peer says what it offers.
fn still_unknown(import: &Import, catalogs: &BTreeMap<String, Catalog>) -> bool {
    import
        .spec
        .sources
        .iter()
        .any(|s| !catalogs.contains_key(&s.peer))
}

fn import_port(offer: &Offer, rule: &MirrorRule) -> Result<Port, String> {
    offer
        .port
        .get()
        .checked_add(rule.port_offset)
        .and_then(Port::new)
        .ok_or_else(|| {
            format!(
                "its port {} plus the rule's portOffset {} is past 65535",
                offer.port, rule.port_offset
            )
        })
}

fn mirrored_import(namespace: &str, name: &str, port: Port, peers: &[String]) -> Import {
    let sources = peers
        .iter()
        .map(|peer| ImportSource {
            peer: peer.clone(),
            export_name: name.to_string(),
            export_namespace: namespace.to_string(),
        })
        .collect();
    let mut import = Import::new(
        name,
        namespace,
        ImportSpec {
            port,
            target_port: None,
            sources,
            lb_scheme: LbScheme::RoundRobin,
        },
    );
    import
        .metadata
        .labels
        .insert(MIRRORED_LABEL.into(), "true".into());
    import
        .metadata
        .annotations
        .insert(MIRRORED_FROM_ANNOTATION.into(), peers.join(","));
    import
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_manifest;

    fn objects(manifests: &[&str]) -> Objects {
        let mut objects = Objects::new();
        for m in manifests {
            let o = parse_manifest(m, "default").unwrap();
            objects.insert(o.key(), o);
        }
        objects
    }

    fn mirroring_peer(name: &str, selector: &str) -> String {
        format!(
            "apiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {{name: {name}, namespace: clusterlink-system}}\nspec: {{gateways: [{{host: {name}, port: 443}}], mirror: {{exports: {selector}, portOffset: 1000}}}}\n"
        )
    }

    fn offer(namespace: &str, name: &str, port: u16, labels: &[(&str, &str)]) -> Offer {
        Offer {
            namespace: namespace.into(),
            name: name.into(),
            port: Port::new(port).unwrap(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn catalogs(entries: &[(&str, Vec<Offer>)]) -> BTreeMap<String, Catalog> {
        entries
            .iter()
            .map(|(peer, offers)| {
                (
                    peer.to_string(),
                    Catalog {
                        offers: offers.clone(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn one_export_offered_by_two_peers_is_one_import_with_two_sources() {
        let config = objects(&[
            &mirroring_peer("east", "{matchLabels: {tier: web}}"),
            &mirroring_peer("west", "{}"),
        ]);
        let web = offer("shop", "web", 80, &[("tier", "web")]);
        let db = offer("shop", "db", 5432, &[]);
        let plan = plan(
            &config,
            &catalogs(&[
                ("east", vec![db.clone(), web.clone()]),
                ("west", vec![web.clone()]),
            ]),
        );
        assert_eq!(plan.apply.len(), 1, "{plan:?}");
        let import = &plan.apply[0];
        assert_eq!(
            (
                import.metadata.namespace.as_str(),
                import.metadata.name.as_str()
            ),
            ("shop", "web")
        );
        assert_eq!(
            import.spec.port.get(),
            1080,
            "the offered port plus the rule's offset"
        );
        let peers: Vec<&str> = import
            .spec
            .sources
            .iter()
            .map(|s| s.peer.as_str())
            .collect();
        assert_eq!(peers, ["east", "west"]);
        assert!(is_mirrored(import));
        assert!(Object::Import(import.clone()).validate().is_ok());
        assert_eq!(plan.offers["east"][0], (db, OfferState::NotSelected));
        assert_eq!(
            plan.offers["east"][1],
            (web, OfferState::Imported("shop/web".into()))
        );
    }

    #[test]
    fn mirroring_follows_the_offers_and_never_takes_an_import_it_does_not_manage() {
        let web = offer("default", "web", 80, &[]);
        let mut config = objects(&[&mirroring_peer("east", "{}")]);
        let first = plan(&config, &catalogs(&[("east", vec![web.clone()])]));
        let mirrored = Object::Import(first.apply[0].clone());
        config.insert(mirrored.key(), mirrored.clone());
        let again = plan(&config, &catalogs(&[("east", vec![web.clone()])]));
        assert!(
            again.apply.is_empty() && again.delete.is_empty(),
            "{again:?}"
        );
        // Withdrawn: the offer went.
        let gone = plan(&config, &catalogs(&[("east", vec![])]));
        assert_eq!(gone.delete, vec![mirrored.key()]);
        // Not known (the peer has not answered since a restart): kept.
        let unknown = plan(&config, &BTreeMap::new());
        assert!(unknown.delete.is_empty());
        // An Import the user wrote is never changed, and the offer says why it is not imported.
        let mut own = mirrored.clone();
        if let Object::Import(i) = &mut own {
            i.metadata.labels.clear();
        }
        config.insert(own.key(), own);
        let taken = plan(&config, &catalogs(&[("east", vec![web.clone()])]));
        assert!(taken.apply.is_empty() && taken.delete.is_empty());
        assert!(
            matches!(&taken.offers["east"][0].1, OfferState::NotImported(why) if why.contains("not managed by mirroring")),
            "{taken:?}"
        );
        let gone = plan(&config, &catalogs(&[("east", vec![])]));
        assert!(
            gone.delete.is_empty(),
            "an Import the user wrote is not withdrawn"
        );
    }

    #[test]
    fn a_rule_imports_only_from_its_namespaces_and_at_most_its_maximum() {
        let peer = "apiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {name: east, namespace: clusterlink-system}\nspec: {gateways: [{host: east, port: 443}], mirror: {namespaces: [shop], maxImports: 2}}\n";
        let config = objects(&[peer]);
        let offers: Vec<Offer> = ["a", "b", "c"]
            .iter()
            .map(|n| offer("shop", n, 80, &[]))
            .chain([offer("kube-system", "dns", 53, &[])])
            .collect();
        let mut sorted = offers.clone();
        sorted.sort();
        let plan = plan(&config, &catalogs(&[("east", sorted)]));
        let names: Vec<&str> = plan
            .apply
            .iter()
            .map(|i| i.metadata.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
        let states: Vec<String> = plan.offers["east"]
            .iter()
            .map(|(o, s)| format!("{}:{s:?}", o.name))
            .collect();
        assert!(states[0].starts_with("dns:NotSelected"), "{states:?}");
        assert!(
            states[3].contains("maxImports (2) is reached"),
            "{states:?}"
        );
        let bad = "apiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {name: east, namespace: clusterlink-system}\nspec: {gateways: [{host: east, port: 443}], mirror: {namespaces: [Bad_NS]}}\n";
        let e = crate::parse_manifest(bad, "default").unwrap_err();
        assert!(e.to_string().contains("spec.mirror.namespaces[0]"), "{e}");
    }

    #[test]
    fn an_offer_that_cannot_become_an_import_says_why() {
        let config = objects(&[&mirroring_peer("east", "{}")]);
        let plan = plan(
            &config,
            &catalogs(&[(
                "east",
                vec![
                    offer("default", "a.b", 80, &[]),
                    offer("default", "big", 65000, &[]),
                ],
            )]),
        );
        assert!(plan.apply.is_empty());
        let states: Vec<&OfferState> = plan.offers["east"].iter().map(|(_, s)| s).collect();
        assert!(matches!(states[0], OfferState::NotImported(why) if why.contains("name")));
        assert!(matches!(states[1], OfferState::NotImported(why) if why.contains("65535")));
    }

    #[test]
    fn a_catalog_from_a_peer_is_checked_before_anything_uses_it() {
        let good = br#"{"offers":[{"namespace":"default","name":"a","port":80},{"namespace":"default","name":"b","port":81,"labels":{"tier":"web"}}]}"#;
        assert_eq!(Catalog::parse(good).unwrap().offers.len(), 2);
        for (bad, says) in [
            (&br#"{"offers":[{"namespace":"default","name":"b","port":80},{"namespace":"default","name":"a","port":80}]}"#[..], "out of order"),
            (br#"{"offers":[{"namespace":"default","name":"a","port":80},{"namespace":"default","name":"a","port":80}]}"#, "listed twice"),
            (br#"{"offers":[{"namespace":"Bad NS","name":"a","port":80}]}"#, "namespace"),
            (br#"{"offers":[{"namespace":"default","name":"a\u001b[31m","port":80}]}"#, "name"),
            (br#"{"offers":[{"namespace":"default","name":"a","port":0}]}"#, "65535"),
            (br#"{"offers":[{"namespace":"default","name":"a","port":80,"labels":{"bad key!":"x"}}]}"#, "labels"),
            (br#"{"offers":[{"namespace":"default","name":"a","port":80,"extra":1}]}"#, "unknown field"),
        ] {
            let e = Catalog::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        let many = format!(
            "{{\"offers\":[{}]}}",
            (0..=MAX_OFFERS)
                .map(|i| format!("{{\"namespace\":\"default\",\"name\":\"s{i:05}\",\"port\":80}}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(
            Catalog::parse(many.as_bytes()),
            Err(CatalogError::TooMany(MAX_OFFERS + 1))
        );
    }
}
