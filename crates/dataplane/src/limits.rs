//! The timeouts and connection limits of a gateway's listeners and dials, in one place, each with
//! the reason for its value (a component's own tuning, such as relay buffer sizes, stays with it). [`Limits::DEFAULT`] is what every process runs with; the tests below
//! hold the relations between the values that those reasons rely on.

use std::time::Duration;

/// How many connections a listener holds at once, in total and from one source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub total: usize,
    pub per_source: usize,
}

/// So many at once, then one more every so often (`dataplane::rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u32,
    pub every: Duration,
}

/// A gateway's timeouts and connection limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Dialing a peer gateway or a backend longer than this means it is not there.
    pub connect: Duration,
    /// A TLS handshake or first request slower than this is a stalled or hostile party (the peer
    /// port, the management API and the snapshot stream alike).
    pub handshake: Duration,
    /// Keepalive idle time of every data-path socket: a tunnel whose far end vanished without a
    /// FIN or RST (cut link, dead host) is noticed after this plus a few probes.
    pub keepalive_idle: Duration,
    /// Between keepalive probes once they start.
    pub keepalive_interval: Duration,
    /// How long an export backend's DNS answer is used for new tunnels: CoreDNS's own default
    /// TTL for cluster names, so a Service is seen as its DNS shows it; an address that refuses
    /// connections is dropped sooner (`backend_addresses`).
    pub backend_addresses: Duration,
    /// How long shutdown lets open tunnels finish before closing them: longer than most
    /// exchanges, shorter than the 30 s a service manager or Kubernetes waits before killing.
    pub drain: Duration,

    /// Peer-port connections still in the handshake or before their first request; legitimate
    /// ones leave this state within milliseconds. Per source network (a /24 or a /64, since one
    /// attacker holds many addresses of one network): a gateway opens at most
    /// [`Limits::handshakes_at_once`], and several gateways may share an address (NAT, one host).
    /// Past either bound the oldest connection that has sent nothing is closed to make room
    /// ([`crate::listener::Admission`]), so strangers cannot keep a peer out by holding places.
    pub unauthenticated: Bounds,
    /// The same, apart, for connections from the addresses of configured peers' gateways: the
    /// strangers' places never crowd them out. Several gateways of a site may share an address.
    pub unauthenticated_from_peers: Bounds,
    /// A configured peer's gateway that authenticated from an address keeps the reserved places
    /// there this long: across its reconnects, not long enough for a reassigned address to
    /// carry them to a stranger for good.
    pub peer_source_remembered: Duration,
    /// A listener more than half full gives new connections less time to prove themselves (the
    /// TLS handshake and first request, or a first byte), down to this when it is full: a
    /// gateway's handshake takes milliseconds, a stranger's silence costs a place.
    pub handshake_under_pressure: Duration,
    /// Tunnels one peer holds at once through this gateway (those it asks for, and those this
    /// gateway opens to it): far above a site's real concurrency, and low enough that a loop
    /// between gateways that no hop count sees collapses long before descriptors run out.
    pub tunnels_per_peer: usize,
    /// Tunnels one export carries at once, from every peer: one export in a loop, or one flooded,
    /// leaves room for the others. One peer gets at most half of them (`capacity::Shares`).
    pub tunnels_per_export: usize,
    /// Descriptors the data path leaves to what must answer when it is at its limit: the
    /// management API, the operations endpoint, the snapshot stream, peer probes, files and logs.
    /// The data path uses the open-file limit less these.
    pub descriptor_reserve: usize,
    /// How long a peer connection may wait idle for its next tunnel. The requesting gateway stops
    /// reusing a connection well before ([`Limits::pool_idle`]), so it never sends a request on
    /// one this side is closing.
    pub between_tunnels: Duration,
    /// New peer connections a gateway sets up at once: its own bursts stay under another
    /// gateway's per-source bound on unauthenticated connections.
    pub handshakes_at_once: usize,
    /// A pooled peer connection idle longer than this is closed instead of reused.
    pub pool_idle: Duration,
    /// Idle peer connections kept per gateway: the concurrency of bursts worth keeping warm.
    pub pool_idle_per_gateway: usize,

    /// Probe period while a peer is reachable. With the probe timeout and failure count it
    /// bounds detection of a dead or cut-off peer to under 3 s.
    pub probe_reachable_every: Duration,
    /// Probe period while a peer is unreachable: slower, but recovery still lands within 3 s.
    pub probe_unreachable_every: Duration,
    /// A probe (connect, handshake, answer) slower than this counts as a failure.
    pub probe_timeout: Duration,
    /// How long fetching a peer's catalog may take, apart from the probe that found it changed:
    /// a large catalog on a slow path must not make the peer look unreachable.
    pub catalog_fetch: Duration,
    /// A peer's catalog is fetched at most this often: a peer whose digest changes at every
    /// probe costs one fetch per this period, not one per probe. A real change still lands
    /// within a few seconds.
    pub catalog_refetch_after: Duration,
    /// A probe connection is kept between probes (a probe is then one small request and answer,
    /// not a handshake) for this long, then replaced by a new handshake: a gateway probed by
    /// many peers stays idle, and a peer whose certificate stops verifying is still found out.
    pub probe_connection_life: Duration,
    /// Consecutive failures that mark a reachable peer unreachable: one lost probe does not flap.
    pub failures_to_unreachable: u32,
    /// Consecutive successes that mark an unreachable peer reachable again.
    pub successes_to_reachable: u32,

    /// How often an import whose port was taken tries again.
    pub bind_retry: Duration,
    /// After a failed accept (out of descriptors, say), how long a listener waits before it
    /// accepts again: time for connections to close, too short for a client to notice.
    pub accept_retry: Duration,

    /// Management connections: far more than administrators and controllers open, far fewer
    /// than the descriptors the peer port needs. Per source: gwctl opens 8 for a bulk apply, and
    /// one stranger cannot take them all (on loopback every local process shares an address).
    pub management: Bounds,
    /// A management connection with no byte read or written for this long is closed: gwctl
    /// keeps one only for the requests of one command.
    pub management_idle: Duration,
    /// The longest a management request may take, reading its body included; real ones take
    /// milliseconds.
    pub management_request: Duration,
    /// A management client that has not sent its request headers by then is stalled or hostile.
    pub management_headers: Duration,
    /// How long shutdown waits for in-flight management requests before dropping them.
    pub management_shutdown: Duration,

    /// Replicas connected to the snapshot stream: a Deployment's replicas and their reconnects;
    /// far fewer than one stranger would need to exhaust descriptors. Per source network (a
    /// node's pod range is often one /24): as many replicas as a node runs.
    pub replicas: Bounds,
    /// Streams one dialed link carries at once (`dataplane::link`): its tunnels of both
    /// directions, plus probes. Each stream may hold a 256 KiB receive window, so a link holds at
    /// most this × 256 KiB (512 MiB) of the far end's unread bytes; tunnels per peer are bounded
    /// apart, as for direct connections ([`Limits::tunnels_per_peer`]).
    pub link_streams: usize,
    /// Links one peer holds here at once: a site dials one per gateway process (a replicated
    /// site, one per replica), and a renewal makes a new one before the old closes. Each may
    /// hold [`Limits::link_streams`] × 256 KiB of unread bytes, so this bounds what one peer's
    /// links hold.
    pub links_per_peer: usize,
    /// A dialed link's first retry delay after every gateway of the peer failed; delays double
    /// up to [`Limits::link_retry_max`], and start again once a link stayed up for
    /// [`Limits::link_stable`].
    pub link_retry_first: Duration,
    /// A site that reconnects within this is back within seconds of its peer's return.
    pub link_retry_max: Duration,
    /// A link that stayed up this long was not flapping: the next loss retries at once.
    pub link_stable: Duration,
    /// A snapshot larger than this is refused: a bound on what a broken or hostile peer can make
    /// the other side allocate, far above any real configuration.
    pub snapshot_bytes: u32,
    /// A replica's first reconnect delay; delays double up to [`Limits::replica_reconnect_max`]
    /// while the control plane is away.
    pub replica_reconnect_first: Duration,
    pub replica_reconnect_max: Duration,
    /// How often the control plane writes on an idle snapshot stream, so that each end can tell
    /// a quiet stream from a dead one.
    pub replica_heartbeat: Duration,
    /// A snapshot stream silent this long is dead (its control plane vanished without a reset,
    /// its link was cut): the replica reconnects, and the control plane, whose heartbeats go
    /// unacknowledged that long, drops the connection. Several heartbeats, so one delayed
    /// packet is not a disconnect.
    pub replica_silence: Duration,

    /// Connections to the operations endpoint (probes, scrapes): kubelet and a few Prometheus
    /// servers, each one request at a time.
    pub ops: Bounds,

    /// How long a client refused before it sent a byte is held before its reset: long enough
    /// for it to finish connecting, so it reads "connection reset" (a gateway refused) and never
    /// "connection refused" (nothing listens), short enough that refused clients hold little.
    pub refusal_grace: Duration,
    /// Refused clients held for `refusal_grace` at once; past that, a refused client is reset at
    /// once, so connections that are refused and never send cannot pile up descriptors.
    pub refusal_waits: usize,
    /// Shortest time between two warnings of the same kind of refused connection: a flood of
    /// strangers must not become a flood of log lines.
    pub warn_every: Duration,
    /// Lines logged about refused, broken or cut tunnels, per side, peer and reason: the few a
    /// misconfiguration causes are all there, and a peer refused a thousand times a second
    /// writes two lines a second, each saying how many it stands for (the metrics count all).
    pub problem_log: Rate,
    /// Dry runs (`explain`, `check`) one peer may ask: a `check` of hundreds of imports at once
    /// passes, a peer enumerating export names is slowed to fifty a second (and counted). A dry
    /// run tells no more than a real tunnel request would; unlike one, it costs no backend.
    pub dry_runs: Rate,
    /// How long a token this gateway gives a Go peer (`go_tunnel`) opens a tunnel: as long as
    /// the Go gateways' own tokens, enough for the tunnel that follows on a slow path.
    pub go_token_life: Duration,
    /// Tokens one Go peer may hold unused: its burst of new tunnels within a token's life. A peer
    /// that asks and never connects is refused past it, so it cannot grow this gateway's memory.
    pub go_tokens_per_peer: usize,
    /// Dry runs of one peer kept among the recent events (each says how many it stands for):
    /// enough for an operator to see who asks, not enough to push out the refusals.
    pub dry_run_events: Rate,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        connect: Duration::from_secs(5),
        handshake: Duration::from_secs(10),
        keepalive_idle: Duration::from_secs(30),
        keepalive_interval: Duration::from_secs(10),
        backend_addresses: Duration::from_secs(5),
        drain: Duration::from_secs(20),

        unauthenticated: Bounds {
            total: 1024,
            per_source: 128,
        },
        unauthenticated_from_peers: Bounds {
            total: 256,
            per_source: 64,
        },
        peer_source_remembered: Duration::from_secs(10 * 60),
        handshake_under_pressure: Duration::from_secs(2),
        tunnels_per_peer: 4096,
        tunnels_per_export: 4096,
        descriptor_reserve: 1024,
        between_tunnels: Duration::from_secs(60),
        handshakes_at_once: 32,
        pool_idle: Duration::from_secs(20),
        pool_idle_per_gateway: 64,

        probe_reachable_every: Duration::from_millis(500),
        probe_unreachable_every: Duration::from_secs(1),
        probe_timeout: Duration::from_millis(700),
        catalog_fetch: Duration::from_secs(10),
        catalog_refetch_after: Duration::from_secs(2),
        probe_connection_life: Duration::from_secs(20),
        failures_to_unreachable: 2,
        successes_to_reachable: 2,

        bind_retry: Duration::from_secs(1),
        accept_retry: Duration::from_millis(100),

        management: Bounds {
            total: 128,
            per_source: 64,
        },
        management_idle: Duration::from_secs(30),
        management_request: Duration::from_secs(20),
        management_headers: Duration::from_secs(10),
        management_shutdown: Duration::from_secs(5),

        replicas: Bounds {
            total: 256,
            per_source: 64,
        },
        link_streams: 2048,
        links_per_peer: 4,
        link_retry_first: Duration::from_millis(100),
        link_retry_max: Duration::from_secs(5),
        link_stable: Duration::from_secs(10),
        snapshot_bytes: 64 << 20,
        replica_reconnect_first: Duration::from_millis(200),
        replica_reconnect_max: Duration::from_secs(5),
        replica_heartbeat: Duration::from_secs(1),
        replica_silence: Duration::from_secs(5),

        ops: Bounds {
            total: 64,
            per_source: 16,
        },

        refusal_grace: Duration::from_millis(500),
        refusal_waits: 64,
        warn_every: Duration::from_secs(10),
        problem_log: Rate {
            burst: 20,
            every: Duration::from_millis(500),
        },
        dry_runs: Rate {
            burst: 500,
            every: Duration::from_millis(20),
        },
        go_token_life: Duration::from_secs(5),
        go_tokens_per_peer: 1024,
        dry_run_events: Rate {
            burst: 3,
            every: Duration::from_secs(10),
        },
    };
}

// Relations the reasons above rely on, checked when the crate is compiled.
const _: () = {
    let l = Limits::DEFAULT;
    assert!(
        l.handshakes_at_once <= l.unauthenticated.per_source,
        "a gateway's own burst of handshakes must fit another gateway's per-source bound"
    );
    assert!(
        l.handshakes_at_once <= l.unauthenticated_from_peers.per_source,
        "a gateway's own burst of handshakes must fit its reserved places"
    );
    assert!(
        l.management.total + l.ops.total + l.replicas.total + 256 <= l.descriptor_reserve,
        "the reserve must hold every management, operations and replica connection, and probes"
    );
    assert!(
        l.handshake_under_pressure.as_millis() >= 2 * l.probe_timeout.as_millis(),
        "a handshake fast enough for a probe must fit the shortest deadline with room to spare"
    );
};

impl Default for Limits {
    fn default() -> Limits {
        Limits::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits::DEFAULT;

    #[test]
    fn shutdown_finishes_before_a_supervisor_kills_the_process() {
        // systemd's and Kubernetes' default grace before SIGKILL.
        let grace = Duration::from_secs(30);
        assert!(L.drain < grace);
        assert!(L.management_shutdown < grace);
    }

    #[test]
    fn a_pooled_connection_is_dropped_before_the_other_side_closes_it() {
        assert!(L.pool_idle < L.between_tunnels);
        // A kept probe connection is used again long before the other side would close it.
        assert!(L.probe_unreachable_every < L.between_tunnels);
    }

    #[test]
    fn per_source_bounds_leave_room_for_other_sources() {
        for bounds in [
            L.unauthenticated,
            L.unauthenticated_from_peers,
            L.management,
            L.replicas,
            L.ops,
        ] {
            assert!(bounds.per_source < bounds.total, "{bounds:?}");
        }
    }

    #[test]
    fn a_request_is_cut_before_its_idle_connection_would_be() {
        assert!(L.management_request < L.management_idle);
        assert!(L.management_headers < L.management_request);
    }

    #[test]
    fn reconnects_back_off_from_the_first_delay_to_the_last() {
        assert!(L.link_retry_first < L.link_retry_max);
        // A link has to outlive a few of its keepalive probes to count as stable.
        assert!(L.link_stable > L.probe_reachable_every * 4);
        assert!(L.replica_reconnect_first < L.replica_reconnect_max);
    }

    #[test]
    fn a_live_stream_is_never_taken_for_a_dead_one() {
        assert!(L.replica_heartbeat * 3 <= L.replica_silence);
    }
}
