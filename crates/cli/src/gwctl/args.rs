//! `gwctl`'s arguments.

use std::path::PathBuf;
use std::str::FromStr as _;

use clap::{Args, Parser, Subcommand};
use clusterlink_api::LbScheme;

use crate::output::Format;

/// The kinds an object command takes, as the shell completes them.
const KINDS: &[&str] = &[
    "peer",
    "export",
    "import",
    "policy",
    "privilegedaccesspolicy",
];
/// What `get` lists, as the shell completes it.
const LISTED_KINDS: &[&str] = &[
    "peers",
    "exports",
    "imports",
    "accesspolicies",
    "policies",
    "privilegedaccesspolicies",
    "all",
    "events",
    "offers",
];

/// A kind argument: any text is taken (a misspelt kind gets "did you mean" from the command
/// itself), and `words` are offered to shell completion.
#[derive(Clone)]
struct KindWords(&'static [&'static str]);

impl clap::builder::TypedValueParser for KindWords {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        clap::builder::StringValueParser::new().parse_ref(cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            self.0.iter().map(|w| clap::builder::PossibleValue::new(*w)),
        ))
    }
}

/// Where `--help` lists the options every command takes, apart from the command's own.
const GLOBAL: &str = "Global options (every command)";

#[derive(Debug, Parser)]
#[command(
    name = "gwctl",
    version,
    about = "Manage a ClusterLink gateway: peers, exports, imports and access policies",
    long_about = "Manage a ClusterLink gateway through its management API.\n\n\
        Start by saving a context for the gateway:\n  \
        gwctl config set-context p1 --server http://127.0.0.1:8443\n\
        Then apply manifests and read them back:\n  \
        gwctl apply -f manifests/\n  gwctl get imports -A"
)]
pub struct Gwctl {
    /// The gwctl config file holding saved contexts.
    #[arg(long, global = true, env = "GWCTL_CONFIG", value_name = "FILE", help_heading = GLOBAL)]
    pub config: Option<PathBuf>,
    /// Use this saved context instead of the current one.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub context: Option<String>,
    /// Talk to this gateway (http://host:port) without a saved context.
    #[arg(long, global = true, value_name = "URL", help_heading = GLOBAL)]
    pub server: Option<String>,
    /// Give up on a gateway that has not answered a request within this many seconds.
    #[arg(long, global = true, env = "GWCTL_REQUEST_TIMEOUT", value_name = "SECONDS", help_heading = GLOBAL,
          default_value_t = crate::client::DEFAULT_REQUEST_TIMEOUT.as_secs_f64(),
          value_parser = parse_timeout)]
    pub request_timeout: f64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update objects from manifests (YAML or JSON, one or many documents).
    #[command(
        after_help = "Examples:\n  gwctl apply -f examples/manifests/\n  kubectl get imports -o yaml | gwctl apply -f -"
    )]
    Apply {
        /// A file, a directory (its .yaml, .yml and .json files) or - for standard input.
        #[arg(
            short = 'f',
            long = "filename",
            required = true,
            value_name = "FILE|DIR|-"
        )]
        files: Vec<String>,
        #[command(flatten)]
        ns: NamespaceArg,
    },
    /// List objects, or show one; or the gateway's recent tunnel events.
    #[command(
        after_help = "Examples:\n  gwctl get imports -A\n  gwctl get peer server1 -o yaml\n  gwctl get all -l tier=gold -o name\n  gwctl get events --import web --problems\n  gwctl get offers --peer server2"
    )]
    Get {
        /// peers, exports, imports, accesspolicies (policies), privilegedaccesspolicies, all,
        /// events (recent tunnels and refusals, newest first), or offers (the exports peers
        /// offer this gateway, and whether each is imported).
        #[arg(value_parser = KindWords(LISTED_KINDS))]
        kind: String,
        name: Option<String>,
        #[command(flatten)]
        ns: NamespaceArg,
        /// List across all namespaces.
        #[arg(short = 'A', long, conflicts_with = "namespace")]
        all_namespaces: bool,
        /// Only objects whose labels match: KEY=VALUE, KEY!=VALUE, KEY (has it) or !KEY (lacks
        /// it), comma-separated, all of which must hold.
        #[arg(short = 'l', long, value_name = "SELECTOR", value_parser = super::get::parse_selector)]
        selector: Option<clusterlink_api::LabelSelector>,
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
        #[command(flatten)]
        events: EventArgs,
    },
    /// Show an object with its conditions, its live tunnels and traffic, its sources'
    /// reachability, and the latest refusals that concern it.
    #[command(
        after_help = "Examples:\n  gwctl describe import web\n  gwctl describe peer server1\n  gwctl describe policy deny-web -n shop"
    )]
    Describe {
        /// peer, export, import, policy or privilegedaccesspolicy.
        #[arg(value_parser = KindWords(KINDS))]
        kind: String,
        name: String,
        #[command(flatten)]
        ns: NamespaceArg,
    },
    /// Show the decision a new connection to an import would get now, on both sides: egress
    /// here, ingress asked of each exporting gateway as a dry run (no backend is dialed).
    /// Exits 1 if the connection would be refused.
    #[command(
        after_help = "Examples:\n  gwctl explain web --client 127.0.0.1\n  gwctl explain web --client-attribute client.clusterlink.net/labels.app=web"
    )]
    Explain {
        /// The import.
        import: String,
        /// The client's address: its attributes are found as for a real connection.
        #[arg(
            long,
            value_name = "ADDRESS",
            required_unless_present = "client_attributes"
        )]
        client: Option<std::net::IpAddr>,
        /// A client attribute, KEY=VALUE (client.clusterlink.net/namespace,
        /// client.clusterlink.net/service-account, client.clusterlink.net/labels.<key>);
        /// repeatable.
        #[arg(
            long = "client-attribute",
            value_name = "KEY=VALUE",
            conflicts_with = "client"
        )]
        client_attributes: Vec<String>,
        #[command(flatten)]
        ns: NamespaceArg,
        #[arg(short, long, value_enum, default_value_t = Report::Text)]
        output: Report,
    },
    /// Change single fields of an object: PATH=VALUE sets one (a YAML value), PATH- removes it.
    #[command(after_help = "Examples:\n  gwctl update import web spec.port=9001\n  \
        gwctl update peer server1 metadata.labels.env=prod\n  \
        gwctl update import web spec.sources.1='{peer: server2, exportName: web, exportNamespace: default}'\n  \
        gwctl update export web metadata.labels.tier-")]
    Update {
        #[arg(value_parser = KindWords(KINDS))]
        kind: String,
        name: String,
        /// spec.port=9001, metadata.labels.env=prod, spec.sources.0.peer=p2, or PATH- to remove.
        #[arg(required = true, value_name = "PATH=VALUE|PATH-")]
        changes: Vec<String>,
        #[command(flatten)]
        ns: NamespaceArg,
    },
    /// Edit an object as YAML in $VISUAL or $EDITOR (default vi), and apply it when saved.
    #[command(
        after_help = "Examples:\n  gwctl edit import web\n  EDITOR=nano gwctl edit peer server1"
    )]
    Edit {
        #[arg(value_parser = KindWords(KINDS))]
        kind: String,
        name: String,
        #[command(flatten)]
        ns: NamespaceArg,
    },
    /// Check the gateway and everything it was told to do: its version and certificate, each
    /// Peer's reachability, each Import's port, sources and remote exports, each policy's
    /// attribute keys, and port clashes. Exits 1 if any check failed.
    #[command(after_help = "Examples:\n  gwctl check\n  gwctl --context p1 check -o json")]
    Check {
        #[arg(short, long, value_enum, default_value_t = Report::Text)]
        output: Report,
    },
    /// Delete an object by kind and name, or every object a manifest names.
    #[command(
        after_help = "Examples:\n  gwctl delete import web -n shop\n  gwctl delete -f examples/manifests/policies.yaml"
    )]
    Delete {
        #[arg(value_parser = KindWords(KINDS))]
        kind: Option<String>,
        name: Option<String>,
        /// Delete what these manifests name.
        #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-", conflicts_with_all = ["kind", "name"])]
        files: Vec<String>,
        #[command(flatten)]
        ns: NamespaceArg,
    },
    /// Create one object from flags.
    #[command(subcommand)]
    Create(CreateCommand),
    /// Manage saved contexts.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script: bash, zsh or fish.
    #[command(
        after_help = "Examples:\n  gwctl completion bash > /etc/bash_completion.d/gwctl\n  \
        gwctl completion zsh > \"${fpath[1]}/_gwctl\"\n  \
        gwctl completion fish > ~/.config/fish/completions/gwctl.fish"
    )]
    Completion {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the Peer manifest another site applies to reach this gateway: its name, the
    /// addresses its peer port is reachable at, and the port.
    #[command(
        after_help = "Examples:\n  gwctl --context server1 link > server1-peer.yaml\n  \
        gwctl --context client1 apply -f server1-peer.yaml\n  \
        gwctl link --address gw.example.com --address 203.0.113.7 --label env=prod"
    )]
    Link {
        /// An address other sites reach this gateway at (a NAT's or load balancer's), instead of
        /// the ones the gateway finds; repeatable. HOST or HOST:PORT (default: the peer port).
        #[arg(long = "address", value_name = "HOST[:PORT]")]
        addresses: Vec<String>,
        #[command(flatten)]
        labels: LabelArgs,
    },
    /// Print gwctl's version, and the gateway's version and peer name.
    #[command(after_help = "Example:\n  gwctl version\n  gwctl --context p1 version")]
    Version,
}

/// How `explain` and `check` print their report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Report {
    Text,
    Json,
}

/// Filters of `gwctl get events`.
#[derive(Debug, Args)]
pub struct EventArgs {
    /// Events of this import (get events only).
    #[arg(long, value_name = "NAME")]
    pub import: Option<String>,
    /// Events of this export (get events only).
    #[arg(long, value_name = "NAME")]
    pub export: Option<String>,
    /// Events with this peer (get events), or offers of this peer (get offers).
    #[arg(long, value_name = "PEER")]
    pub peer: Option<String>,
    /// Only refusals, cuts and broken tunnels (get events only).
    #[arg(long)]
    pub problems: bool,
    /// At most this many events (get events only; the gateway keeps a few hundred).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

impl EventArgs {
    pub fn any(&self) -> bool {
        self.import.is_some()
            || self.export.is_some()
            || self.peer.is_some()
            || self.problems
            || self.limit.is_some()
    }
}

/// `gwctl create peer --protocol`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PeerProtocolArg {
    /// This project's gateways.
    Native,
    /// Gateways of the Go ClusterLink.
    Go,
}

impl From<PeerProtocolArg> for clusterlink_api::PeerProtocol {
    fn from(arg: PeerProtocolArg) -> Self {
        match arg {
            PeerProtocolArg::Native => clusterlink_api::PeerProtocol::Native,
            PeerProtocolArg::Go => clusterlink_api::PeerProtocol::Go,
        }
    }
}

/// The shells `gwctl completion` writes scripts for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct NamespaceArg {
    /// Namespace (default: the context's, else "default").
    #[arg(short, long)]
    pub namespace: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum CreateCommand {
    /// A remote peer and the address(es) of its gateway.
    #[command(
        after_help = "Example:\n  gwctl create peer --name server1 --host 10.0.0.2 --port 443"
    )]
    Peer {
        #[arg(long)]
        name: String,
        /// Gateway host; repeat for several gateways. None for a peer that cannot be reached
        /// (behind NAT): it is then reached over the link it dials to this gateway.
        #[arg(long = "host", required_unless_present = "no_address")]
        hosts: Vec<String>,
        /// Gateway peer port.
        #[arg(long, default_value_t = clusterlink_dataplane::tunnel::PEER_PORT)]
        port: u16,
        /// Keep a link dialed to the peer's gateways: this site then needs no inbound path, and
        /// tunnels of both directions ride the link.
        #[arg(long, requires = "hosts")]
        dial: bool,
        /// The peer has no address: it dials this gateway (its Peer for this site has --dial).
        #[arg(long, conflicts_with_all = ["hosts", "dial"])]
        no_address: bool,
        /// Import what the peer offers: each export it offers whose labels match SELECTOR
        /// (KEY=VALUE,…; every offer when left out) becomes an Import of the same name and
        /// namespace here, kept in step with the offers. Policies still decide every connection.
        #[arg(long, value_name = "SELECTOR", num_args = 0..=1, default_missing_value = "", value_parser = super::get::parse_mirror_selector)]
        mirror: Option<clusterlink_api::LabelSelector>,
        /// Added to each offered port to make its Import's port (with --mirror), for a site
        /// whose own services use the same ports on the same host.
        #[arg(long, requires = "mirror", default_value_t = 0)]
        mirror_port_offset: u16,
        /// Import only offers in this namespace (with --mirror); repeat for several. None: any.
        #[arg(
            long = "mirror-namespace",
            value_name = "NAMESPACE",
            requires = "mirror"
        )]
        mirror_namespaces: Vec<String>,
        /// Import at most this many of the peer's offers (with --mirror).
        #[arg(long, requires = "mirror", default_value_t = clusterlink_api::catalog::DEFAULT_MAX_IMPORTS)]
        mirror_max_imports: u32,
        /// The protocol the peer's gateways speak: `go` for a gateway of the Go ClusterLink (no
        /// links, no catalog), in a fabric that mixes the two.
        #[arg(long, value_enum, default_value_t = PeerProtocolArg::Native, conflicts_with_all = ["dial", "mirror"])]
        protocol: PeerProtocolArg,
        #[command(flatten)]
        labels: LabelArgs,
    },
    /// Share a local service with the fabric.
    #[command(
        after_help = "Example:\n  gwctl create export --name web --host 127.0.0.1 --port 8000"
    )]
    Export {
        #[arg(long)]
        name: String,
        /// Port of the service.
        #[arg(long)]
        port: u16,
        /// Host of the service (default: the service of the same name).
        #[arg(long)]
        host: Option<String>,
        #[command(flatten)]
        ns: NamespaceArg,
        #[command(flatten)]
        labels: LabelArgs,
    },
    /// Make a service exported by other peers reachable locally.
    #[command(
        after_help = "Example:\n  gwctl create import --name web --port 9000 --peer server1 --peer server2"
    )]
    Import {
        #[arg(long)]
        name: String,
        /// Port local clients connect to.
        #[arg(long)]
        port: u16,
        /// Port the data plane listens on (default: allocated).
        #[arg(long)]
        target_port: Option<u16>,
        /// A peer exporting the service; repeat for several sources.
        #[arg(long = "peer", required = true)]
        peers: Vec<String>,
        /// Name of the export on the peers (default: the import's name).
        #[arg(long)]
        export_name: Option<String>,
        /// Namespace of the export on the peers (default: the import's namespace).
        #[arg(long)]
        export_namespace: Option<String>,
        /// How connections are spread over the sources: round-robin, random or static (the
        /// first reachable source, in order).
        #[arg(long, default_value_t = LbScheme::default(), value_parser = LbScheme::from_str)]
        lb_scheme: LbScheme,
        #[command(flatten)]
        ns: NamespaceArg,
        #[command(flatten)]
        labels: LabelArgs,
    },
    /// An access policy matching attribute labels on both ends.
    #[command(
        after_help = "Example:\n  gwctl create policy --name web-only --action allow \\\n      --from client.clusterlink.net/labels.app=web --to export.clusterlink.net/name=reviews"
    )]
    Policy {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["allow", "deny"])]
        action: String,
        /// Attribute the source must have, KEY=VALUE; repeat to require several (default: any).
        /// Keys: client.clusterlink.net/namespace, client.clusterlink.net/service-account,
        /// client.clusterlink.net/labels.<key>, peer.clusterlink.net/name,
        /// peer.clusterlink.net/labels.<key>.
        #[arg(long, value_name = "KEY=VALUE")]
        from: Vec<String>,
        /// Attribute the destination must have, KEY=VALUE (default: any). Keys:
        /// export.clusterlink.net/name, export.clusterlink.net/namespace,
        /// export.clusterlink.net/labels.<key>, peer.clusterlink.net/name,
        /// peer.clusterlink.net/labels.<key>.
        #[arg(long, value_name = "KEY=VALUE")]
        to: Vec<String>,
        /// Create a cluster-wide PrivilegedAccessPolicy, evaluated before namespaced ones.
        #[arg(long)]
        privileged: bool,
        #[command(flatten)]
        ns: NamespaceArg,
    },
}

#[derive(Debug, Args)]
pub struct LabelArgs {
    /// Label of the object, KEY=VALUE; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Save (or update) a context; the first one saved becomes current.
    #[command(
        after_help = "Examples:\n  gwctl config set-context p1 --server http://127.0.0.1:8443\n  gwctl config set-context remote --server https://gw.example.com:8443 --peer p1 \\\n      --ca default_fabric/cert.pem --cert default_fabric/admins/alice/cert.pem \\\n      --key default_fabric/admins/alice/key.pem"
    )]
    SetContext {
        name: String,
        /// http://127.0.0.1:PORT for a loopback gateway, https://HOST:PORT for a remote one.
        #[arg(long)]
        server: String,
        /// The gateway's peer name, which its certificate must carry (https).
        #[arg(long)]
        peer: Option<String>,
        /// Fabric CA certificate (https).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Admin certificate, from `clusterlink create admin-cert` (https).
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Admin private key (https).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Default namespace for this context.
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Make a saved context the current one.
    #[command(after_help = "Example:\n  gwctl config use-context p1")]
    UseContext { name: String },
    /// List saved contexts.
    #[command(after_help = "Example:\n  gwctl config get-contexts")]
    GetContexts,
    /// Print the current context's name.
    #[command(after_help = "Example:\n  gwctl config current-context")]
    CurrentContext,
    /// Remove a saved context.
    #[command(after_help = "Example:\n  gwctl config delete-context p1")]
    DeleteContext { name: String },
}

/// `--request-timeout`: a positive number of seconds, at most a day.
fn parse_timeout(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 24.0 * 3600.0 => Ok(s),
        _ => Err(format!(
            "{text:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// Every command a person can run shows an example in its help.
    #[test]
    fn every_subcommand_has_an_example() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            let subcommands: Vec<&clap::Command> = command.get_subcommands().collect();
            if subcommands.is_empty() {
                let help = command
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                if !help.contains("gwctl ") {
                    missing.push(path.clone());
                }
            }
            for sub in subcommands {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Gwctl::command(), "", &mut missing);
        assert!(missing.is_empty(), "no example in: {missing:?}");
    }
}
