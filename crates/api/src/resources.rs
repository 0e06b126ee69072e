//! The five kinds: `Peer`, `Export`, `Import`, `AccessPolicy`, `PrivilegedAccessPolicy`.

// Each custom resource lists several `printcolumn(name = …, type_ = …)`; clippy reads the
// repeated keys of different columns as one attribute given twice.
#![cfg_attr(feature = "kubernetes", allow(clippy::duplicated_attributes))]

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::conditions::ConditionType;
use crate::group::{API_VERSION, DEFAULT_NAMESPACE, SYSTEM_NAMESPACE};
use crate::meta::{ObjectMeta, Status};
use crate::selector::LabelSelector;
use crate::validation::{
    FieldErrors, check_dns_label, check_dns_name, check_dns_subdomain, check_host,
    check_rfc1035_label,
};
#[cfg(feature = "kubernetes")]
use std::borrow::Cow;

/// Where objects of a kind live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// In the system namespace only (Peers, as in the established ClusterLink).
    System,
    /// In any namespace.
    Namespaced,
    /// Cluster-wide, no namespace.
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Peer,
    Export,
    Import,
    AccessPolicy,
    PrivilegedAccessPolicy,
}

impl Kind {
    /// The one condition objects of this kind carry.
    pub const fn condition(self) -> ConditionType {
        match self {
            Kind::Peer => ConditionType::PeerReachable,
            Kind::Export => ConditionType::ExportValid,
            Kind::Import => ConditionType::ImportValid,
            Kind::AccessPolicy | Kind::PrivilegedAccessPolicy => ConditionType::PolicyValid,
        }
    }

    pub const ALL: [Kind; 5] = [
        Kind::Peer,
        Kind::Export,
        Kind::Import,
        Kind::AccessPolicy,
        Kind::PrivilegedAccessPolicy,
    ];

    /// The `kind` field of a manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Peer => "Peer",
            Kind::Export => "Export",
            Kind::Import => "Import",
            Kind::AccessPolicy => "AccessPolicy",
            Kind::PrivilegedAccessPolicy => "PrivilegedAccessPolicy",
        }
    }

    /// The resource name in REST paths (`imports`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Peer => "peers",
            Kind::Export => "exports",
            Kind::Import => "imports",
            Kind::AccessPolicy => "accesspolicies",
            Kind::PrivilegedAccessPolicy => "privilegedaccesspolicies",
        }
    }

    /// Other names a person may type on the command line.
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Kind::Peer => &["peer"],
            Kind::Export => &["export"],
            Kind::Import => &["import"],
            Kind::AccessPolicy => &["accesspolicy", "policy", "policies", "ap"],
            Kind::PrivilegedAccessPolicy => &[
                "privilegedaccesspolicy",
                "privilegedpolicy",
                "privilegedpolicies",
                "pap",
            ],
        }
    }

    pub fn scope(self) -> Scope {
        match self {
            Kind::Peer => Scope::System,
            Kind::Export | Kind::Import | Kind::AccessPolicy => Scope::Namespaced,
            Kind::PrivilegedAccessPolicy => Scope::Cluster,
        }
    }

    /// From a manifest's `kind` field (exact, as Kubernetes requires).
    pub fn from_manifest_kind(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// From a REST path segment (`imports`).
    pub fn from_plural(plural: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.plural() == plural)
    }

    /// From what a person typed: the kind, its plural or an alias, in any case.
    pub fn from_user_input(input: &str) -> Option<Kind> {
        let lower = input.to_ascii_lowercase();
        Kind::ALL.into_iter().find(|k| {
            k.plural() == lower
                || k.as_str().eq_ignore_ascii_case(&lower)
                || k.aliases().contains(&lower.as_str())
        })
    }

    /// The namespace an object of this kind gets when its manifest names none.
    pub fn default_namespace(self) -> &'static str {
        match self.scope() {
            Scope::System => SYSTEM_NAMESPACE,
            Scope::Namespaced => DEFAULT_NAMESPACE,
            Scope::Cluster => "",
        }
    }

    /// The namespace an object of this kind lives in when `namespace` is the one in effect: a
    /// namespaced kind lives there; Peers live in the system namespace and cluster-scoped kinds
    /// in none, whatever is in effect.
    pub fn namespace_in(self, namespace: &str) -> &str {
        match self.scope() {
            Scope::Namespaced => namespace,
            Scope::System | Scope::Cluster => self.default_namespace(),
        }
    }
}

/// A kind serializes as its manifest name (`Import`).
impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of an object: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind.scope() {
            Scope::Namespaced => write!(f, "{} {}/{}", self.kind, self.namespace, self.name),
            Scope::System | Scope::Cluster => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// A TCP port, 1–65535. Deserializing reports an out-of-range number in those words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Port(u16);

impl Port {
    pub fn new(port: u16) -> Option<Port> {
        (port != 0).then_some(Port(port))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// In custom resource schemas, a port is what [`Port::new`] accepts.
#[cfg(feature = "kubernetes")]
impl schemars::JsonSchema for Port {
    fn schema_name() -> Cow<'static, str> {
        "Port".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "integer", "format": "int32", "minimum": 1, "maximum": 65535})
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        u16::try_from(n).ok().and_then(Port::new).ok_or_else(|| {
            serde::de::Error::custom(format!("must be between 1 and 65535 (got {n})"))
        })
    }
}

/// A typed object in manifest shape. `apiVersion` and `kind` are checked on parse and always
/// serialized from the spec type, so they cannot disagree with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resource<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: S,
    /// Written by the gateway; ignored on input, as Kubernetes does for the main resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

/// What each kind's spec type knows about itself.
pub trait Spec {
    const KIND: Kind;
    /// Checks of the name beyond being non-empty, per kind.
    fn check_name(name: &str) -> Result<(), String>;
    /// The name's checks where they depend on the spec; by default, [`Spec::check_name`].
    fn check_name_for(&self, name: &str) -> Result<(), String> {
        Self::check_name(name)
    }
    fn validate(&self, errors: &mut FieldErrors);
}

impl<S: Spec> Resource<S> {
    pub fn new(name: impl Into<String>, namespace: impl Into<String>, spec: S) -> Self {
        Resource {
            api_version: API_VERSION.to_string(),
            kind: S::KIND.as_str().to_string(),
            metadata: ObjectMeta {
                name: name.into(),
                namespace: namespace.into(),
                ..Default::default()
            },
            spec,
            status: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Peer

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(
    feature = "kubernetes",
    derive(kube_derive::CustomResource, schemars::JsonSchema),
    kube(
        group = "clusterlink.net",
        version = "v1alpha1",
        kind = "Peer",
        root = "KubePeer",
        doc = "A site of the fabric: its name is its TLS identity; spec.gateways says where its gateway listens (none: it dials this site), spec.dial keeps a link dialed to it.",
        namespaced,
        status = "Status",
        crates(kube_core = "::kube_core"),
        category = "clusterlink",
        printcolumn(
            name = "Gateway",
            type_ = "string",
            json_path = ".spec.gateways[0].host"
        ),
        printcolumn(name = "Port", type_ = "integer", json_path = ".spec.gateways[0].port"),
        printcolumn(
            name = "Reachable",
            type_ = "string",
            json_path = ".status.conditions[?(@.type==\"PeerReachable\")].status"
        ),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        ),
    )
)]
pub struct PeerSpec {
    /// Where the peer's gateways listen. Empty for a peer that cannot be reached (behind NAT):
    /// it is then reached only over a link it dials to this gateway (its Peer for this site says
    /// `dial: true`).
    #[serde(default)]
    pub gateways: Vec<Endpoint>,
    /// Keep a link dialed to one of `gateways` (trying them in turn), so that this site needs no
    /// inbound path: tunnels of both directions ride it, and the peer needs no address for this
    /// site. Without a link up, tunnels to the peer are dialed directly as usual.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dial: bool,
    /// Import what the peer offers: each offered export the rule selects becomes an Import of
    /// the same name in the same namespace, kept in step with the offers. Without it, nothing
    /// the peer offers is imported on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorRule>,
    /// The protocol the peer's gateways speak: this project's own (`native`, the default), or
    /// that of the Go ClusterLink gateways (`go`), for a fabric that mixes the two.
    #[serde(default, skip_serializing_if = "PeerProtocol::is_native")]
    pub protocol: PeerProtocol,
}

/// The protocol a Peer's gateways speak on their peer port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "kubernetes", derive(schemars::JsonSchema))]
pub enum PeerProtocol {
    /// This project's tunnel protocol: framed, reusable tunnels, catalogs, links, revocation
    /// lists passed between gateways.
    #[default]
    Native,
    /// The Go ClusterLink's: a heartbeat (`GET /healthz`), an authorization (`POST /authz`)
    /// answered with a short-lived token, and a tunnel (`CONNECT` with that token) per
    /// connection. Such a peer has no catalog and cannot keep a link.
    Go,
}

impl PeerProtocol {
    pub fn is_native(&self) -> bool {
        *self == PeerProtocol::Native
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PeerProtocol::Native => "native",
            PeerProtocol::Go => "go",
        }
    }
}

/// A Peer's rule for importing what it offers (`spec.mirror`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "kubernetes", derive(schemars::JsonSchema))]
pub struct MirrorRule {
    /// Which offered exports to import, by their labels; `{}` imports every offer.
    #[serde(default)]
    pub exports: LabelSelector,
    /// Added to an offer's port to make its Import's port: for sites whose own services use the
    /// same ports on the same host. 0 by default.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub port_offset: u16,
    /// Only offers in these namespaces are imported; none listed: any namespace. A peer chooses
    /// the namespaces it offers in, and each mirrored Import lands in its offer's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// At most this many Imports from this peer ([`DEFAULT_MAX_IMPORTS`] when left out): a peer
    /// that offers thousands of exports cannot use up this site's import ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_imports: Option<u32>,
}

/// Imports one mirror rule makes unless it says otherwise: far more services than one peer
/// usually shares, a hundredth of the ports a Kubernetes site allocates to imports.
pub const DEFAULT_MAX_IMPORTS: u32 = 100;

fn is_zero(n: &u16) -> bool {
    *n == 0
}

impl MirrorRule {
    pub fn validate(&self, errors: &mut FieldErrors) {
        self.exports.validate("spec.mirror.exports", errors);
        for (i, namespace) in self.namespaces.iter().enumerate() {
            if let Err(e) = check_dns_label(namespace) {
                errors.push(format!("spec.mirror.namespaces[{i}]"), e);
            }
        }
    }

    pub fn max_imports(&self) -> usize {
        self.max_imports.unwrap_or(DEFAULT_MAX_IMPORTS) as usize
    }
}

/// One address of a peer's gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "kubernetes", derive(schemars::JsonSchema))]
pub struct Endpoint {
    pub host: String,
    pub port: Port,
}

impl Spec for PeerSpec {
    const KIND: Kind = Kind::Peer;

    fn check_name(name: &str) -> Result<(), String> {
        check_dns_name(name).map_err(|e| format!("{e} (a peer's name is its TLS identity)"))
    }

    fn validate(&self, errors: &mut FieldErrors) {
        if self.dial && self.gateways.is_empty() {
            errors.push(
                "spec.gateways",
                "dial: true needs at least one gateway {host, port} to dial",
            );
        }
        for (i, g) in self.gateways.iter().enumerate() {
            if let Err(e) = check_host(&g.host) {
                errors.push(format!("spec.gateways[{i}].host"), e);
            }
        }
        if let Some(rule) = &self.mirror {
            rule.validate(errors);
        }
        if self.protocol == PeerProtocol::Go {
            // The Go ClusterLink neither accepts links nor serves catalogs.
            if self.dial {
                errors.push("spec.dial", "a peer of protocol go cannot keep a link (the Go ClusterLink has none); it needs gateways it can be reached at");
            }
            if self.mirror.is_some() {
                errors.push("spec.mirror", "a peer of protocol go offers no catalog to mirror (the Go ClusterLink has none); write its Imports by hand");
            }
            if self.gateways.is_empty() {
                errors.push("spec.gateways", "a peer of protocol go needs at least one gateway {host, port}: it is only reached directly");
            }
        }
    }
}

pub type Peer = Resource<PeerSpec>;

// ---------------------------------------------------------------------------------------------
// Export

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(
    feature = "kubernetes",
    derive(kube_derive::CustomResource, schemars::JsonSchema),
    kube(
        group = "clusterlink.net",
        version = "v1alpha1",
        kind = "Export",
        root = "KubeExport",
        doc = "A local service shared with the fabric: spec.host (default: the Service of the same name) and spec.port.",
        namespaced,
        status = "Status",
        crates(kube_core = "::kube_core"),
        category = "clusterlink",
        printcolumn(name = "Host", type_ = "string", json_path = ".spec.host"),
        printcolumn(name = "Port", type_ = "integer", json_path = ".spec.port"),
        printcolumn(
            name = "Valid",
            type_ = "string",
            json_path = ".status.conditions[?(@.type==\"ExportValid\")].status"
        ),
        printcolumn(
            name = "Reason",
            type_ = "string",
            json_path = ".status.conditions[?(@.type==\"ExportValid\")].reason"
        ),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        ),
    )
)]
pub struct ExportSpec {
    /// The backend to dial; absent means the service of the same name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// The backend's port. On Kubernetes an export without `host` may leave it out: the port of
    /// its Service is used (a Service with several ports needs it). Required everywhere else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
}

impl Spec for ExportSpec {
    const KIND: Kind = Kind::Export;

    fn check_name(name: &str) -> Result<(), String> {
        check_dns_subdomain(name)
    }

    /// An export without a host serves the Service of its name, whose name is an RFC 1035 label.
    fn check_name_for(&self, name: &str) -> Result<(), String> {
        if self.host.is_empty() {
            check_rfc1035_label(name).map_err(|e| {
                format!("{e} (an export without spec.host is the Service of the same name)")
            })
        } else {
            check_dns_subdomain(name)
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        if !self.host.is_empty()
            && let Err(e) = check_host(&self.host)
        {
            errors.push("spec.host", e);
        }
        if !self.host.is_empty() && self.port.is_none() {
            errors.push(
                "spec.port",
                "required with spec.host (only an export of a Service may leave it out, to use the Service's port)",
            );
        }
    }
}

pub type Export = Resource<ExportSpec>;

/// How an export without `spec.host` names the service of its own name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceNaming {
    /// Standalone: the name as it is, for the host's resolver (`/etc/hosts`, search domains).
    Bare,
    /// Kubernetes: the Service of that name in the export's namespace, as cluster DNS names it.
    Cluster,
}

impl Export {
    /// Where connections to this export go: `spec.host`, or else the service of the export's
    /// own name.
    pub fn backend_host(&self, naming: ServiceNaming) -> String {
        match (self.spec.host.is_empty(), naming) {
            (false, _) => self.spec.host.clone(),
            (true, ServiceNaming::Bare) => self.metadata.name.clone(),
            (true, ServiceNaming::Cluster) => {
                format!("{}.{}.svc", self.metadata.name, self.metadata.namespace)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Import

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(
    feature = "kubernetes",
    derive(kube_derive::CustomResource, schemars::JsonSchema),
    kube(
        group = "clusterlink.net",
        version = "v1alpha1",
        kind = "Import",
        root = "KubeImport",
        doc = "A remote service made local: a Service on spec.port reaching its sources' export through the data plane on spec.targetPort.",
        namespaced,
        status = "Status",
        crates(kube_core = "::kube_core"),
        category = "clusterlink",
        printcolumn(name = "Port", type_ = "integer", json_path = ".spec.port"),
        printcolumn(name = "Target", type_ = "integer", json_path = ".spec.targetPort"),
        printcolumn(name = "LB", type_ = "string", json_path = ".spec.lbScheme"),
        printcolumn(
            name = "Valid",
            type_ = "string",
            json_path = ".status.conditions[?(@.type==\"ImportValid\")].status"
        ),
        printcolumn(
            name = "Reason",
            type_ = "string",
            json_path = ".status.conditions[?(@.type==\"ImportValid\")].reason"
        ),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        ),
    )
)]
pub struct ImportSpec {
    /// The port local clients connect to.
    pub port: Port,
    /// Where the data plane listens for this import; allocated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<Port>,
    pub sources: Vec<ImportSource>,
    #[serde(default)]
    pub lb_scheme: LbScheme,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "kubernetes", derive(schemars::JsonSchema))]
pub struct ImportSource {
    pub peer: String,
    pub export_name: String,
    pub export_namespace: String,
}

/// How an import picks among its sources for each new connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kubernetes", derive(schemars::JsonSchema))]
pub enum LbScheme {
    #[default]
    #[serde(rename = "round-robin")]
    RoundRobin,
    #[serde(rename = "random")]
    Random,
    /// Sources in list order: the first is primary, the rest are backups.
    #[serde(rename = "static")]
    Static,
}

impl LbScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            LbScheme::RoundRobin => "round-robin",
            LbScheme::Random => "random",
            LbScheme::Static => "static",
        }
    }
}

impl std::fmt::Display for LbScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LbScheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round-robin" => Ok(LbScheme::RoundRobin),
            "random" => Ok(LbScheme::Random),
            "static" => Ok(LbScheme::Static),
            _ => Err(format!(
                "unknown lbScheme {s:?}: use round-robin, random or static"
            )),
        }
    }
}

impl Spec for ImportSpec {
    const KIND: Kind = Kind::Import;

    fn check_name(name: &str) -> Result<(), String> {
        // An import becomes a Kubernetes Service, whose name is an RFC 1035 label.
        check_rfc1035_label(name)
    }

    fn validate(&self, errors: &mut FieldErrors) {
        if self.sources.is_empty() {
            errors.push(
                "spec.sources",
                "must list at least one source {peer, exportName, exportNamespace}",
            );
        }
        for (i, s) in self.sources.iter().enumerate() {
            let path = format!("spec.sources[{i}]");
            if let Err(e) = check_dns_name(&s.peer) {
                errors.push(format!("{path}.peer"), e);
            }
            if let Err(e) = check_dns_subdomain(&s.export_name) {
                errors.push(format!("{path}.exportName"), e);
            }
            if let Err(e) = check_dns_label(&s.export_namespace) {
                errors.push(format!("{path}.exportNamespace"), e);
            }
            if let Some(j) = self.sources[..i].iter().position(|earlier| earlier == s) {
                errors.push(path, format!("duplicates spec.sources[{j}]"));
            }
        }
    }
}

pub type Import = Resource<ImportSpec>;

// ---------------------------------------------------------------------------------------------
// Access policies

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(
    feature = "kubernetes",
    derive(kube_derive::CustomResource, schemars::JsonSchema),
    kube(
        group = "clusterlink.net",
        version = "v1alpha1",
        kind = "AccessPolicy",
        root = "KubeAccessPolicy",
        doc = "Allows or denies connections in its namespace (the import side on egress, the export side on ingress).",
        namespaced,
        shortname = "ap",
        status = "Status",
        crates(kube_core = "::kube_core"),
        category = "clusterlink",
        printcolumn(name = "Action", type_ = "string", json_path = ".spec.action"),
        printcolumn(
            name = "Valid",
            type_ = "string",
            json_path = ".status.conditions[?(@.type==\"PolicyValid\")].status"
        ),
        printcolumn(
            name = "Reason",
            type_ = "string",
            json_path = ".status.conditions[?(@.type==\"PolicyValid\")].reason"
        ),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        ),
    )
)]
pub struct AccessPolicySpec {
    pub action: PolicyAction,
    pub from: Vec<WorkloadSelectorEntry>,
    pub to: Vec<WorkloadSelectorEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "kubernetes", derive(schemars::JsonSchema))]
pub enum PolicyAction {
    Allow,
    Deny,
}

impl PolicyAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyAction::Allow => "allow",
            PolicyAction::Deny => "deny",
        }
    }
}

/// One entry of `from` or `to`. The established API calls it `WorkloadSetOrSelector`; workload
/// sets are not part of it here, so naming one is an error rather than silently ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "kubernetes", derive(schemars::JsonSchema))]
pub struct WorkloadSelectorEntry {
    pub workload_selector: LabelSelector,
}

impl AccessPolicySpec {
    /// Whether a `from` selector asks anything of the client. While any such policy exists, a
    /// client whose attributes are unknown is refused (the policy engine's unknown-client rule).
    pub fn selects_clients(&self) -> bool {
        self.from
            .iter()
            .any(|e| e.workload_selector != LabelSelector::everything())
    }

    fn validate_entries(&self, errors: &mut FieldErrors) {
        for (side, entries) in [("from", &self.from), ("to", &self.to)] {
            if entries.is_empty() {
                errors.push(
                    format!("spec.{side}"),
                    "must list at least one entry; use [{workloadSelector: {}}] to match everything",
                );
            }
            for (i, e) in entries.iter().enumerate() {
                e.workload_selector
                    .validate(&format!("spec.{side}[{i}].workloadSelector"), errors);
            }
        }
    }
}

impl Spec for AccessPolicySpec {
    const KIND: Kind = Kind::AccessPolicy;

    fn check_name(name: &str) -> Result<(), String> {
        check_dns_subdomain(name)
    }

    fn validate(&self, errors: &mut FieldErrors) {
        self.validate_entries(errors);
    }
}

pub type AccessPolicy = Resource<AccessPolicySpec>;

/// Same shape as [`AccessPolicySpec`]; a distinct type so the two kinds cannot be confused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(
    feature = "kubernetes",
    derive(kube_derive::CustomResource, schemars::JsonSchema),
    kube(
        group = "clusterlink.net",
        version = "v1alpha1",
        kind = "PrivilegedAccessPolicy",
        root = "KubePrivilegedAccessPolicy",
        doc = "A cluster-wide access policy, evaluated before every namespaced one.",
        shortname = "pap",
        status = "Status",
        crates(kube_core = "::kube_core"),
        category = "clusterlink",
        printcolumn(name = "Action", type_ = "string", json_path = ".spec.action"),
        printcolumn(
            name = "Valid",
            type_ = "string",
            json_path = ".status.conditions[?(@.type==\"PolicyValid\")].status"
        ),
        printcolumn(
            name = "Reason",
            type_ = "string",
            json_path = ".status.conditions[?(@.type==\"PolicyValid\")].reason"
        ),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        ),
    )
)]
pub struct PrivilegedAccessPolicySpec(pub AccessPolicySpec);

impl Spec for PrivilegedAccessPolicySpec {
    const KIND: Kind = Kind::PrivilegedAccessPolicy;

    fn check_name(name: &str) -> Result<(), String> {
        check_dns_subdomain(name)
    }

    fn validate(&self, errors: &mut FieldErrors) {
        self.0.validate_entries(errors);
    }
}

pub type PrivilegedAccessPolicy = Resource<PrivilegedAccessPolicySpec>;

// ---------------------------------------------------------------------------------------------
// Object: any of the kinds

/// Every object of a configuration, by key: what a control plane holds and a data plane's
/// snapshot is built from. Versions share what did not change, so a write costs the same at 100
/// and at 100,000 objects, and a snapshot follows by the differences.
pub type Objects = crate::shared_map::SharedMap<ObjectKey, Object>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Object {
    Peer(Peer),
    Export(Export),
    Import(Import),
    AccessPolicy(AccessPolicy),
    PrivilegedAccessPolicy(PrivilegedAccessPolicy),
}

macro_rules! each_kind {
    ($obj:expr, $r:ident => $body:expr) => {
        match $obj {
            Object::Peer($r) => $body,
            Object::Export($r) => $body,
            Object::Import($r) => $body,
            Object::AccessPolicy($r) => $body,
            Object::PrivilegedAccessPolicy($r) => $body,
        }
    };
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Peer(_) => Kind::Peer,
            Object::Export(_) => Kind::Export,
            Object::Import(_) => Kind::Import,
            Object::AccessPolicy(_) => Kind::AccessPolicy,
            Object::PrivilegedAccessPolicy(_) => Kind::PrivilegedAccessPolicy,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        each_kind!(self, r => &r.metadata)
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        each_kind!(self, r => &mut r.metadata)
    }

    pub fn status(&self) -> Option<&Status> {
        each_kind!(self, r => r.status.as_ref())
    }

    pub fn set_status(&mut self, status: Option<Status>) {
        each_kind!(self, r => r.status = status)
    }

    pub fn key(&self) -> ObjectKey {
        let m = self.metadata();
        ObjectKey::new(self.kind(), m.namespace.clone(), m.name.clone())
    }

    /// True when `other` asks for the same thing: same spec, labels and annotations.
    /// Status and server-managed metadata do not count.
    pub fn same_desired_state(&self, other: &Object) -> bool {
        fn same<S: PartialEq>(a: &Resource<S>, b: &Resource<S>) -> bool {
            a.spec == b.spec
                && a.metadata.labels == b.metadata.labels
                && a.metadata.annotations == b.metadata.annotations
        }
        match (self, other) {
            (Object::Peer(a), Object::Peer(b)) => same(a, b),
            (Object::Export(a), Object::Export(b)) => same(a, b),
            (Object::Import(a), Object::Import(b)) => same(a, b),
            (Object::AccessPolicy(a), Object::AccessPolicy(b)) => same(a, b),
            (Object::PrivilegedAccessPolicy(a), Object::PrivilegedAccessPolicy(b)) => same(a, b),
            _ => false,
        }
    }

    /// True when `other` has the same spec (what `metadata.generation` counts changes of).
    pub fn same_spec(&self, other: &Object) -> bool {
        match (self, other) {
            (Object::Peer(a), Object::Peer(b)) => a.spec == b.spec,
            (Object::Export(a), Object::Export(b)) => a.spec == b.spec,
            (Object::Import(a), Object::Import(b)) => a.spec == b.spec,
            (Object::AccessPolicy(a), Object::AccessPolicy(b)) => a.spec == b.spec,
            (Object::PrivilegedAccessPolicy(a), Object::PrivilegedAccessPolicy(b)) => {
                a.spec == b.spec
            }
            _ => false,
        }
    }

    /// Fills in the namespace when the manifest names none: `default_namespace` for namespaced
    /// kinds, the system namespace for Peers. Validation then checks what was given.
    pub fn default_namespace(&mut self, default_namespace: &str) {
        let kind = self.kind();
        let meta = self.metadata_mut();
        if meta.namespace.is_empty() {
            meta.namespace = kind.namespace_in(default_namespace).to_string();
        }
    }

    /// Checks every field; all problems are reported together, each with its field path.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        fn run<S: Spec>(r: &Resource<S>) -> Result<(), FieldErrors> {
            let mut errors = FieldErrors::default();
            if let Err(e) = r.spec.check_name_for(&r.metadata.name) {
                errors.push("metadata.name", e);
            }
            let ns = &r.metadata.namespace;
            match S::KIND.scope() {
                Scope::Namespaced => {
                    if let Err(e) = check_dns_label(ns) {
                        errors.push("metadata.namespace", e);
                    }
                }
                Scope::System => {
                    if ns != SYSTEM_NAMESPACE {
                        errors.push(
                            "metadata.namespace",
                            format!("{} objects live in the system namespace {SYSTEM_NAMESPACE:?} (got {ns:?})", S::KIND),
                        );
                    }
                }
                Scope::Cluster => {
                    if !ns.is_empty() {
                        errors.push(
                            "metadata.namespace",
                            format!(
                                "{} is cluster-scoped: remove the namespace (got {ns:?})",
                                S::KIND
                            ),
                        );
                    }
                }
            }
            r.metadata.validate_labels(&mut errors);
            r.spec.validate(&mut errors);
            errors.into_result()
        }
        each_kind!(self, r => run(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_lives_in_its_scopes_namespace() {
        assert_eq!(Kind::Import.namespace_in("shop"), "shop");
        assert_eq!(Kind::AccessPolicy.namespace_in("shop"), "shop");
        assert_eq!(Kind::Peer.namespace_in("shop"), SYSTEM_NAMESPACE);
        assert_eq!(Kind::PrivilegedAccessPolicy.namespace_in("shop"), "");
    }

    #[test]
    fn every_kind_carries_its_condition() {
        let carried: Vec<ConditionType> = Kind::ALL.iter().map(|k| k.condition()).collect();
        assert_eq!(
            carried,
            [
                ConditionType::PeerReachable,
                ConditionType::ExportValid,
                ConditionType::ImportValid,
                ConditionType::PolicyValid,
                ConditionType::PolicyValid,
            ]
        );
    }

    #[test]
    fn an_export_without_a_host_is_the_service_of_its_name() {
        let yaml = "{apiVersion: clusterlink.net/v1alpha1, kind: Export, metadata: {name: reviews, namespace: shop}, spec: {port: 9080}}";
        let Ok(Object::Export(mut export)) = crate::parse_manifest(yaml, "default") else {
            panic!("not an export");
        };
        assert_eq!(export.backend_host(ServiceNaming::Bare), "reviews");
        assert_eq!(
            export.backend_host(ServiceNaming::Cluster),
            "reviews.shop.svc"
        );
        export.spec.host = "10.0.0.7".into();
        for naming in [ServiceNaming::Bare, ServiceNaming::Cluster] {
            assert_eq!(export.backend_host(naming), "10.0.0.7");
        }
    }
}
