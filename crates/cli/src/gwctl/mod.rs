//! `gwctl`: manage a gateway's peers, exports, imports and access policies.
//!
//! This module runs each command; `args` holds the arguments, `apply` reads manifests and applies or
//! deletes their objects in bulk, `build` makes the object `create` describes, `get` lists and
//! shows, `observe` shows the running gateway (`get events`, `describe`, `explain`), `check` checks
//! it, `config` manages saved contexts ([`crate::context`]).

mod apply;
mod args;
mod build;
mod check;
mod config;
mod edit;
mod get;
mod link;
mod observe;
mod warn;

use crate::terminal::{errln, out, outln};
use std::time::Duration;

use anyhow::{anyhow, bail};
use clusterlink_api::rest::{kind_collection_path, object_path};
use clusterlink_api::{Kind, ObjectKey};
use http::{Method, StatusCode};

pub use self::args::{
    Command, ConfigCommand, CreateCommand, EventArgs, Gwctl, LabelArgs, NamespaceArg, Report, Shell,
};

use self::apply::{BulkOp, bulk};
use self::build::build_object;
use self::config::run_config;
use self::get::get;
use crate::client::Client;
use crate::context::{Config, Context, default_config_path};
use crate::output::Format;

/// Runs gwctl; the returned error is printed by `main` and makes the exit status non-zero.
pub async fn run(cli: Gwctl) -> anyhow::Result<()> {
    let config_path = cli.config.clone().unwrap_or_else(default_config_path);
    match cli.command {
        Command::Config(cmd) => return run_config(&config_path, cmd),
        Command::Completion { shell } => {
            use clap::CommandFactory as _;
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(
                shell,
                &mut Gwctl::command(),
                "gwctl",
                &mut std::io::stdout(),
            );
            return Ok(());
        }
        _ => {}
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
            selector,
            output,
            events,
        } => {
            if kind.eq_ignore_ascii_case("events") || kind.eq_ignore_ascii_case("event") {
                let json = match output {
                    Format::Table | Format::Wide => false,
                    Format::Json => true,
                    other => bail!("events print as a table or JSON, not {other:?}"),
                };
                let namespace = default_ns(&ns);
                let qualified = |name: String| {
                    if name.contains('/') {
                        name
                    } else {
                        format!("{namespace}/{name}")
                    }
                };
                let query = observe::EventQuery {
                    import: events.import.map(qualified),
                    export: events.export.map(qualified),
                    peer: events.peer,
                    problems: events.problems,
                    limit: events.limit,
                };
                return observe::events(&mut client, &query, json).await;
            }
            if kind.eq_ignore_ascii_case("offers") || kind.eq_ignore_ascii_case("offer") {
                let json = match output {
                    Format::Table | Format::Wide => false,
                    Format::Json => true,
                    other => bail!("offers print as a table or JSON, not {other:?}"),
                };
                if name.is_some() {
                    bail!("name the peer with --peer: `gwctl get offers --peer NAME`");
                }
                return observe::offers(&mut client, events.peer.as_deref(), json).await;
            }
            if events.any() {
                bail!(
                    "--import, --export, --peer, --problems and --limit filter `gwctl get events` only"
                );
            }
            let kinds = if kind.eq_ignore_ascii_case("all") {
                if name.is_some() {
                    bail!("`gwctl get all` lists every kind; name a kind to show one object");
                }
                Kind::ALL.to_vec()
            } else {
                vec![parse_kind(&kind)?]
            };
            get(
                &mut client,
                &kinds,
                name.as_deref(),
                &default_ns(&ns),
                all_namespaces,
                selector.as_ref(),
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
            obj_key.namespace = obj_key.kind.namespace_in(&obj_key.namespace).to_string();
            let reply = client
                .request(Method::DELETE, &object_path(&obj_key), None)
                .await?;
            reply.ensure_ok()?;
            outln!("{obj_key} deleted");
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
            reply.ensure_ok()?;
            outln!("{key} created");
            for warning in warn::after_writes(&mut client, &[(obj, "created".into())]).await {
                errln!("warning: {warning}");
            }
            Ok(())
        }
        Command::Describe { kind, name, ns } => {
            let key = observe::key_of(parse_kind(&kind)?, &default_ns(&ns), &name);
            observe::describe(&mut client, &key).await
        }
        Command::Explain {
            import,
            client: address,
            client_attributes,
            ns,
            output,
        } => {
            let request = clusterlink_api::activity::ExplainRequest {
                namespace: default_ns(&ns),
                import,
                client_address: address,
                client_attributes: if client_attributes.is_empty() {
                    None
                } else {
                    Some(observe::attributes(&client_attributes)?)
                },
            };
            observe::explain(&mut client, &request, output == Report::Json).await
        }
        Command::Check { output } => check::check(&mut client, output == Report::Json).await,
        Command::Update {
            kind,
            name,
            changes,
            ns,
        } => {
            let key = observe::key_of(parse_kind(&kind)?, &default_ns(&ns), &name);
            edit::update(&mut client, &key, &changes).await
        }
        Command::Edit { kind, name, ns } => {
            let key = observe::key_of(parse_kind(&kind)?, &default_ns(&ns), &name);
            edit::edit(&mut client, &key).await
        }
        Command::Link { addresses, labels } => {
            out!(
                "{}",
                link::peer_manifest(&mut client, &addresses, &labels.labels).await?
            );
            Ok(())
        }
        Command::Version => version(&mut client).await,
        Command::Config(_) | Command::Completion { .. } => unreachable!("handled above"),
    }
}

/// gwctl's version, then the gateway's version, API version and peer name.
async fn version(client: &mut Client) -> anyhow::Result<()> {
    outln!("client: gwctl {}", env!("CARGO_PKG_VERSION"));
    let reply = client
        .request(Method::GET, clusterlink_api::rest::VERSION_PATH, None)
        .await?;
    reply.ensure_ok()?;
    let server = &reply.body;
    let field = |name: &str| server[name].as_str().unwrap_or("?").to_string();
    outln!(
        "server: {} (API {}), peer {}",
        field("version"),
        field("apiVersion"),
        field("peer")
    );
    Ok(())
}

fn parse_kind(input: &str) -> anyhow::Result<Kind> {
    Kind::from_user_input(input).ok_or_else(|| {
        let lower = input.to_ascii_lowercase();
        let closest = Kind::ALL
            .into_iter()
            .flat_map(|k| {
                [k.plural(), k.as_str()]
                    .into_iter()
                    .chain(k.aliases().iter().copied())
            })
            .map(|name| (strsim::damerau_levenshtein(&lower, &name.to_ascii_lowercase()), name))
            .min();
        let hint = match closest {
            // Two edits cover a typo or a swapped pair, without guessing at unrelated words.
            Some((distance, name)) if distance <= 2 => format!("did you mean {name:?}? "),
            _ => String::new(),
        };
        anyhow!("unknown kind {input:?}: {hint}use peers, exports, imports, accesspolicies (policies) or privilegedaccesspolicies")
    })
}
