//! The access policy engine (DESIGN.md §2).
//!
//! Each side of a connection decides on its own: the importing side on egress (in the import's
//! namespace), the exporting side on ingress (in the export's namespace). The order is privileged
//! deny, privileged allow, deny in the namespace, allow in the namespace, then default deny; the
//! first match decides. A policy matches when one of its `from` selectors matches the source's
//! attributes and one of its `to` selectors matches the destination's.
//!
//! A client whose attributes are unknown (no pod, no `--client-attributes` entry for its address)
//! is denied outright while any policy selects clients by attribute (a `from` selector that is not
//! empty, in any tier or namespace), as the reference ClusterLink decides: an allow-all beside a
//! policy about clients must not let in a client nobody can tell apart.
//!
//! The engine is compiled once from the objects whenever a policy changes and then only read, so
//! a decision is a few map lookups.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use clusterlink_api::activity::PolicyRef;
use clusterlink_api::selector::AttributeLookup;
use clusterlink_api::{AccessPolicySpec, LabelSelector, Object, PolicyAction, attributes};

/// Attribute key/values a selector matches (DESIGN.md §2 lists the keys).
use clusterlink_api::attributes::Attributes;

/// Which kind of policy decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Privileged,
    Namespaced,
}

/// What decided a connection: a named policy, or the default deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decider {
    Policy {
        tier: Tier,
        namespace: String,
        name: String,
    },
    /// The client's attributes are unknown while policies select clients by attribute.
    ClientAttributesUnknown,
    DefaultDeny,
}

impl Decider {
    /// How events, explanations and metric labels name it ([`PolicyRef`]).
    pub fn reference(&self) -> String {
        match self {
            Decider::Policy {
                tier: Tier::Privileged,
                name,
                ..
            } => PolicyRef::privileged(name),
            Decider::Policy {
                tier: Tier::Namespaced,
                namespace,
                name,
            } => PolicyRef::namespaced(namespace, name),
            Decider::ClientAttributesUnknown => PolicyRef::UNKNOWN_CLIENT.into(),
            Decider::DefaultDeny => PolicyRef::DEFAULT_DENY.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDecision {
    pub allowed: bool,
    pub decided_by: Decider,
}

impl fmt::Display for PolicyDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.allowed { "allowed" } else { "denied" };
        match &self.decided_by {
            Decider::Policy {
                tier: Tier::Privileged,
                name,
                ..
            } => {
                write!(f, "{verdict} by PrivilegedAccessPolicy {name}")
            }
            Decider::Policy {
                tier: Tier::Namespaced,
                namespace,
                name,
            } => {
                write!(f, "{verdict} by AccessPolicy {namespace}/{name}")
            }
            Decider::ClientAttributesUnknown => write!(
                f,
                "denied: the client's attributes are unknown (no pod or client-attributes entry \
                 for its address), and policies select clients by attribute"
            ),
            Decider::DefaultDeny => write!(f, "denied by default (no policy allows it)"),
        }
    }
}

struct CompiledPolicy {
    namespace: String,
    name: String,
    from: Vec<LabelSelector>,
    to: Vec<LabelSelector>,
}

impl CompiledPolicy {
    fn new(namespace: &str, name: &str, spec: &AccessPolicySpec) -> Self {
        let selectors = |entries: &[clusterlink_api::WorkloadSelectorEntry]| {
            entries
                .iter()
                .map(|e| e.workload_selector.clone())
                .collect()
        };
        CompiledPolicy {
            namespace: namespace.to_string(),
            name: name.to_string(),
            from: selectors(&spec.from),
            to: selectors(&spec.to),
        }
    }

    fn matches(&self, src: &impl AttributeLookup, dst: &impl AttributeLookup) -> bool {
        self.from.iter().any(|s| s.matches(src)) && self.to.iter().any(|s| s.matches(dst))
    }

    fn selects_clients(&self) -> bool {
        self.from.iter().any(|s| *s != LabelSelector::everything())
    }
}

/// Deny and allow policies of one tier or namespace, each list in name order so that which
/// policy is reported as the decider is stable.
#[derive(Default)]
struct Layer {
    deny: Vec<CompiledPolicy>,
    allow: Vec<CompiledPolicy>,
}

impl Layer {
    fn policies(&self) -> impl Iterator<Item = &CompiledPolicy> {
        self.deny.iter().chain(&self.allow)
    }

    fn add(&mut self, action: PolicyAction, policy: CompiledPolicy) {
        match action {
            PolicyAction::Deny => self.deny.push(policy),
            PolicyAction::Allow => self.allow.push(policy),
        }
    }

    fn sort(&mut self) {
        self.deny.sort_by(|a, b| a.name.cmp(&b.name));
        self.allow.sort_by(|a, b| a.name.cmp(&b.name));
    }
}

/// All access policies, ready to decide.
#[derive(Default)]
pub struct PolicyEngine {
    privileged: Layer,
    namespaces: HashMap<String, Layer>,
    /// Some policy has a `from` selector that is not empty.
    selects_clients: bool,
}

impl PolicyEngine {
    pub fn compile<'a>(objects: impl IntoIterator<Item = &'a Object>) -> PolicyEngine {
        let mut engine = PolicyEngine::default();
        for obj in objects {
            match obj {
                Object::PrivilegedAccessPolicy(p) => engine.privileged.add(
                    p.spec.0.action,
                    CompiledPolicy::new("", &p.metadata.name, &p.spec.0),
                ),
                Object::AccessPolicy(p) => engine
                    .namespaces
                    .entry(p.metadata.namespace.clone())
                    .or_default()
                    .add(
                        p.spec.action,
                        CompiledPolicy::new(&p.metadata.namespace, &p.metadata.name, &p.spec),
                    ),
                _ => {}
            }
        }
        engine.privileged.sort();
        engine.namespaces.values_mut().for_each(Layer::sort);
        engine.selects_clients = std::iter::once(&engine.privileged)
            .chain(engine.namespaces.values())
            .flat_map(Layer::policies)
            .any(CompiledPolicy::selects_clients);
        engine
    }

    /// Decides a connection from `src` to `dst`, with `namespace` the namespace whose
    /// policies apply on this side (the import's on egress, the export's on ingress). The client
    /// is unknown when `src` holds no `client.clusterlink.net/` attribute.
    pub fn decide(
        &self,
        namespace: &str,
        src: &Attributes,
        dst: &impl AttributeLookup,
    ) -> PolicyDecision {
        if self.selects_clients && !src.keys().any(|k| attributes::is_client_attribute(k)) {
            return PolicyDecision {
                allowed: false,
                decided_by: Decider::ClientAttributesUnknown,
            };
        }
        let decided = |tier, p: &CompiledPolicy, allowed| PolicyDecision {
            allowed,
            decided_by: Decider::Policy {
                tier,
                namespace: p.namespace.clone(),
                name: p.name.clone(),
            },
        };
        let empty = Layer::default();
        let local = self.namespaces.get(namespace).unwrap_or(&empty);
        let order = [
            (Tier::Privileged, &self.privileged.deny, false),
            (Tier::Privileged, &self.privileged.allow, true),
            (Tier::Namespaced, &local.deny, false),
            (Tier::Namespaced, &local.allow, true),
        ];
        for (tier, policies, allowed) in order {
            if let Some(p) = policies.iter().find(|p| p.matches(src, dst)) {
                return decided(tier, p, allowed);
            }
        }
        PolicyDecision {
            allowed: false,
            decided_by: Decider::DefaultDeny,
        }
    }
}

/// The labels policies see for a remote peer: what it reports about itself (over the peer port,
/// authenticated as that peer) with the local administrator's labels on its Peer object laid
/// over them. The administrator's own assertion wins a clash; a label only the peer reports
/// still counts, as in the reference ClusterLink.
pub fn peer_labels(
    reported: &BTreeMap<String, String>,
    administered: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels = reported.clone();
    labels.extend(administered.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels
}

/// Builds attribute sets with the keys of DESIGN.md §2.
pub fn peer_attributes(out: &mut Attributes, name: &str, labels: &BTreeMap<String, String>) {
    out.insert(attributes::PEER_NAME.into(), name.into());
    for (k, v) in labels {
        out.insert(format!("{}{k}", attributes::PEER_LABELS_PREFIX), v.clone());
    }
}

pub fn export_attributes(
    out: &mut Attributes,
    name: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) {
    out.insert(attributes::EXPORT_NAME.into(), name.into());
    out.insert(attributes::EXPORT_NAMESPACE.into(), namespace.into());
    for (k, v) in labels {
        out.insert(
            format!("{}{k}", attributes::EXPORT_LABELS_PREFIX),
            v.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusterlink_api::parse_manifest;

    fn policy(kind: &str, ns: &str, name: &str, action: &str, from: &str, to: &str) -> Object {
        let ns_line = if ns.is_empty() {
            String::new()
        } else {
            format!(", namespace: {ns}")
        };
        parse_manifest(
            &format!(
                "apiVersion: clusterlink.net/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}{ns_line}}}\nspec:\n  action: {action}\n  from: [{{workloadSelector: {from}}}]\n  to: [{{workloadSelector: {to}}}]\n"
            ),
            "default",
        )
        .unwrap()
    }

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const ALL: &str = "{}";

    #[test]
    fn no_policy_means_default_deny() {
        let d = PolicyEngine::compile([]).decide("default", &attrs(&[]), &attrs(&[]));
        assert!(!d.allowed);
        assert_eq!(d.decided_by, Decider::DefaultDeny);
        assert_eq!(d.to_string(), "denied by default (no policy allows it)");
    }

    /// Each layer shown by removing the one above it.
    #[test]
    fn tiers_in_order() {
        let mut objects = vec![
            policy("PrivilegedAccessPolicy", "", "p-deny", "deny", ALL, ALL),
            policy("PrivilegedAccessPolicy", "", "p-allow", "allow", ALL, ALL),
            policy("AccessPolicy", "default", "ns-deny", "deny", ALL, ALL),
            policy("AccessPolicy", "default", "ns-allow", "allow", ALL, ALL),
        ];
        let expect = [
            "denied by PrivilegedAccessPolicy p-deny",
            "allowed by PrivilegedAccessPolicy p-allow",
            "denied by AccessPolicy default/ns-deny",
            "allowed by AccessPolicy default/ns-allow",
            "denied by default (no policy allows it)",
        ];
        for want in expect {
            let d = PolicyEngine::compile(&objects).decide("default", &attrs(&[]), &attrs(&[]));
            assert_eq!(d.to_string(), want);
            if !objects.is_empty() {
                objects.remove(0);
            }
        }
    }

    #[test]
    fn namespaced_policies_apply_only_in_their_namespace() {
        let objects = [policy("AccessPolicy", "team-a", "allow", "allow", ALL, ALL)];
        let engine = PolicyEngine::compile(&objects);
        assert!(engine.decide("team-a", &attrs(&[]), &attrs(&[])).allowed);
        assert!(!engine.decide("default", &attrs(&[]), &attrs(&[])).allowed);
    }

    #[test]
    fn from_matches_the_source_and_to_the_destination() {
        let objects = [policy(
            "AccessPolicy",
            "default",
            "p1-to-reviews",
            "allow",
            "{matchLabels: {peer.clusterlink.net/name: p1}}",
            "{matchExpressions: [{key: export.clusterlink.net/name, operator: In, values: [reviews]}]}",
        )];
        let engine = PolicyEngine::compile(&objects);
        let known = (attributes::CLIENT_NAMESPACE, "web");
        let p1 = attrs(&[(attributes::PEER_NAME, "p1"), known]);
        let p2 = attrs(&[(attributes::PEER_NAME, "p2"), known]);
        let reviews = attrs(&[
            (attributes::EXPORT_NAME, "reviews"),
            (attributes::PEER_NAME, "p9"),
            known,
        ]);
        let ratings = attrs(&[(attributes::EXPORT_NAME, "ratings")]);
        assert!(engine.decide("default", &p1, &reviews).allowed);
        assert!(!engine.decide("default", &p2, &reviews).allowed);
        assert!(!engine.decide("default", &p1, &ratings).allowed);
        // The same key means the source peer in `from`, never the destination's.
        assert!(!engine.decide("default", &reviews, &p1).allowed);
    }

    #[test]
    fn deny_of_one_client_label_beats_a_broad_allow() {
        let objects = [
            policy(
                "AccessPolicy",
                "default",
                "deny-firefox",
                "deny",
                "{matchLabels: {client.clusterlink.net/labels.app: firefox}}",
                ALL,
            ),
            policy("AccessPolicy", "default", "allow-all", "allow", ALL, ALL),
        ];
        let engine = PolicyEngine::compile(&objects);
        let firefox = attrs(&[("client.clusterlink.net/labels.app", "firefox")]);
        let curl = attrs(&[("client.clusterlink.net/labels.app", "curl")]);
        assert_eq!(
            engine.decide("default", &firefox, &attrs(&[])).to_string(),
            "denied by AccessPolicy default/deny-firefox"
        );
        assert!(engine.decide("default", &curl, &attrs(&[])).allowed);
    }

    #[test]
    fn an_unknown_client_is_denied_only_while_some_policy_selects_clients() {
        let allow_all = policy("AccessPolicy", "default", "allow-all", "allow", ALL, ALL);
        let peer_only = attrs(&[(attributes::PEER_NAME, "p1")]);
        let engine = PolicyEngine::compile([&allow_all]);
        assert!(engine.decide("default", &peer_only, &attrs(&[])).allowed);
        // A policy about clients, even in another namespace and even a deny, changes that.
        let elsewhere = policy(
            "AccessPolicy",
            "team-b",
            "deny-firefox",
            "deny",
            "{matchLabels: {client.clusterlink.net/labels.app: firefox}}",
            ALL,
        );
        let engine = PolicyEngine::compile([&allow_all, &elsewhere]);
        let d = engine.decide("default", &peer_only, &attrs(&[]));
        assert_eq!(d.decided_by, Decider::ClientAttributesUnknown);
        assert!(
            d.to_string().contains("client's attributes are unknown"),
            "{d}"
        );
        let known = attrs(&[(attributes::CLIENT_NAMESPACE, "web")]);
        assert!(engine.decide("default", &known, &attrs(&[])).allowed);
    }

    #[test]
    fn the_administrators_peer_labels_win_over_what_the_peer_reports() {
        let pairs = |p: &[(&str, &str)]| -> BTreeMap<String, String> {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let merged = peer_labels(
            &pairs(&[("env", "prod"), ("zone", "a")]),
            &pairs(&[("env", "dev")]),
        );
        assert_eq!(merged, pairs(&[("env", "dev"), ("zone", "a")]));
    }

    #[test]
    fn attribute_builders_use_the_design_keys() {
        let mut a = Attributes::new();
        let labels: BTreeMap<String, String> = [("env".to_string(), "prod".to_string())].into();
        peer_attributes(&mut a, "p1", &labels);
        export_attributes(&mut a, "reviews", "default", &labels);
        assert_eq!(a["peer.clusterlink.net/name"], "p1");
        assert_eq!(a["peer.clusterlink.net/labels.env"], "prod");
        assert_eq!(a["export.clusterlink.net/name"], "reviews");
        assert_eq!(a["export.clusterlink.net/namespace"], "default");
        assert_eq!(a["export.clusterlink.net/labels.env"], "prod");
    }
}
