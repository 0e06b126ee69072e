//! gwctl's saved contexts: which gateway to talk to and with what credentials.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use clusterlink_pki::tls::TlsFiles;
use serde::{Deserialize, Serialize};

/// The config file, unless `--config` or `GWCTL_CONFIG` says otherwise.
pub fn default_config_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("gwctl").join("config.yaml")
}

/// One gateway and how to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Context {
    /// `http://127.0.0.1:8443` (loopback) or `https://host:port` (mutual TLS).
    pub server: String,
    /// The gateway's peer name: the name its certificate must carry (https only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Namespace used when a command or manifest names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl Context {
    pub fn tls_files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            ca: self.ca.clone()?,
            cert: self.cert.clone()?,
            key: self.key.clone()?,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

impl Config {
    /// Reads the config; a missing file is an empty config.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_yaml_ng::from_str(&text)
                .with_context(|| format!("{} is not a valid gwctl config", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes the config atomically (temporary file, then rename), readable by the owner only
    /// since it points at credentials.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = path.with_extension("yaml.tmp");
        let text = serde_yaml_ng::to_string(self)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// The context to use: `name` if given, else the current one.
    pub fn resolve(&self, name: Option<&str>) -> anyhow::Result<(String, Context)> {
        let name = match name.or(self.current_context.as_deref()) {
            Some(n) => n,
            None => bail!(
                "no gateway selected: run `gwctl config set-context NAME --server http://127.0.0.1:8443`, or pass --server"
            ),
        };
        let ctx = self.contexts.get(name).ok_or_else(|| {
            let known: Vec<_> = self.contexts.keys().cloned().collect();
            anyhow!(
                "no context named {name:?} (known: {})",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )
        })?;
        Ok((name.to_string(), ctx.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.yaml");
        assert_eq!(Config::load(&path).unwrap(), Config::default());
        let mut config = Config::default();
        config.contexts.insert(
            "p1".into(),
            Context {
                server: "http://127.0.0.1:1".into(),
                ..Default::default()
            },
        );
        config.current_context = Some("p1".into());
        config.save(&path).unwrap();
        let loaded = Config::load(&path).unwrap();
        assert_eq!(loaded, config);
        assert_eq!(loaded.resolve(None).unwrap().0, "p1");
        assert!(
            loaded
                .resolve(Some("p2"))
                .unwrap_err()
                .to_string()
                .contains("known: p1")
        );
        assert!(
            Config::default()
                .resolve(None)
                .unwrap_err()
                .to_string()
                .contains("set-context")
        );
    }
}
