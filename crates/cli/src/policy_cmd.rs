//! `clusterlink policy test`: the decision a connection would get, worked out offline by the same
//! engine the gateways run (`clusterlink_dataplane::policy`), on both sides of the tunnel.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, ensure};
use clusterlink_api::Object;
use clusterlink_api::attributes::{self, Attributes};
use clusterlink_dataplane::policy::{PolicyDecision, PolicyEngine};

/// The attribute keys a source may carry (`--from`).
const SOURCE_KEYS: &str = "client.clusterlink.net/namespace, client.clusterlink.net/service-account, \
    client.clusterlink.net/labels.<key>, peer.clusterlink.net/name, peer.clusterlink.net/labels.<key>";
/// The attribute keys a destination may carry (`--to`).
const DESTINATION_KEYS: &str = "export.clusterlink.net/name, export.clusterlink.net/namespace, \
    export.clusterlink.net/labels.<key>, peer.clusterlink.net/name, peer.clusterlink.net/labels.<key>";

#[derive(Debug, clap::Subcommand)]
pub enum Policy {
    /// Decide a connection offline: which policy decides it on the importing side (egress) and
    /// on the exporting side (ingress).
    Test(PolicyTestArgs),
}

#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Each side decides on its own, as the gateways do: egress with the policies of the import's \
namespace (--namespace), ingress with those of the export's namespace (the \
export.clusterlink.net/namespace of --to, else --namespace). Privileged policies apply on both.

A source without any client.clusterlink.net/ attribute is a client whose attributes are unknown \
(no pod, no --client-attributes entry): it is denied while any policy selects clients.

Exit status: 0 when both sides allow, 1 when either denies, 2 when the input is wrong.

Examples:
  clusterlink policy test -f policies.yaml \\
      --from client.clusterlink.net/labels.app=web --from peer.clusterlink.net/name=client1 \\
      --to export.clusterlink.net/name=reviews --to peer.clusterlink.net/name=server1
  kubectl get accesspolicies,privilegedaccesspolicies -A -o yaml | \\
      clusterlink policy test -f - --from client.clusterlink.net/namespace=shop --to export.clusterlink.net/name=db")]
pub struct PolicyTestArgs {
    /// Policy manifests: a file, a directory of .yaml, .yml and .json files, or - for stdin
    /// (repeatable). Objects of other kinds in them are left out.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// A source attribute, KEY=VALUE (repeatable). Keys: client.clusterlink.net/namespace,
    /// client.clusterlink.net/service-account, client.clusterlink.net/labels.<key>,
    /// peer.clusterlink.net/name, peer.clusterlink.net/labels.<key>.
    #[arg(long = "from", value_name = "KEY=VALUE")]
    pub from: Vec<String>,
    /// A destination attribute, KEY=VALUE (repeatable). Keys: export.clusterlink.net/name,
    /// export.clusterlink.net/namespace, export.clusterlink.net/labels.<key>,
    /// peer.clusterlink.net/name, peer.clusterlink.net/labels.<key>.
    #[arg(long = "to", value_name = "KEY=VALUE")]
    pub to: Vec<String>,
    /// The import's namespace: its policies decide on egress.
    #[arg(long, default_value = "default")]
    pub namespace: String,
}

/// Both sides' decisions.
#[derive(Debug)]
pub struct Verdict {
    pub egress: (String, PolicyDecision),
    pub ingress: (String, PolicyDecision),
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.egress.1.allowed && self.ingress.1.allowed
    }
}

/// The decisions for a connection from `from` to `to` under `policies`, egress in `namespace`.
pub fn decide(policies: &[Object], namespace: &str, from: &Attributes, to: &Attributes) -> Verdict {
    let engine = PolicyEngine::compile(policies);
    let ingress_namespace = to
        .get(attributes::EXPORT_NAMESPACE)
        .cloned()
        .unwrap_or_else(|| namespace.to_string());
    Verdict {
        egress: (namespace.to_string(), engine.decide(namespace, from, to)),
        ingress: (
            ingress_namespace.clone(),
            engine.decide(&ingress_namespace, from, to),
        ),
    }
}

/// Runs `policy test`: prints both decisions; 0 when allowed, 1 when denied.
pub fn run(args: PolicyTestArgs) -> anyhow::Result<ExitCode> {
    let from = parse_attributes(&args.from, "--from", Side::Source)?;
    let to = parse_attributes(&args.to, "--to", Side::Destination)?;
    let sources: Vec<String> = args.files.iter().map(|p| p.display().to_string()).collect();
    let mut policies = Vec::new();
    let mut others = 0;
    for object in crate::manifests::objects_of(&sources, &args.namespace)? {
        let object = object.map_err(|e| anyhow::anyhow!(e))?;
        if let Err(e) = object.validate() {
            bail!("{}: {e}", object.key());
        }
        match object {
            Object::AccessPolicy(_) | Object::PrivilegedAccessPolicy(_) => policies.push(object),
            _ => others += 1,
        }
    }
    if others > 0 {
        eprintln!("note: left out {others} object(s) that are not policies");
    }
    let verdict = decide(&policies, &args.namespace, &from, &to);
    let width = "ingress".len();
    for (side, (namespace, decision)) in
        [("egress", &verdict.egress), ("ingress", &verdict.ingress)]
    {
        println!("{side:<width$} (namespace {namespace}): {decision}");
    }
    Ok(if verdict.allowed() {
        println!("result: allow");
        ExitCode::SUCCESS
    } else {
        println!("result: DENY");
        ExitCode::from(1)
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Source,
    Destination,
}

/// `KEY=VALUE` pairs, each key one the engine reads on that side.
fn parse_attributes(pairs: &[String], flag: &str, side: Side) -> anyhow::Result<Attributes> {
    let mut out = Attributes::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("{flag} {pair:?}: expected KEY=VALUE");
        };
        let known = match side {
            Side::Source => attributes::is_client_attribute(key) || is_peer_attribute(key),
            Side::Destination => is_export_attribute(key) || is_peer_attribute(key),
        };
        if !known {
            let valid = match side {
                Side::Source => SOURCE_KEYS,
                Side::Destination => DESTINATION_KEYS,
            };
            bail!(
                "{flag} {key:?} is not an attribute of a {}; valid keys: {valid}",
                match side {
                    Side::Source => "source",
                    Side::Destination => "destination",
                }
            );
        }
        ensure!(
            out.insert(key.to_string(), value.to_string()).is_none(),
            "{flag} gives {key:?} twice"
        );
    }
    Ok(out)
}

fn is_peer_attribute(key: &str) -> bool {
    key == attributes::PEER_NAME
        || key
            .strip_prefix(attributes::PEER_LABELS_PREFIX)
            .is_some_and(|k| !k.is_empty())
}

fn is_export_attribute(key: &str) -> bool {
    key == attributes::EXPORT_NAME
        || key == attributes::EXPORT_NAMESPACE
        || key
            .strip_prefix(attributes::EXPORT_LABELS_PREFIX)
            .is_some_and(|k| !k.is_empty())
}
