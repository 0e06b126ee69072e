//! `gwctl create`: the object a create command's flags describe.

use std::collections::BTreeMap;

use anyhow::anyhow;
use clusterlink_api::catalog::MirrorRule;
use clusterlink_api::{
    AccessPolicySpec, Endpoint, ExportSpec, ImportSource, ImportSpec, LabelSelector, Object,
    PeerSpec, PolicyAction, Port, PrivilegedAccessPolicySpec, Resource, WorkloadSelectorEntry,
};

use super::args::{CreateCommand, LabelArgs, NamespaceArg};

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

pub(super) fn build_object(
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
            dial,
            no_address: _,
            mirror,
            mirror_port_offset,
            mirror_namespaces,
            mirror_max_imports,
            protocol,
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
                    PeerSpec {
                        gateways,
                        dial,
                        mirror: mirror.map(|exports| MirrorRule {
                            exports,
                            port_offset: mirror_port_offset,
                            namespaces: mirror_namespaces,
                            max_imports: (mirror_max_imports
                                != clusterlink_api::catalog::DEFAULT_MAX_IMPORTS)
                                .then_some(mirror_max_imports),
                        }),
                        protocol: protocol.into(),
                    },
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
                port: Some(port(p, "port")?),
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
                lb_scheme,
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
