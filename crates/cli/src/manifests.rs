//! Reading manifest files, directories and stdin, bounded, for every command that takes `-f`.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use clusterlink_api::Object;
use clusterlink_api::manifest::parse_manifests_as_applied;

/// Largest manifest input read from one file or stdin; 10,000 imports are ~3 MiB.
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

/// Every object of the sources, or where a document could not be read, why. Server-owned fields
/// (what `get -o yaml` prints: `metadata.uid`, `status`, ...) are dropped, as `kubectl apply`
/// drops them, and a note on stderr names them once.
pub(crate) fn objects_of(
    sources: &[String],
    namespace: &str,
) -> anyhow::Result<Vec<Result<Object, String>>> {
    let mut out = Vec::new();
    let mut dropped = BTreeSet::new();
    for (name, text) in read_sources(sources)? {
        let (documents, fields) = parse_manifests_as_applied(&text);
        dropped.extend(fields);
        for (i, doc) in documents.into_iter().enumerate() {
            out.push(match doc {
                Ok(mut obj) => {
                    obj.default_namespace(namespace);
                    Ok(obj)
                }
                Err(e) => Err(format!("{name}, document {} failed: {e}", i + 1)),
            });
        }
    }
    if !dropped.is_empty() {
        let fields: Vec<String> = dropped.into_iter().collect();
        eprintln!(
            "note: ignored fields the server owns, as kubectl apply does: {}",
            fields.join(", ")
        );
    }
    Ok(out)
}
