//! `gwctl apply -f` and `gwctl delete -f`: reading manifest files and sending their objects over
//! several connections.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clusterlink_api::rest::object_path;
use clusterlink_api::{Object, parse_manifests};
use http::Method;

use crate::client::Client;
use crate::context::Context;

/// Largest manifest input gwctl reads from one file or stdin; 10,000 imports are ~3 MiB.
const MAX_INPUT_BYTES: u64 = 64 * 1024 * 1024;

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
// A bulk apply from one host must fit in what the gateway lets one source open.
const _: () =
    assert!(PIPELINE_CONNECTIONS <= clusterlink_dataplane::Limits::DEFAULT.management.per_source);

#[derive(Debug, Clone, Copy)]
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
