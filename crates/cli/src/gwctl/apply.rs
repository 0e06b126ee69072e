//! `gwctl apply -f` and `gwctl delete -f`: reading manifest files and sending their objects over
//! several connections.

use crate::terminal::{errln, outln};
use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail};
use clusterlink_api::Object;
use clusterlink_api::rest::object_path;
use http::Method;

use crate::manifests::objects_of;

use crate::client::Client;
use crate::context::Context;

/// Requests in flight at once for multi-object commands: enough for the gateway to fold them
/// into shared commits (one fsync each), few enough not to crowd a small gateway.
const PIPELINE_CONNECTIONS: usize = 8;
// A bulk apply from one host must fit in what the gateway lets one source open.
const _: () =
    assert!(PIPELINE_CONNECTIONS <= clusterlink_dataplane::Limits::DEFAULT.management.per_source);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BulkOp {
    Apply,
    Delete,
}

/// Applies or deletes every object of the sources over several connections, printing one line
/// per document in document order. Objects with the same key share a connection, so a later
/// document still wins over an earlier one.
pub(super) async fn bulk(
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
    // What was applied, for the warnings about what is not working.
    let mut applied: BTreeMap<usize, Object> = BTreeMap::new();
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Ok(obj) => {
                if op == BulkOp::Apply {
                    applied.insert(i, obj.clone());
                }
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
    let mut written = Vec::new();
    let mut report = |i: usize, r: Result<String, String>| match r {
        Ok(line) => {
            outln!("{line}");
            if let Some(obj) = applied.remove(&i) {
                let did = line.rsplit(' ').next().unwrap_or("configured").to_string();
                written.push((obj, did));
            }
        }
        Err(line) => {
            errln!("{line}");
            failed += 1;
        }
    };
    while let Some((i, result)) = results.recv().await {
        pending.insert(i, result);
        while let Some(r) = pending.remove(&next) {
            report(next, r);
            next += 1;
        }
    }
    // A lost connection leaves gaps; report what did complete, in order, then the cause.
    let answered = next + pending.len();
    pending.into_iter().for_each(|(i, r)| report(i, r));
    while let Some(joined) = workers.join_next().await {
        joined.map_err(|e| anyhow!("request task failed: {e}"))??;
    }
    if answered < total {
        bail!("{} of {total} objects were not sent", total - answered);
    }
    if !written.is_empty() {
        let mut client = Client::new(ctx)?.with_timeout(timeout);
        for warning in super::warn::after_writes(&mut client, &written).await {
            errln!("warning: {warning}");
        }
    }
    if failed > 0 {
        bail!("{failed} of {total} objects failed");
    }
    Ok(())
}
