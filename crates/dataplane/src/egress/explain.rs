//! `explain`: the decision a new connection to an import would get now, on both sides, without
//! making one. Egress is decided here; each exporting gateway is asked for its ingress decision
//! with a dry run on the peer port (authenticated as a tunnel request is; nothing is dialed).

use std::sync::atomic::AtomicUsize;

use clusterlink_api::activity::{ExplainRequest, Explanation, SourceExplanation, Verdict};
use clusterlink_api::attributes::{Attributes, is_client_attribute};
use clusterlink_api::{Kind, ObjectKey};

use super::client::Egress;
use super::dial::{FirstBytes, OpenTunnel};
use super::sources::{EgressRefusal, egress_decision, source_order};
use crate::snapshot::Snapshot;
use crate::tunnel::{ExportRef, TunnelRequest};

/// Why a question could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("import {0} does not exist")]
    NoSuchImport(String),
    #[error("{0}")]
    BadRequest(String),
}

impl Egress {
    /// Explains `request` against `snapshot`: each source of the import in the order a
    /// connection would try it.
    pub(crate) async fn explain(
        &self,
        snapshot: &Snapshot,
        request: &ExplainRequest,
    ) -> Result<Explanation, ExplainError> {
        let key = ObjectKey::new(Kind::Import, &request.namespace, &request.import);
        let name = format!("{}/{}", request.namespace, request.import);
        let import = snapshot
            .imports
            .get(&key)
            .ok_or_else(|| ExplainError::NoSuchImport(name.clone()))?;
        let client = self.client_attributes(snapshot, request)?;
        let unreachable = |peer: &str| self.dialer.health.is_unreachable(peer);
        let mut sources = Vec::new();
        for source in source_order(import, &AtomicUsize::new(0), unreachable) {
            let local = snapshot.local_peer.clone();
            let export = ExportRef {
                namespace: source.export_namespace.clone(),
                name: source.export_name.clone(),
            };
            let decision = egress_decision(snapshot, &key, &client, source, &self.dialer.health);
            let egress = match decision {
                Ok((_, decision)) => Verdict {
                    gateway: local,
                    allowed: true,
                    policy: Some(decision.decided_by.reference()),
                    reason: None,
                    message: String::new(),
                },
                Err(EgressRefusal::NoSuchPeer) => Verdict {
                    gateway: local,
                    allowed: false,
                    policy: None,
                    reason: Some("NoSuchPeer".into()),
                    message: format!("no Peer {:?} is defined here", source.peer),
                },
                Err(EgressRefusal::Denied(decision)) => Verdict {
                    gateway: local,
                    allowed: false,
                    policy: Some(decision.decided_by.reference()),
                    reason: Some("PolicyDenied".into()),
                    message: format!("egress {decision}"),
                },
            };
            // Asked even when egress denies: both halves are what an operator fixes.
            let ingress = match snapshot.peers.get(&source.peer) {
                None => None,
                Some(peer) => {
                    let question = TunnelRequest {
                        export: export.clone(),
                        client: client.clone(),
                        hops: 0,
                        peer_labels: snapshot.local_labels.clone(),
                        dry_run: true,
                        via: None,
                    };
                    let answer = self
                        .dialer
                        .open_tunnel(
                            &source.peer,
                            peer,
                            &snapshot.local_peer,
                            &question,
                            None,
                            &mut FirstBytes::none(),
                        )
                        .await;
                    Some(match answer {
                        Ok(OpenTunnel { would_allow, .. }) => Verdict {
                            gateway: source.peer.clone(),
                            allowed: true,
                            policy: would_allow,
                            reason: None,
                            message: String::new(),
                        },
                        Err(failure) => {
                            let refused = failure.refusal();
                            Verdict {
                                gateway: source.peer.clone(),
                                allowed: false,
                                policy: refused.policy,
                                reason: Some(refused.refusal.as_str().into()),
                                message: refused.message,
                            }
                        }
                    })
                }
            };
            sources.push(SourceExplanation {
                peer: source.peer.clone(),
                export: export.to_string(),
                egress,
                ingress,
            });
        }
        Ok(Explanation {
            import: name,
            client: client.into_iter().collect(),
            sources,
        })
    }

    /// The client's attributes: given outright, or found for its address as for a connection.
    fn client_attributes(
        &self,
        snapshot: &Snapshot,
        request: &ExplainRequest,
    ) -> Result<Attributes, ExplainError> {
        match (&request.client_address, &request.client_attributes) {
            (Some(_), Some(_)) => Err(ExplainError::BadRequest(
                "give the client's address or its attributes, not both".into(),
            )),
            (None, None) => Err(ExplainError::BadRequest(
                "give the client's address (its attributes are found as for a connection) or its attributes".into(),
            )),
            (Some(ip), None) => Ok(match snapshot.client_hosts.get(*ip) {
                Some(pod) => pod.clone(),
                None => self.clients.borrow().attributes_of(*ip),
            }),
            (None, Some(given)) => {
                if let Some(bad) = given.keys().find(|k| !is_client_attribute(k)) {
                    return Err(ExplainError::BadRequest(format!(
                        "{bad:?} is not a client attribute (client.clusterlink.net/namespace, \
                         client.clusterlink.net/labels.<key>, ...)"
                    )));
                }
                Ok(given.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            }
        }
    }
}
