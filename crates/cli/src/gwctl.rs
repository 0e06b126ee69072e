//! `gwctl`: manage a gateway's peers, exports, imports and access policies.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use clusterlink_api::rest::{kind_collection_path, object_path};
use clusterlink_api::{
    AccessPolicySpec, Endpoint, ExportSpec, ImportSource, ImportSpec, Kind, LabelSelector,
    LbScheme, Object, ObjectKey, PeerSpec, PolicyAction, Port, PrivilegedAccessPolicySpec,
    Resource, Scope, WorkloadSelectorEntry, parse_manifests,
};
use http::{Method, StatusCode};

use crate::client::{Client, Reply};
use crate::context::{Config, Context, default_config_path};
use crate::output::{Format, render};

/// Largest manifest input gwctl reads from one file or stdin; 10,000 imports are ~3 MiB.
const MAX_INPUT_BYTES: u64 = 64 * 1024 * 1024;

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
    #[arg(long, global = true, env = "GWCTL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Use this saved context instead of the current one.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Talk to this gateway (http://host:port) without a saved context.
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
    /// Give up on a gateway that has not answered a request within this many seconds.
    #[arg(long, global = true, env = "GWCTL_REQUEST_TIMEOUT", value_name = "SECONDS",
          default_value_t = crate::client::DEFAULT_REQUEST_TIMEOUT.as_secs_f64(),
          value_parser = parse_timeout)]
    pub request_timeout: f64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update objects from manifests (YAML or JSON, one or many documents).
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
    /// List objects, or show one.
    Get {
        /// peers, exports, imports, accesspolicies (policies), privilegedaccesspolicies.
        kind: String,
        name: Option<String>,
        #[command(flatten)]
        ns: NamespaceArg,
        /// List across all namespaces.
        #[arg(short = 'A', long, conflicts_with = "namespace")]
        all_namespaces: bool,
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Delete an object by kind and name, or every object a manifest names.
    Delete {
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
    Peer {
        #[arg(long)]
        name: String,
        /// Gateway host; repeat for several gateways.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Gateway peer port.
        #[arg(long, default_value_t = 443)]
        port: u16,
        #[command(flatten)]
        labels: LabelArgs,
    },
    /// Share a local service with the fabric.
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
        #[arg(long, default_value = "round-robin", value_parser = ["round-robin", "random", "static"])]
        lb_scheme: String,
        #[command(flatten)]
        ns: NamespaceArg,
        #[command(flatten)]
        labels: LabelArgs,
    },
    /// An access policy matching attribute labels on both ends.
    Policy {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["allow", "deny"])]
        action: String,
        /// Attribute the source must have, KEY=VALUE; repeat to require several (default: any).
        #[arg(long, value_name = "KEY=VALUE")]
        from: Vec<String>,
        /// Attribute the destination must have, KEY=VALUE (default: any).
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
    UseContext { name: String },
    /// List saved contexts.
    GetContexts,
    /// Print the current context's name.
    CurrentContext,
    /// Remove a saved context.
    DeleteContext { name: String },
}

/// Runs gwctl; the returned error is printed by `main` and makes the exit status non-zero.
pub async fn run(cli: Gwctl) -> anyhow::Result<()> {
    let config_path = cli.config.clone().unwrap_or_else(default_config_path);
    if let Command::Config(cmd) = cli.command {
        return run_config(&config_path, cmd);
    }
    let ctx = match &cli.server {
        Some(server) => Context {
            server: server.clone(),
            ..Default::default()
        },
        None => {
            Config::load(&config_path)?
                .resolve(cli.context.as_deref())?
                .1
        }
    };
    let timeout = Duration::from_secs_f64(cli.request_timeout);
    let mut client = Client::new(&ctx)?.with_timeout(timeout);
    let default_ns = |ns: &NamespaceArg| {
        ns.namespace
            .clone()
            .or_else(|| ctx.namespace.clone())
            .unwrap_or_else(|| clusterlink_api::DEFAULT_NAMESPACE.to_string())
    };
    match cli.command {
        Command::Apply { files, ns } => {
            bulk(&ctx, timeout, &files, &default_ns(&ns), BulkOp::Apply).await
        }
        Command::Get {
            kind,
            name,
            ns,
            all_namespaces,
            output,
        } => {
            let kind = parse_kind(&kind)?;
            get(
                &mut client,
                kind,
                name.as_deref(),
                &default_ns(&ns),
                all_namespaces,
                output,
            )
            .await
        }
        Command::Delete {
            kind,
            name,
            files,
            ns,
        } => {
            let namespace = default_ns(&ns);
            if !files.is_empty() {
                return bulk(&ctx, timeout, &files, &namespace, BulkOp::Delete).await;
            }
            let (Some(kind), Some(name)) = (kind, name) else {
                bail!("name what to delete: `gwctl delete KIND NAME` or `gwctl delete -f FILE`");
            };
            let mut obj_key = ObjectKey::new(parse_kind(&kind)?, namespace, name);
            obj_key.namespace = key_namespace(obj_key.kind, &obj_key.namespace);
            let reply = client
                .request(Method::DELETE, &object_path(&obj_key), None)
                .await?;
            ensure_ok(&reply)?;
            println!("{obj_key} deleted");
            Ok(())
        }
        Command::Create(cmd) => {
            let obj = build_object(cmd, &default_ns)?;
            let key = obj.key();
            let body = serde_json::to_vec(&obj)?;
            let reply = client
                .request(
                    Method::POST,
                    &kind_collection_path(key.kind, Some(&key.namespace)),
                    Some(body),
                )
                .await?;
            if reply.status == StatusCode::CONFLICT {
                bail!("{key} already exists; change it with `gwctl apply -f` or delete it first");
            }
            ensure_ok(&reply)?;
            println!("{key} created");
            Ok(())
        }
        Command::Config(_) => unreachable!("handled above"),
    }
}

fn parse_kind(input: &str) -> anyhow::Result<Kind> {
    Kind::from_user_input(input).ok_or_else(|| {
        anyhow!("unknown kind {input:?}: use peers, exports, imports, accesspolicies (policies) or privilegedaccesspolicies")
    })
}

/// The namespace an object of `kind` is addressed in, given the namespace in effect.
fn key_namespace(kind: Kind, namespace: &str) -> String {
    match kind.scope() {
        Scope::Namespaced => namespace.to_string(),
        Scope::System | Scope::Cluster => kind.default_namespace().to_string(),
    }
}

fn ensure_ok(reply: &Reply) -> anyhow::Result<()> {
    if reply.status.is_success() {
        Ok(())
    } else {
        Err(anyhow!(reply.error_message()))
    }
}

fn parse_timeout(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 24.0 * 3600.0 => Ok(s),
        _ => Err(format!(
            "{text:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

/// Reads each named source: a file, every manifest file of a directory, or stdin.
fn read_sources(sources: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for source in sources {
        if source == "-" {
            let text = read_bounded(std::io::stdin(), "standard input")?;
            out.push(("<stdin>".to_string(), text));
            continue;
        }
        let path = Path::new(source);
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read {source}"))?;
        if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot list {source}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("yaml" | "yml" | "json")
                        )
                })
                .collect();
            files.sort();
            if files.is_empty() {
                bail!("{source} has no .yaml, .yml or .json files");
            }
            for f in files {
                out.push(read_file(&f)?);
            }
        } else {
            out.push(read_file(path)?);
        }
    }
    Ok(out)
}

fn read_file(path: &Path) -> anyhow::Result<(String, String)> {
    let what = path.display().to_string();
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {what}"))?;
    Ok((what.clone(), read_bounded(file, &what)?))
}

/// Reads at most [`MAX_INPUT_BYTES`] of text: a device or pipe that never ends (`/dev/zero`) is
/// refused once past the bound, whatever size it claims.
fn read_bounded(source: impl Read, what: &str) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    source
        .take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {what}"))?;
    check_size(bytes.len() as u64, what)?;
    String::from_utf8(bytes).map_err(|_| anyhow!("{what} is not UTF-8 text"))
}

fn check_size(size: u64, what: &str) -> anyhow::Result<()> {
    if size > MAX_INPUT_BYTES {
        bail!(
            "{what} is larger than {} MiB; split it into several files",
            MAX_INPUT_BYTES / (1024 * 1024)
        );
    }
    Ok(())
}

/// Every object of the sources, or where a document could not be read, why.
fn objects_of(sources: &[String], namespace: &str) -> anyhow::Result<Vec<Result<Object, String>>> {
    let mut out = Vec::new();
    for (name, text) in read_sources(sources)? {
        for (i, doc) in parse_manifests(&text).into_iter().enumerate() {
            out.push(match doc {
                Ok(mut obj) => {
                    obj.default_namespace(namespace);
                    Ok(obj)
                }
                Err(e) => Err(format!("{name}, document {} failed: {e}", i + 1)),
            });
        }
    }
    Ok(out)
}

/// Requests in flight at once for multi-object commands: enough for the gateway to fold them
/// into shared commits (one fsync each), few enough not to crowd a small gateway.
const PIPELINE_CONNECTIONS: usize = 8;

#[derive(Debug, Clone, Copy)]
enum BulkOp {
    Apply,
    Delete,
}

/// Applies or deletes every object of the sources over several connections, printing one line
/// per document in document order. Objects with the same key share a connection, so a later
/// document still wins over an earlier one.
async fn bulk(
    ctx: &Context,
    timeout: Duration,
    sources: &[String],
    namespace: &str,
    op: BulkOp,
) -> anyhow::Result<()> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let items = objects_of(sources, namespace)?;
    let total = items.len();
    if total == 0 {
        bail!("no objects found in {}", sources.join(", "));
    }
    let (done, mut results) =
        tokio::sync::mpsc::unbounded_channel::<(usize, Result<String, String>)>();
    let mut queues: Vec<Vec<(usize, Object)>> = vec![Vec::new(); PIPELINE_CONNECTIONS];
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Ok(obj) => {
                let mut h = DefaultHasher::new();
                obj.key().hash(&mut h);
                queues[h.finish() as usize % PIPELINE_CONNECTIONS].push((i, obj));
            }
            Err(e) => done.send((i, Err(e))).expect("receiver alive"),
        }
    }
    let mut workers = tokio::task::JoinSet::new();
    for queue in queues.into_iter().filter(|q| !q.is_empty()) {
        let mut client = Client::new(ctx)?.with_timeout(timeout);
        let done = done.clone();
        workers.spawn(async move {
            for (i, obj) in queue {
                let key = obj.key();
                let reply = match op {
                    BulkOp::Apply => {
                        client
                            .request(
                                Method::PUT,
                                &object_path(&key),
                                Some(serde_json::to_vec(&obj)?),
                            )
                            .await?
                    }
                    BulkOp::Delete => {
                        client
                            .request(Method::DELETE, &object_path(&key), None)
                            .await?
                    }
                };
                let line = if reply.status.is_success() {
                    Ok(format!(
                        "{key} {}",
                        reply.result.as_deref().unwrap_or("configured")
                    ))
                } else {
                    Err(format!("{key} failed: {}", reply.error_message()))
                };
                if done.send((i, line)).is_err() {
                    break;
                }
            }
            anyhow::Ok(())
        });
    }
    drop(done);
    let mut pending = BTreeMap::new();
    let mut next = 0;
    let mut failed = 0;
    let mut report = |r: Result<String, String>| match r {
        Ok(line) => println!("{line}"),
        Err(line) => {
            eprintln!("{line}");
            failed += 1;
        }
    };
    while let Some((i, result)) = results.recv().await {
        pending.insert(i, result);
        while let Some(r) = pending.remove(&next) {
            report(r);
            next += 1;
        }
    }
    // A lost connection leaves gaps; report what did complete, in order, then the cause.
    let answered = next + pending.len();
    pending.into_values().for_each(&mut report);
    while let Some(joined) = workers.join_next().await {
        joined.map_err(|e| anyhow!("request task failed: {e}"))??;
    }
    if answered < total {
        bail!("{} of {total} objects were not sent", total - answered);
    }
    if failed > 0 {
        bail!("{failed} of {total} objects failed");
    }
    Ok(())
}

async fn get(
    client: &mut Client,
    kind: Kind,
    name: Option<&str>,
    namespace: &str,
    all: bool,
    format: Format,
) -> anyhow::Result<()> {
    let namespace = key_namespace(kind, namespace);
    let (objects, single) = match name {
        Some(name) => {
            let reply = client
                .request(
                    Method::GET,
                    &object_path(&ObjectKey::new(kind, namespace.clone(), name)),
                    None,
                )
                .await?;
            ensure_ok(&reply)?;
            (vec![object_of(reply.body)?], true)
        }
        None => {
            let path = kind_collection_path(kind, (!all).then_some(namespace.as_str()));
            let reply = client.request(Method::GET, &path, None).await?;
            ensure_ok(&reply)?;
            let items = match reply.body.get("items") {
                Some(serde_json::Value::Array(items)) => items.clone(),
                _ => bail!("the gateway's list reply has no items"),
            };
            (
                items
                    .into_iter()
                    .map(object_of)
                    .collect::<anyhow::Result<Vec<_>>>()?,
                false,
            )
        }
    };
    if objects.is_empty() && format == Format::Table {
        match kind.scope() {
            Scope::Namespaced if !all => {
                eprintln!("No {} found in namespace {namespace}.", kind.plural())
            }
            _ => eprintln!("No {} found.", kind.plural()),
        }
        return Ok(());
    }
    print!("{}", render(&objects, kind, format, single, all));
    Ok(())
}

fn object_of(value: serde_json::Value) -> anyhow::Result<Object> {
    clusterlink_api::manifest::object_from_value(value)
        .map_err(|e| anyhow!("the gateway sent an object gwctl cannot read: {e}"))
}

fn parse_pairs(pairs: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("{what} {p:?} must be KEY=VALUE"))
        })
        .collect()
}

fn port(value: u16, flag: &str) -> anyhow::Result<Port> {
    Port::new(value).ok_or_else(|| anyhow!("--{flag} must be between 1 and 65535"))
}

fn selector_entries(pairs: &[String], flag: &str) -> anyhow::Result<Vec<WorkloadSelectorEntry>> {
    Ok(vec![WorkloadSelectorEntry {
        workload_selector: LabelSelector {
            match_labels: parse_pairs(pairs, flag)?,
            match_expressions: vec![],
        },
    }])
}

fn build_object(
    cmd: CreateCommand,
    default_ns: &dyn Fn(&NamespaceArg) -> String,
) -> anyhow::Result<Object> {
    fn labelled<S: clusterlink_api::Spec>(
        mut r: Resource<S>,
        labels: &LabelArgs,
    ) -> anyhow::Result<Resource<S>> {
        r.metadata.labels = parse_pairs(&labels.labels, "--label")?;
        Ok(r)
    }
    let obj = match cmd {
        CreateCommand::Peer {
            name,
            hosts,
            port: p,
            labels,
        } => {
            let gateways = hosts
                .into_iter()
                .map(|host| {
                    Ok(Endpoint {
                        host,
                        port: port(p, "port")?,
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            Object::Peer(labelled(
                Resource::new(
                    name,
                    clusterlink_api::SYSTEM_NAMESPACE,
                    PeerSpec { gateways },
                ),
                &labels,
            )?)
        }
        CreateCommand::Export {
            name,
            port: p,
            host,
            ns,
            labels,
        } => {
            let spec = ExportSpec {
                host: host.unwrap_or_default(),
                port: port(p, "port")?,
            };
            Object::Export(labelled(
                Resource::new(name, default_ns(&ns), spec),
                &labels,
            )?)
        }
        CreateCommand::Import {
            name,
            port: p,
            target_port,
            peers,
            export_name,
            export_namespace,
            lb_scheme,
            ns,
            labels,
        } => {
            let namespace = default_ns(&ns);
            let sources = peers
                .into_iter()
                .map(|peer| ImportSource {
                    peer,
                    export_name: export_name.clone().unwrap_or_else(|| name.clone()),
                    export_namespace: export_namespace
                        .clone()
                        .unwrap_or_else(|| namespace.clone()),
                })
                .collect();
            let spec = ImportSpec {
                port: port(p, "port")?,
                target_port: target_port.map(|t| port(t, "target-port")).transpose()?,
                sources,
                lb_scheme: lb_scheme.parse::<LbScheme>().map_err(|e| anyhow!(e))?,
            };
            Object::Import(labelled(Resource::new(name, namespace, spec), &labels)?)
        }
        CreateCommand::Policy {
            name,
            action,
            from,
            to,
            privileged,
            ns,
        } => {
            let spec = AccessPolicySpec {
                action: if action == "allow" {
                    PolicyAction::Allow
                } else {
                    PolicyAction::Deny
                },
                from: selector_entries(&from, "--from")?,
                to: selector_entries(&to, "--to")?,
            };
            if privileged {
                Object::PrivilegedAccessPolicy(Resource::new(
                    name,
                    "",
                    PrivilegedAccessPolicySpec(spec),
                ))
            } else {
                Object::AccessPolicy(Resource::new(name, default_ns(&ns), spec))
            }
        }
    };
    // Check here so a mistake in flags is explained in the flags' terms before any request.
    obj.validate().map_err(|e| anyhow!("{e}"))?;
    Ok(obj)
}

fn run_config(path: &Path, cmd: ConfigCommand) -> anyhow::Result<()> {
    let mut config = Config::load(path)?;
    match cmd {
        ConfigCommand::SetContext {
            name,
            server,
            peer,
            ca,
            cert,
            key,
            namespace,
        } => {
            let absolute = |p: Option<PathBuf>| -> anyhow::Result<Option<PathBuf>> {
                p.map(|p| std::path::absolute(&p).with_context(|| format!("path {}", p.display())))
                    .transpose()
            };
            let ctx = Context {
                server,
                peer,
                ca: absolute(ca)?,
                cert: absolute(cert)?,
                key: absolute(key)?,
                namespace,
            };
            // Fail now, not at first use, if the context cannot work.
            Client::new(&ctx)?;
            config.contexts.insert(name.clone(), ctx);
            if config.current_context.is_none() {
                config.current_context = Some(name.clone());
            }
            config.save(path)?;
            let current = if config.current_context.as_deref() == Some(name.as_str()) {
                " (current)"
            } else {
                ""
            };
            println!("context {name} saved{current}");
        }
        ConfigCommand::UseContext { name } => {
            config.resolve(Some(&name))?;
            config.current_context = Some(name.clone());
            config.save(path)?;
            println!("switched to context {name}");
        }
        ConfigCommand::GetContexts => {
            for (name, ctx) in &config.contexts {
                let marker = if config.current_context.as_deref() == Some(name.as_str()) {
                    "*"
                } else {
                    " "
                };
                println!("{marker} {name}\t{}", ctx.server);
            }
        }
        ConfigCommand::CurrentContext => {
            println!(
                "{}",
                config
                    .current_context
                    .as_deref()
                    .ok_or_else(|| anyhow!("no current context"))?
            );
        }
        ConfigCommand::DeleteContext { name } => {
            if config.contexts.remove(&name).is_none() {
                bail!("no context named {name:?}");
            }
            if config.current_context.as_deref() == Some(name.as_str()) {
                config.current_context = None;
            }
            config.save(path)?;
            println!("context {name} deleted");
        }
    }
    Ok(())
}
