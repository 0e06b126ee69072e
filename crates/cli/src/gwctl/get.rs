//! `gwctl get`: list objects, or show one.

use anyhow::{anyhow, bail};
use clusterlink_api::rest::{kind_collection_path, object_path};
use clusterlink_api::{Kind, Object, ObjectKey, Scope};
use http::Method;

use crate::client::Client;
use crate::output::{Format, render};

pub(super) async fn get(
    client: &mut Client,
    kind: Kind,
    name: Option<&str>,
    namespace: &str,
    all: bool,
    format: Format,
) -> anyhow::Result<()> {
    let namespace = kind.namespace_in(namespace).to_string();
    let (objects, single) = match name {
        Some(name) => {
            let reply = client
                .request(
                    Method::GET,
                    &object_path(&ObjectKey::new(kind, namespace.clone(), name)),
                    None,
                )
                .await?;
            reply.ensure_ok()?;
            (vec![object_of(reply.body)?], true)
        }
        None => {
            let path = kind_collection_path(kind, (!all).then_some(namespace.as_str()));
            let reply = client.request(Method::GET, &path, None).await?;
            reply.ensure_ok()?;
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
