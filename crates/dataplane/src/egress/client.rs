//! Serving one client of an import: decide each source in turn, open a tunnel to the first
//! that takes it, relay, and cut the tunnel if access is revoked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use clusterlink_api::clients::ClientTable;
use clusterlink_api::{ImportSource, ObjectKey};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::dial::{Dialer, FirstBytes, OpenTunnel, TunnelFailure};
use super::sources::{EgressRefusal, egress_decision, source_order};
use crate::capacity::{Descriptors, HeldDescriptors, TunnelCounts};
use crate::hops::RelayedConnections;
use crate::limits::Limits;
use crate::live::LiveTunnels;
use crate::metrics::{
    Metrics, Refusal, Refused, RefusedBy, SetupStage, Side, TunnelEnding, TunnelRef,
};
use crate::relay::relay_as;
use crate::snapshot::Snapshot;
use crate::tunnel::{ExportRef, RefusalReason, TunnelRequest};
use clusterlink_api::attributes::Attributes;

/// What every import connection shares: how to reach peers, who clients are, the open tunnels.
pub(crate) struct Egress {
    pub limits: Limits,
    /// The data path's descriptors: a client connection holds two, for itself and its tunnel.
    pub descriptors: Arc<Descriptors>,
    /// Open tunnels per peer they go to.
    pub peer_tunnels: TunnelCounts,
    pub dialer: Dialer,
    pub clients: watch::Receiver<Arc<ClientTable>>,
    pub metrics: Arc<Metrics>,
    /// Open tunnels, decided again when the configuration changes.
    pub live: LiveTunnels<EgressTunnel>,
    /// Connections this gateway's ingress made to backends, for loop detection.
    pub relayed: Arc<RelayedConnections>,
    /// Refused clients held until their first byte ([`Limits::refusal_waits`] at most).
    pub refusal_waits: tokio::sync::Semaphore,
}

/// A live egress tunnel, as much as is needed to decide it again.
pub(crate) struct EgressTunnel {
    /// The certificate the exporting gateway authenticated with: its revocation cuts the tunnel.
    server_certificate: Option<rustls_pki_types::CertificateDer<'static>>,
    import: ObjectKey,
    client: Attributes,
    source: ImportSource,
}

impl Egress {
    /// Closes open tunnels that `snapshot` no longer allows: the egress policy now denies them,
    /// their source was removed from the import, or their Peer was deleted.
    pub fn revalidate(&self, snapshot: &Snapshot) {
        self.live.revalidate(|t| {
            snapshot
                .imports
                .get(&t.import)
                .is_some_and(|i| i.sources.contains(&t.source))
                && egress_decision(
                    snapshot,
                    &t.import,
                    &t.client,
                    &t.source,
                    &self.dialer.health,
                )
                .is_ok()
        });
        self.dialer.sweep_pool(snapshot);
    }

    /// Closes open tunnels to gateways whose certificate `tls` revokes.
    pub fn revalidate_certificates(&self, tls: &clusterlink_pki::reload::GatewayTls) {
        self.live.revalidate(|t| {
            t.server_certificate
                .as_ref()
                .is_none_or(|c| !tls.revocations.is_revoked(c))
        });
    }

    /// Refuses a client of import `key` for want of descriptors: reset at once, and reported.
    pub(super) fn refuse_unserved(&self, client: TcpStream, remote: SocketAddr, key: &ObjectKey) {
        let message = format!(
            "the data path holds all of its {} descriptors; the client was reset",
            self.descriptors.total()
        );
        let tunnel = TunnelRef {
            side: Side::Egress,
            import: Some(format!("{}/{}", key.namespace, key.name)),
            export: String::new(),
            peer: String::new(),
            client: Some(remote),
        };
        let refusal = Refused {
            by: RefusedBy::Local,
            refusal: Refusal::Tunnel(RefusalReason::TunnelLimit),
            policy: None,
            message,
        };
        self.metrics.refused(&tunnel, refusal);
        reset(client);
    }

    /// Serves one client connection of import `key` from `snapshot`: the first source that
    /// policy allows and whose peer takes the tunnel carries it; if none does, the client is
    /// reset.
    pub(super) async fn serve_client(
        &self,
        mut client: TcpStream,
        remote: SocketAddr,
        key: &ObjectKey,
        snapshot: &Snapshot,
        next: &AtomicUsize,
        mut descriptors: HeldDescriptors,
    ) {
        let accepted_at = Instant::now();
        let _active = self.metrics.accepted(Side::Egress);
        // Unknown only if the socket already failed; the relay then meets the error.
        let listening_on = client
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let import_name = format!("{}/{}", key.namespace, key.name);
        let tunnel = |source: Option<&ImportSource>| TunnelRef {
            side: Side::Egress,
            import: Some(import_name.clone()),
            export: source.map_or_else(String::new, |s| {
                format!("{}/{}", s.export_namespace, s.export_name)
            }),
            peer: source.map_or_else(String::new, |s| s.peer.clone()),
            client: Some(remote),
        };
        let local = |refusal, policy, message| Refused {
            by: RefusedBy::Local,
            refusal,
            policy,
            message,
        };
        let Some(import) = snapshot.imports.get(key) else {
            let message = "the import was deleted while the connection was accepted".into();
            let refusal = local(Refusal::NoSuchImport, None, message);
            self.metrics.refused(&tunnel(None), refusal);
            reset(client);
            return;
        };
        let client_attributes = match snapshot.client_hosts.get(remote.ip()) {
            Some(pod) => pod.clone(),
            None => self.clients.borrow().attributes_of(remote.ip()),
        };
        // Read only through `first` until a tunnel is open, so no byte is lost or sent twice.
        let mut first = FirstBytes::of(&client);
        // The first source's decision is timed from the accept; a later one's from its own start.
        let mut accepted = Some(accepted_at);
        // Looked up once, for the first source policy allows.
        let mut known_hops = None;
        for source in source_order(import, next, |peer| self.dialer.health.is_unreachable(peer)) {
            let deciding = accepted.take().unwrap_or_else(Instant::now);
            let export = ExportRef {
                namespace: source.export_namespace.clone(),
                name: source.export_name.clone(),
            };
            let decision = egress_decision(
                snapshot,
                key,
                &client_attributes,
                source,
                &self.dialer.health,
            );
            let (peer, decided) = match decision {
                Ok((peer, _)) => (peer, deciding.elapsed()),
                Err(EgressRefusal::NoSuchPeer) => {
                    let message = format!("source skipped: no Peer {:?} is defined", source.peer);
                    let refusal = local(Refusal::NoSuchPeer, None, message);
                    self.metrics.refused(&tunnel(Some(source)), refusal);
                    continue;
                }
                Err(EgressRefusal::Denied(decision)) => {
                    let refusal = local(
                        Refusal::Tunnel(RefusalReason::PolicyDenied),
                        Some(decision.decided_by.reference()),
                        format!("egress {decision}"),
                    );
                    self.metrics.refused(&tunnel(Some(source)), refusal);
                    continue;
                }
            };
            let Some(peer_slot) = self.peer_tunnels.enter(&source.peer) else {
                let message = format!(
                    "{} tunnels to peer {} are open, as many as may be; try again later",
                    self.peer_tunnels.limit(),
                    source.peer
                );
                let refusal = local(Refusal::Tunnel(RefusalReason::TunnelLimit), None, message);
                self.metrics.refused(&tunnel(Some(source)), refusal);
                continue;
            };
            let hops = match known_hops {
                Some(hops) => hops,
                None => {
                    let patience = self.limits.connect;
                    let hops = self.relayed.hops_from(remote, listening_on, patience).await;
                    *known_hops.insert(hops)
                }
            };
            let request = TunnelRequest {
                export: export.clone(),
                client: client_attributes.clone(),
                hops,
                peer_labels: snapshot.local_labels.clone(),
                dry_run: false,
                via: None,
            };
            let client_ends = (remote, listening_on);
            match self
                .dialer
                .open_tunnel(
                    &source.peer,
                    peer,
                    &snapshot.local_peer,
                    &request,
                    Some(client_ends),
                    &mut first,
                )
                .await
            {
                Ok(OpenTunnel {
                    mut connection,
                    leftover,
                    gateway,
                    would_allow: _,
                    framing,
                }) => {
                    // Timed only now: the stages are those of tunnels that open.
                    self.metrics.stage_took(SetupStage::EgressDecision, decided);
                    self.metrics.authorized(Side::Egress, accepted_at.elapsed());
                    let meter = self.metrics.tunnel_opened(tunnel(Some(source)));
                    meter.sent(first.taken() as u64);
                    let _peer_slot = peer_slot;
                    let server_certificate = connection.peer_certificate();
                    // A list that arrived after the handshake was not there to check it.
                    let revoked = server_certificate
                        .as_ref()
                        .is_some_and(|c| self.dialer.tls.borrow().revocations.is_revoked(c));
                    let registered = self.live.register(EgressTunnel {
                        server_certificate,
                        import: key.clone(),
                        client: client_attributes.clone(),
                        source: source.clone(),
                    });
                    if revoked {
                        registered.revoked.notify_one();
                    }
                    let relayed = tokio::select! {
                        moved = relay_as(framing, &mut client, &mut connection, leftover, &meter, true) => match moved {
                            Ok(relayed) => relayed,
                            Err(e) => {
                                // One end broke mid-stream (a reset, or TCP closed without
                                // close_notify): the client must not take it for a clean end.
                                let why = format!("{e}; the client was reset");
                                self.metrics.tunnel_ended(meter, TunnelEnding::Broken(why));
                                reset(client);
                                return;
                            }
                        },
                        _ = registered.revoked.notified() => {
                            let cut = TunnelEnding::Revoked(RefusedBy::Local);
                            self.metrics.tunnel_ended(meter, cut);
                            reset(client);
                            return;
                        }
                    };
                    // Kept with a descriptor of the client's: the client's own is freed.
                    if relayed.reusable
                        && let Some(descriptor) = descriptors.split_one()
                    {
                        self.dialer.keep_warm(gateway, connection, descriptor).await;
                    }
                    self.metrics.tunnel_ended(meter, TunnelEnding::Closed);
                    return;
                }
                Err(failure @ TunnelFailure::Interrupted { .. }) => {
                    self.metrics
                        .refused(&tunnel(Some(source)), failure.refusal());
                    reset(client);
                    return;
                }
                Err(failure) => self
                    .metrics
                    .refused(&tunnel(Some(source)), failure.refusal()),
            }
        }
        let message = "every source was refused or failed; the client was reset".into();
        let refusal = local(Refusal::AllSourcesFailed, None, message);
        self.metrics.refused(&tunnel(None), refusal);
        // A client refused before it sent anything may still be finishing its connect, and a
        // reset that overtakes it reads as a closed port. Its first bytes (or a moment) mean it
        // is connected: every refusal then reads as a reset of an open connection.
        if first.taken() == 0 {
            hold_refused(&client, &self.refusal_waits, self.limits.refusal_grace).await;
        }
        reset(client);
    }
}

/// Holds a refused client that has sent nothing until it has (or `grace` passes), so that it
/// reads the reset as one of an open connection, not as a closed port. At most as many are held
/// as `waits` has permits; any more are not held at all, so silent refused connections cannot
/// pile up.
async fn hold_refused(client: &TcpStream, waits: &tokio::sync::Semaphore, grace: Duration) {
    if let Ok(_held) = waits.try_acquire() {
        let _ = tokio::time::timeout(grace, first_byte(client)).await;
    }
}

/// Waits until `client` has sent a byte, closed or failed. Readiness alone may be a false
/// positive (tokio says so), so only a read tells.
async fn first_byte(client: &TcpStream) {
    let mut byte = [0u8; 1];
    loop {
        if client.readable().await.is_err() {
            return;
        }
        match client.try_read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            // A byte, the end, or an error: the client is past connecting.
            _ => return,
        }
    }
}

/// Ends the client's connection with RST, so it sees a failure rather than a clean, empty close.
pub(super) fn reset(client: TcpStream) {
    let _ = client.set_zero_linger();
    drop(client);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A connected pair on loopback: the client's end and the accepted end.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (client, accepted)
    }

    #[tokio::test(start_paused = true)]
    async fn refused_clients_are_held_for_their_first_byte_and_no_more_than_the_bound() {
        const GRACE: Duration = Duration::from_secs(60);
        let waits = tokio::sync::Semaphore::new(2);
        // A silent client is held for the whole grace.
        let (_silent, accepted) = pair().await;
        let started = Instant::now();
        hold_refused(&accepted, &waits, GRACE).await;
        assert_eq!(started.elapsed(), GRACE);
        // One that sends a byte is let go at once.
        let (mut talking, accepted) = pair().await;
        talking.write_all(b"x").await.unwrap();
        let started = Instant::now();
        hold_refused(&accepted, &waits, GRACE).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        // With every place taken (an attacker's silent connections), the next is not held.
        let _taken = waits.acquire_many(2).await.unwrap();
        let (_silent, accepted) = pair().await;
        let started = Instant::now();
        hold_refused(&accepted, &waits, GRACE).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
