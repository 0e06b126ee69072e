//! The access policy engine.
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

/// Attribute key/values a selector matches (`clusterlink_api::attributes` lists the keys).
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
    /// The client's attributes are unknown while policies select clients by attribute;
    /// `selected_by` names one such policy (`AccessPolicy ns/name`).
    ClientAttributesUnknown {
        selected_by: String,
    },
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
            Decider::ClientAttributesUnknown { .. } => PolicyRef::UNKNOWN_CLIENT.into(),
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
            Decider::ClientAttributesUnknown { selected_by } => write!(
                f,
                "denied: the client's attributes are unknown (no pod or client-attributes entry \
                 for its address), and policies select clients by attribute ({selected_by}, \
                 maybe others)"
            ),
            Decider::DefaultDeny => write!(f, "denied by default (no policy allows it)"),
        }
    }
}

#[derive(Debug)]
struct CompiledPolicy {
    namespace: String,
    name: String,
    from: Vec<LabelSelector>,
    to: Vec<LabelSelector>,
    /// `AccessPolicySpec::selects_clients`.
    selects_clients: bool,
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
            selects_clients: spec.selects_clients(),
        }
    }

    fn matches(&self, src: &impl AttributeLookup, dst: &impl AttributeLookup) -> bool {
        self.from.iter().any(|s| s.matches(src)) && self.to.iter().any(|s| s.matches(dst))
    }

    /// How a person names it: `AccessPolicy ns/name`, or `PrivilegedAccessPolicy name`.
    fn title(&self) -> String {
        if self.namespace.is_empty() {
            format!("PrivilegedAccessPolicy {}", self.name)
        } else {
            format!("AccessPolicy {}/{}", self.namespace, self.name)
        }
    }
}

/// Which side of a connection a policy's required attribute is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    From,
    To,
}

/// An attribute a policy cannot match without: a key that every selector of one side requires
/// with `matchLabels`, and the values they require (one per selector, deduplicated).
struct Anchor {
    side: Side,
    key: String,
    values: Vec<String>,
}

impl CompiledPolicy {
    /// Every attribute the policy cannot match without: for each side, each key that all its
    /// selectors require with `matchLabels`.
    fn anchors(&self) -> Vec<Anchor> {
        let mut anchors = Vec::new();
        for (side, selectors) in [(Side::To, &self.to), (Side::From, &self.from)] {
            let Some((first, rest)) = selectors.split_first() else {
                continue;
            };
            for key in first.match_labels.keys() {
                if !rest.iter().all(|s| s.match_labels.contains_key(key)) {
                    continue;
                }
                let mut values: Vec<String> = selectors
                    .iter()
                    .map(|s| s.match_labels[key].clone())
                    .collect();
                values.sort();
                values.dedup();
                anchors.push(Anchor {
                    side,
                    key: key.clone(),
                    values,
                });
            }
        }
        anchors
    }
}

/// One list of policies (a tier's denies, or its allows) in decision order, and an index of the
/// ones a connection can match.
///
/// Most policies require an exact attribute (`export.clusterlink.net/name: reviews` in every
/// `to` selector), so only those whose required value the connection has are checked, with the
/// few that require none, in the same order a scan would take: 1,000 policies about other
/// exports cost a hash lookup, not 1,000 selector checks. Of the attributes a policy requires,
/// it is filed under the one the fewest policies share, so policies that all name one export
/// but different clients are told apart by client.
#[derive(Default)]
struct Ordered {
    /// In name order, so which policy is reported as the decider is stable.
    policies: Vec<CompiledPolicy>,
    /// Positions of policies without an anchor: candidates for every connection.
    unanchored: Vec<u32>,
    /// For each anchored side and key: value → positions of the policies requiring it, ascending.
    anchored: Vec<(Side, String, HashMap<String, Vec<u32>>)>,
}

impl Ordered {
    /// Sorts the policies and builds the index.
    fn build(&mut self) {
        self.policies.sort_by(|a, b| a.name.cmp(&b.name));
        self.unanchored.clear();
        self.anchored.clear();
        let candidates: Vec<Vec<Anchor>> = self.policies.iter().map(|p| p.anchors()).collect();
        let mut sharing: HashMap<(Side, &str, &str), usize> = HashMap::new();
        for anchor in candidates.iter().flatten() {
            for value in &anchor.values {
                *sharing
                    .entry((anchor.side, &anchor.key, value))
                    .or_default() += 1;
            }
        }
        // The candidates a connection with that anchor's values would have to check.
        let cost = |anchor: &Anchor| -> usize {
            anchor
                .values
                .iter()
                .map(|v| sharing[&(anchor.side, anchor.key.as_str(), v.as_str())])
                .max()
                .unwrap_or(0)
        };
        let chosen: Vec<Option<&Anchor>> = candidates
            .iter()
            .map(|anchors| anchors.iter().min_by_key(|a| cost(a)))
            .collect();
        for (position, anchor) in chosen.into_iter().enumerate() {
            // Positions fit: a store holds far fewer than 4 billion policies.
            let position = u32::try_from(position).unwrap_or(u32::MAX);
            let Some(anchor) = anchor else {
                self.unanchored.push(position);
                continue;
            };
            let at = match self
                .anchored
                .iter()
                .position(|(side, key, _)| *side == anchor.side && *key == anchor.key)
            {
                Some(at) => at,
                None => {
                    self.anchored
                        .push((anchor.side, anchor.key.clone(), HashMap::new()));
                    self.anchored.len() - 1
                }
            };
            for value in &anchor.values {
                self.anchored[at]
                    .2
                    .entry(value.clone())
                    .or_default()
                    .push(position);
            }
        }
    }

    /// The first policy, in order, that matches `src` to `dst`.
    fn first_match(
        &self,
        src: &impl AttributeLookup,
        dst: &impl AttributeLookup,
    ) -> Option<&CompiledPolicy> {
        if self.anchored.is_empty() {
            return self.policies.iter().find(|p| p.matches(src, dst));
        }
        let mut lists: Vec<&[u32]> = Vec::with_capacity(self.anchored.len() + 1);
        lists.push(&self.unanchored);
        for (side, key, by_value) in &self.anchored {
            let value = match side {
                Side::From => src.attribute(key),
                Side::To => dst.attribute(key),
            };
            if let Some(positions) = value.and_then(|v| by_value.get(v)) {
                lists.push(positions);
            }
        }
        // The candidates in order: a merge of a few ascending lists (each policy is in one).
        loop {
            let (list, &position) = lists
                .iter()
                .enumerate()
                .filter_map(|(i, l)| l.first().map(|p| (i, p)))
                .min_by_key(|(_, p)| **p)?;
            lists[list] = &lists[list][1..];
            let policy = &self.policies[position as usize];
            if policy.matches(src, dst) {
                return Some(policy);
            }
        }
    }
}

/// Deny and allow policies of one tier or namespace.
#[derive(Default)]
struct Layer {
    deny: Ordered,
    allow: Ordered,
}

impl Layer {
    fn policies(&self) -> impl Iterator<Item = &CompiledPolicy> {
        self.deny.policies.iter().chain(&self.allow.policies)
    }

    fn add(&mut self, action: PolicyAction, policy: CompiledPolicy) {
        match action {
            PolicyAction::Deny => self.deny.policies.push(policy),
            PolicyAction::Allow => self.allow.policies.push(policy),
        }
    }

    fn build(&mut self) {
        self.deny.build();
        self.allow.build();
    }
}

/// All access policies, ready to decide.
#[derive(Default)]
pub struct PolicyEngine {
    privileged: Layer,
    namespaces: HashMap<String, Layer>,
    /// The first policy (privileged, then by namespace) whose `from` selector is not empty.
    selects_clients: Option<String>,
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
        engine.privileged.build();
        engine.namespaces.values_mut().for_each(Layer::build);
        let mut namespaces: Vec<(&String, &Layer)> = engine.namespaces.iter().collect();
        namespaces.sort_unstable_by_key(|(namespace, _)| *namespace);
        engine.selects_clients = std::iter::once(&engine.privileged)
            .chain(namespaces.into_iter().map(|(_, layer)| layer))
            .flat_map(Layer::policies)
            .find(|p| p.selects_clients)
            .map(CompiledPolicy::title);
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
        if let Some(selected_by) = &self.selects_clients
            && !src.keys().any(|k| attributes::is_client_attribute(k))
        {
            return PolicyDecision {
                allowed: false,
                decided_by: Decider::ClientAttributesUnknown {
                    selected_by: selected_by.clone(),
                },
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
            if let Some(p) = policies.first_match(src, dst) {
                return decided(tier, p, allowed);
            }
        }
        PolicyDecision {
            allowed: false,
            decided_by: Decider::DefaultDeny,
        }
    }
}

impl PolicyEngine {
    /// Whether some client of the peer whose attributes are `peer` would be allowed to `dst`:
    /// what a catalog offers. Each `from` selector of each allow policy that could decide
    /// (privileged, then `namespace`'s) that matches `dst` gives one client that selector
    /// matches, and the engine decides it as a real connection: an offer is always backed by a
    /// client that would get through. A client that only slips between several policies' denies
    /// is not looked for, so an export may be left out that an unusual client could reach.
    pub fn allows_some_client(
        &self,
        namespace: &str,
        peer: &Attributes,
        dst: &impl AttributeLookup,
    ) -> bool {
        if self.selects_clients.is_none() && self.decide(namespace, peer, dst).allowed {
            return true;
        }
        let empty = Layer::default();
        let local = self.namespaces.get(namespace).unwrap_or(&empty);
        self.privileged
            .allow
            .policies
            .iter()
            .chain(&local.allow.policies)
            .filter(|p| p.to.iter().any(|s| s.matches(dst)))
            .flat_map(|p| &p.from)
            .any(|from| {
                let mut src = peer.clone();
                add_client_matching(from, &mut src);
                self.decide(namespace, &src, dst).allowed
            })
    }
}

/// Adds to `src` the client attributes of a client `selector` matches (as far as the client's
/// side of it goes), with at least one client attribute, so the client is not unknown.
fn add_client_matching(selector: &LabelSelector, src: &mut Attributes) {
    use clusterlink_api::SelectorOperator;
    for (k, v) in &selector.match_labels {
        if attributes::is_client_attribute(k) {
            src.insert(k.clone(), v.clone());
        }
    }
    for r in &selector.match_expressions {
        if !attributes::is_client_attribute(&r.key) || src.contains_key(&r.key) {
            continue;
        }
        let value = match r.operator {
            SelectorOperator::In => r.values.first().cloned(),
            SelectorOperator::Exists => Some("any".to_string()),
            SelectorOperator::NotIn => (0..=r.values.len())
                .map(|i| format!("other-{i}"))
                .find(|v| !r.values.contains(v)),
            SelectorOperator::DoesNotExist => None,
        };
        if let Some(value) = value {
            src.insert(r.key.clone(), value);
        }
    }
    if !src.keys().any(|k| attributes::is_client_attribute(k)) {
        let mentioned = |key: &str| {
            selector.match_labels.contains_key(key)
                || selector.match_expressions.iter().any(|r| r.key == key)
        };
        if let Some(key) = [
            attributes::CLIENT_NAMESPACE,
            attributes::CLIENT_SERVICE_ACCOUNT,
        ]
        .into_iter()
        .find(|k| !mentioned(k))
        {
            src.insert(key.to_string(), "any".to_string());
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

/// Builds attribute sets with the keys of `clusterlink_api::attributes`.
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
    fn some_client_is_allowed_only_when_a_real_decision_would_allow_one() {
        let peer = attrs(&[("peer.clusterlink.net/name", "east")]);
        let export = |name: &str| attrs(&[("export.clusterlink.net/name", name)]);
        let engine = PolicyEngine::compile(&[
            // Only clients labelled app=web, of any peer, to "web".
            policy(
                "AccessPolicy",
                "default",
                "web-clients",
                "allow",
                "{matchLabels: {client.clusterlink.net/labels.app: web}}",
                "{matchLabels: {export.clusterlink.net/name: web}}",
            ),
            // Anything to "db", but east is denied it outright.
            policy(
                "AccessPolicy",
                "default",
                "db",
                "allow",
                ALL,
                "{matchLabels: {export.clusterlink.net/name: db}}",
            ),
            policy(
                "AccessPolicy",
                "default",
                "no-east-db",
                "deny",
                "{matchLabels: {peer.clusterlink.net/name: east}}",
                "{matchLabels: {export.clusterlink.net/name: db}}",
            ),
            // Clients not in the frontend namespace may reach "api"; a deny covers one client.
            policy(
                "AccessPolicy",
                "default",
                "api",
                "allow",
                "{matchExpressions: [{key: client.clusterlink.net/namespace, operator: NotIn, values: [frontend]}]}",
                "{matchLabels: {export.clusterlink.net/name: api}}",
            ),
            policy(
                "AccessPolicy",
                "default",
                "api-not-batch",
                "deny",
                "{matchLabels: {client.clusterlink.net/labels.app: batch}}",
                "{matchLabels: {export.clusterlink.net/name: api}}",
            ),
        ]);
        let reachable = |name: &str| engine.allows_some_client("default", &peer, &export(name));
        assert!(reachable("web"));
        assert!(!reachable("db"), "denied to east for every client");
        assert!(reachable("api"));
        assert!(!reachable("cache"), "no policy allows it");
        assert!(
            !engine.allows_some_client("other", &peer, &export("web")),
            "policies of another namespace do not decide"
        );
        let west = attrs(&[("peer.clusterlink.net/name", "west")]);
        assert!(engine.allows_some_client("default", &west, &export("db")));
    }

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
        assert_eq!(
            d.decided_by,
            Decider::ClientAttributesUnknown {
                selected_by: "AccessPolicy team-b/deny-firefox".into()
            }
        );
        // The denial names the policy that makes clients need attributes.
        assert!(
            d.to_string().contains("client's attributes are unknown")
                && d.to_string()
                    .contains("(AccessPolicy team-b/deny-firefox, maybe others)"),
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

    mod indexed {
        //! The index decides exactly as a scan of every policy in order would.
        use super::*;
        use clusterlink_api::{LabelSelectorRequirement, SelectorOperator};
        use proptest::prelude::*;

        const KEYS: [&str; 4] = [
            attributes::EXPORT_NAME,
            attributes::CLIENT_NAMESPACE,
            attributes::PEER_NAME,
            "client.clusterlink.net/labels.app",
        ];

        fn selector() -> impl Strategy<Value = LabelSelector> {
            let labels = proptest::collection::btree_map(
                prop::sample::select(KEYS.to_vec()).prop_map(String::from),
                prop::sample::select(vec!["a", "b"]).prop_map(String::from),
                0..3,
            );
            let expression = (
                prop::sample::select(KEYS.to_vec()),
                prop::sample::select(vec![
                    SelectorOperator::In,
                    SelectorOperator::NotIn,
                    SelectorOperator::Exists,
                    SelectorOperator::DoesNotExist,
                ]),
            )
                .prop_map(|(key, operator)| LabelSelectorRequirement {
                    key: key.into(),
                    operator,
                    values: match operator {
                        SelectorOperator::In | SelectorOperator::NotIn => vec!["a".into()],
                        _ => vec![],
                    },
                });
            (labels, proptest::collection::vec(expression, 0..2)).prop_map(|(l, e)| LabelSelector {
                match_labels: l,
                match_expressions: e,
            })
        }

        fn compiled() -> impl Strategy<Value = (bool, CompiledPolicy)> {
            (
                any::<bool>(),
                proptest::collection::vec(selector(), 0..3),
                proptest::collection::vec(selector(), 0..3),
                0u32..1000,
            )
                .prop_map(|(allow, from, to, n)| {
                    let policy = CompiledPolicy {
                        namespace: "default".into(),
                        name: format!("p{n:04}"),
                        selects_clients: from.iter().any(|s| *s != LabelSelector::everything()),
                        from,
                        to,
                    };
                    (allow, policy)
                })
        }

        fn side_attributes() -> impl Strategy<Value = Attributes> {
            proptest::collection::btree_map(
                prop::sample::select(KEYS.to_vec()).prop_map(String::from),
                prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from),
                0..4,
            )
        }

        proptest! {
            #[test]
            fn decides_as_a_scan_would(
                policies in proptest::collection::vec(compiled(), 0..24),
                src in side_attributes(),
                dst in side_attributes(),
            ) {
                let mut layer = Layer::default();
                for (allow, policy) in policies {
                    let action = if allow { PolicyAction::Allow } else { PolicyAction::Deny };
                    layer.add(action, policy);
                }
                layer.build();
                for list in [&layer.deny, &layer.allow] {
                    let scanned = list.policies.iter().find(|p| p.matches(&src, &dst));
                    let indexed = list.first_match(&src, &dst);
                    prop_assert_eq!(
                        scanned.map(|p| p.name.as_str()),
                        indexed.map(|p| p.name.as_str())
                    );
                }
            }
        }
    }
}
