//! `gwctl config`: save, choose, list and remove contexts.

use crate::terminal::outln;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};

use super::args::ConfigCommand;
use crate::client::Client;
use crate::context::{Config, Context};

pub(super) fn run_config(path: &Path, cmd: ConfigCommand) -> anyhow::Result<()> {
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
            outln!("context {name} saved{current}");
        }
        ConfigCommand::UseContext { name } => {
            config.resolve(Some(&name))?;
            config.current_context = Some(name.clone());
            config.save(path)?;
            outln!("switched to context {name}");
        }
        ConfigCommand::GetContexts => {
            for (name, ctx) in &config.contexts {
                let marker = if config.current_context.as_deref() == Some(name.as_str()) {
                    "*"
                } else {
                    " "
                };
                outln!("{marker} {name}\t{}", ctx.server);
            }
        }
        ConfigCommand::CurrentContext => {
            outln!(
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
            outln!("context {name} deleted");
        }
    }
    Ok(())
}
