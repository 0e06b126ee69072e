//! Sites that cannot be reached: a gateway behind a masquerading NAT (no inbound path at all)
//! dials a link to a reachable site's peer port, and tunnels of both directions ride it. Real
//! gateways in network-namespace sites; see `support::sites::can_run` for when these skip.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{Context, SHA256};
use clusterlink_testbed::netns::Site;
use support::manifests::{allow_all, export, import, policy};
use support::sites::{
    Conversation, EchoService, PEER_PORT, SiteBed, can_run, open_echoing, open_fds, reaches, talk,
};
use support::{Exchange, GatewayProcess, eventually, metric, metric_with, reachable};

/// Convergence that should take well under this; generous for a loaded 2-core machine.
const CONVERGE: Duration = Duration::from_secs(20);
/// Where each side's clients reach the other side's service.
const TO_BRANCH: u16 = 9000;
const TO_HUB: u16 = 9001;
const TO_BRANCH_BULK: u16 = 9002;
const TO_HUB_BULK: u16 = 9003;

fn served_by(name: &str) -> Exchange {
    Exchange::Served {
        backend: name.to_string(),
    }
}

/// On the dialing side: the reachable peer, and the link to keep to it.
fn dialing_peer(name: &str, address: std::net::Ipv4Addr) -> String {
    format!(
        "---\napiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {{name: {name}}}\nspec: {{gateways: [{{host: '{address}', port: {PEER_PORT}}}], dial: true}}\n"
    )
}

/// On the reachable side: a peer with no address, reached over the link it dials.
fn addressless_peer(name: &str) -> String {
    format!(
        "---\napiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {{name: {name}}}\nspec: {{}}\n"
    )
}

/// Denies every client this gateway's export `export` (a policy selecting clients by attribute
/// would deny the tests' loopback clients, whose attributes are unknown, in both directions).
fn deny_export(name: &str, export: &str) -> String {
    let to = format!("{{matchLabels: {{export.clusterlink.net/name: {export}}}}}");
    policy("AccessPolicy", name, "deny", "{}", &to)
}

/// `hub` is reachable; `branch` sits behind NAT and dials it. Each exports an echo service the
/// other imports.
struct Linked {
    hub: GatewayProcess,
    branch: GatewayProcess,
    _hub_echo: EchoService,
    _branch_echo: EchoService,
    bed: SiteBed,
}

impl Linked {
    fn new() -> Linked {
        let bed = SiteBed::with_nat(&["hub", "branch"], &["branch"]);
        let (hub_site, branch_site) = (bed.site("hub"), bed.site("branch"));
        let hub_echo = EchoService::start(hub_site, "hub");
        let branch_echo = EchoService::start(branch_site, "branch");
        let hub = bed.start("hub");
        let branch = bed.start("branch");
        hub.apply(&allow_all("allow-all"));
        branch.apply(&allow_all("allow-all"));
        hub.apply(&addressless_peer("branch"));
        branch.apply(&dialing_peer("hub", hub_site.address));
        hub.apply(&export("hub-svc", hub_echo.port));
        branch.apply(&export("branch-svc", branch_echo.port));
        hub.apply(&import("branch-svc", TO_BRANCH, &["branch"], "round-robin"));
        branch.apply(&import("hub-svc", TO_HUB, &["hub"], "round-robin"));
        hub.wait_listening("branch-svc");
        branch.wait_listening("hub-svc");
        Linked {
            hub,
            branch,
            _hub_echo: hub_echo,
            _branch_echo: branch_echo,
            bed,
        }
    }

    fn hub_site(&self) -> &Site {
        self.bed.site("hub")
    }

    fn branch_site(&self) -> &Site {
        self.bed.site("branch")
    }

    /// Whether each side's clients reach the other side's service now.
    fn both_ways(&self) -> bool {
        talk(self.hub_site(), TO_BRANCH, b"hub to branch") == served_by("branch")
            && talk(self.branch_site(), TO_HUB, b"branch to hub") == served_by("hub")
    }
}

#[test]
fn tunnels_of_both_directions_ride_the_link_a_site_behind_nat_dials() {
    if !can_run(
        "tunnels_of_both_directions_ride_the_link_a_site_behind_nat_dials",
        &[],
    ) {
        return;
    }
    let linked = Linked::new();
    let (hub, branch) = (&linked.hub, &linked.branch);
    let (hub_site, branch_site) = (linked.hub_site(), linked.branch_site());

    // Nothing reaches the branch: not its peer port at the NAT's address, not its own address.
    let branch_site_info = branch_site.clone();
    for address in [branch_site_info.public_address, branch_site_info.address] {
        assert!(
            !reaches(hub_site, SocketAddr::from((address, PEER_PORT))),
            "the hub reached the branch's peer port at {address}: the NAT let it in"
        );
    }
    // The branch reaches out.
    assert!(reaches(
        branch_site,
        SocketAddr::from((hub_site.address, PEER_PORT))
    ));

    let started = Instant::now();
    assert!(
        eventually(CONVERGE, || linked.both_ways()),
        "no traffic over the link: hub log:\n{}\nbranch log:\n{}",
        hub.log(),
        branch.log()
    );
    eprintln!("first tunnels both ways after {:?}", started.elapsed());

    // Which way each side reaches the other, and since when.
    let on_hub = hub.gwctl_ok(&["describe", "peer", "branch"]);
    assert!(
        on_hub.contains("Gateways:   none") && on_hub.contains("Reached:    link dialed by"),
        "{on_hub}"
    );
    let on_branch = branch.gwctl_ok(&["describe", "peer", "hub"]);
    let dialed_to = format!(
        "Reached:    link dialed to {}:{PEER_PORT} since",
        hub_site.address
    );
    assert!(on_branch.contains(&dialed_to), "{on_branch}");
    assert!(eventually(CONVERGE, || reachable(hub, "branch") == "True"
        && reachable(branch, "hub") == "True"));
    // Catalogs travel over the link too: the hub learns what the address-less branch offers.
    assert!(eventually(CONVERGE, || hub
        .gwctl_ok(&["get", "offers", "--peer", "branch"])
        .contains("default/branch-svc")
        && branch
            .gwctl_ok(&["get", "offers", "--peer", "hub"])
            .contains("default/hub-svc")));

    // 1 GiB each way in each direction of tunnel, every byte checked.
    let hub_bulk = BulkService::start(hub_site);
    let branch_bulk = BulkService::start(branch_site);
    hub.apply(&export("hub-bulk", hub_bulk.port));
    branch.apply(&export("branch-bulk", branch_bulk.port));
    hub.apply(&import(
        "branch-bulk",
        TO_BRANCH_BULK,
        &["branch"],
        "round-robin",
    ));
    branch.apply(&import("hub-bulk", TO_HUB_BULK, &["hub"], "round-robin"));
    hub.wait_listening("branch-bulk");
    branch.wait_listening("hub-bulk");
    for (from, port, service, what) in [
        (
            hub_site,
            TO_BRANCH_BULK,
            &branch_bulk,
            "hub's client to the branch",
        ),
        (
            branch_site,
            TO_HUB_BULK,
            &hub_bulk,
            "branch's client to the hub",
        ),
    ] {
        let started = Instant::now();
        let client = bulk_client(from, port);
        let backend = service
            .results
            .recv_timeout(Duration::from_secs(60))
            .expect("the backend's hashes");
        let took = started.elapsed();
        assert_eq!(client.received, GIB, "{what}: bytes received by the client");
        assert_eq!(
            backend.received, GIB,
            "{what}: bytes received by the backend"
        );
        assert_eq!(client.sent_hash, backend.received_hash, "{what}: upload");
        assert_eq!(backend.sent_hash, client.received_hash, "{what}: download");
        eprintln!(
            "{what}: 1 GiB each way, SHA-256 matching, in {took:?} ({:.0} MiB/s each way)",
            1024.0 / took.as_secs_f64()
        );
    }

    // A deny policy on either side refuses over the link, and says so on the side that decided.
    hub.apply(&deny_export("no-branch", "hub-svc"));
    assert!(eventually(CONVERGE, || talk(branch_site, TO_HUB, b"x")
        == Exchange::Reset));
    let refused = |gw: &GatewayProcess, peer: &str| {
        metric_with(
            gw,
            "clusterlink_connections_refused_total",
            &[
                ("side", "ingress"),
                ("refused_by", "local"),
                ("reason", "PolicyDenied"),
                ("peer", peer),
            ],
        )
    };
    assert!(refused(hub, "branch") >= 1.0);
    // The other direction still flows: the policy is about the hub's export.
    assert_eq!(
        talk(hub_site, TO_BRANCH, b"still"),
        served_by("branch"),
        "hub events:\n{}\nbranch events:\n{}",
        hub.gwctl_ok(&["get", "events"]),
        branch.gwctl_ok(&["get", "events"])
    );
    hub.gwctl_ok(&["delete", "accesspolicy", "no-branch"]);
    branch.apply(&deny_export("no-hub", "branch-svc"));
    assert!(eventually(CONVERGE, || talk(hub_site, TO_BRANCH, b"x")
        == Exchange::Reset));
    assert!(refused(branch, "hub") >= 1.0);
    assert!(eventually(CONVERGE, || talk(branch_site, TO_HUB, b"again")
        == served_by("hub")));
}

#[test]
fn a_thousand_tunnels_over_one_link_leave_no_descriptors_or_tasks_behind() {
    if !can_run(
        "a_thousand_tunnels_over_one_link_leave_no_descriptors_or_tasks_behind",
        &[],
    ) {
        return;
    }
    const CONNECTIONS: usize = 1000;
    const CONNECTING: usize = 64;
    clusterlink_dataplane::process::raise_open_file_limit();
    let linked = Linked::new();
    let (hub, branch) = (&linked.hub, &linked.branch);
    assert!(eventually(CONVERGE, || linked.both_ways()));

    let active = |gw: &GatewayProcess, side: &str| {
        metric(
            gw,
            &format!("clusterlink_connections_active{{side=\"{side}\"}}"),
        )
    };
    let tasks = |gw: &GatewayProcess| metric(gw, "clusterlink_runtime_alive_tasks");
    let at_rest = || active(hub, "egress") == 0.0 && active(branch, "ingress") == 0.0;
    assert!(eventually(CONVERGE, at_rest));
    let sample = || {
        [
            (open_fds(hub), tasks(hub)),
            (open_fds(branch), tasks(branch)),
        ]
    };
    // Probes and keepalives come and go every 0.5 s, each with a task: the level at rest is the
    // lowest seen over a few rounds.
    let lowest = || {
        let mut low = sample();
        for _ in 0..12 {
            std::thread::sleep(Duration::from_millis(100));
            for (low, now) in low.iter_mut().zip(sample()) {
                *low = (low.0.min(now.0), low.1.min(now.1));
            }
        }
        low
    };
    let before = lowest();

    // The hub's clients, to the branch's export: every tunnel a stream the hub opens on the link
    // the branch dialed.
    let conns = open_echoing(
        linked.hub_site(),
        TO_BRANCH,
        CONNECTIONS,
        CONNECTING,
        "branch",
    );
    assert_eq!(conns.len(), CONNECTIONS);
    let peak = [active(hub, "egress"), active(branch, "ingress")];
    let peak_fds = [open_fds(hub), open_fds(branch)];
    assert_eq!(
        peak, [CONNECTIONS as f64; 2],
        "every connection is a live tunnel on both sides"
    );
    drop(conns);

    assert!(eventually(CONVERGE, at_rest), "tunnels stayed open");
    let mut after = lowest();
    let deadline = Instant::now() + CONVERGE;
    while after != before && Instant::now() < deadline {
        after = lowest();
    }
    assert_eq!(
        after, before,
        "left behind (descriptors, tasks): hub, branch"
    );
    eprintln!(
        "{CONNECTIONS} tunnels over one link: (descriptors, tasks) hub {:?} -> peak {} -> {:?}; branch {:?} -> peak {} -> {:?}",
        before[0], peak_fds[0], after[0], before[1], peak_fds[1], after[1]
    );
}

#[test]
fn a_cut_link_is_found_and_healed_and_either_side_survives_kill_9() {
    if !can_run(
        "a_cut_link_is_found_and_healed_and_either_side_survives_kill_9",
        &[],
    ) {
        return;
    }
    let mut linked = Linked::new();
    assert!(eventually(CONVERGE, || linked.both_ways()));
    assert!(eventually(CONVERGE, || reachable(&linked.hub, "branch") == "True"));

    // Tunnels open both ways when the branch's uplink is cut: packets vanish, nothing is refused.
    let mut from_hub = Conversation::open(linked.hub_site(), TO_BRANCH);
    let mut from_branch = Conversation::open(linked.branch_site(), TO_HUB);
    assert!(from_hub.echoes(b"before") && from_branch.echoes(b"before"));
    linked.branch_site().cut().unwrap();
    let cut = Instant::now();
    assert!(
        eventually(CONVERGE, || reachable(&linked.hub, "branch") == "False"),
        "the hub did not notice the cut"
    );
    let noticed = cut.elapsed();
    // Both ends reset their tunnels: the link's keepalive closed it on each side.
    assert!(from_hub.is_closed(), "the hub's client was left hanging");
    assert!(
        from_branch.is_closed(),
        "the branch's client was left hanging"
    );
    assert!(
        eventually(CONVERGE, || {
            linked
                .hub
                .gwctl_ok(&["describe", "peer", "branch"])
                .contains("Reached:    not reached: no link from it is up")
        }),
        "{}\n{}",
        linked.hub.gwctl_ok(&["describe", "peer", "branch"]),
        linked.hub.log()
    );
    eprintln!("cut link: the hub marked the branch unreachable after {noticed:?}");

    linked.branch_site().restore().unwrap();
    let restored = Instant::now();
    assert!(
        eventually(CONVERGE, || linked.both_ways()),
        "no traffic after the link came back: branch log:\n{}",
        linked.branch.log()
    );
    eprintln!(
        "restored link: traffic both ways after {:?}",
        restored.elapsed()
    );

    // kill -9 the hub: the branch dials again once it is back.
    linked.hub.kill9();
    linked.hub = linked.bed.start("hub");
    let restarted = Instant::now();
    assert!(
        eventually(CONVERGE, || linked.both_ways()),
        "no traffic after the hub restarted: branch log:\n{}",
        linked.branch.log()
    );
    eprintln!(
        "hub killed: traffic both ways {:?} after its restart",
        restarted.elapsed()
    );

    // kill -9 the branch: the hub drops the dead link, and the restarted branch dials anew.
    linked.branch.kill9();
    assert!(eventually(CONVERGE, || reachable(&linked.hub, "branch") == "False"));
    linked.branch = linked.bed.start("branch");
    let restarted = Instant::now();
    assert!(
        eventually(CONVERGE, || linked.both_ways()),
        "no traffic after the branch restarted: branch log:\n{}",
        linked.branch.log()
    );
    eprintln!(
        "branch killed: traffic both ways {:?} after its restart",
        restarted.elapsed()
    );
}

const GIB: u64 = 1 << 30;
/// Bytes per write and per generated block.
const BLOCK: usize = 256 << 10;

/// What one end of a bulk exchange sent and received.
struct Bulk {
    sent_hash: Vec<u8>,
    received_hash: Vec<u8>,
    received: u64,
}

/// Fills `block` with bytes that differ per `seed` and block number (xorshift), so a misplaced
/// or repeated block changes the hash.
fn fill(block: &mut [u8], seed: u64, number: u64) {
    let mut x = (seed ^ number.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
    for chunk in block.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
}

/// Sends 1 GiB of `seed`'s bytes on `conn` and then half-closes, while reading everything the
/// other end sends; hashes both.
async fn exchange_gib(conn: tokio::net::TcpStream, seed: u64) -> std::io::Result<Bulk> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut reader, mut writer) = conn.into_split();
    let send = async move {
        let mut hash = Context::new(&SHA256);
        let mut block = vec![0u8; BLOCK];
        for number in 0..GIB / BLOCK as u64 {
            fill(&mut block, seed, number);
            hash.update(&block);
            writer.write_all(&block).await?;
        }
        writer.shutdown().await?;
        std::io::Result::Ok(hash.finish().as_ref().to_vec())
    };
    let receive = async move {
        let mut hash = Context::new(&SHA256);
        let mut buf = vec![0u8; BLOCK];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            total += n as u64;
        }
        std::io::Result::Ok((hash.finish().as_ref().to_vec(), total))
    };
    let (sent_hash, (received_hash, received)) = tokio::try_join!(send, receive)?;
    Ok(Bulk {
        sent_hash,
        received_hash,
        received,
    })
}

/// A client in `site` exchanging 1 GiB each way through the import on `port`.
fn bulk_client(site: &Site, port: u16) -> Bulk {
    site.enter(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            tokio::time::timeout(Duration::from_secs(300), exchange_gib(conn, 1))
                .await
                .expect("1 GiB each way within 5 minutes")
                .expect("the exchange")
        })
    })
    .unwrap()
}

/// A service in a site that exchanges 1 GiB each way with each connection (its own bytes,
/// seed 2) and reports the hashes.
struct BulkService {
    port: u16,
    results: std::sync::mpsc::Receiver<Bulk>,
}

impl BulkService {
    fn start(site: &Site) -> BulkService {
        let listener = site.bind("0.0.0.0:0".parse().unwrap()).unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let (report, results) = std::sync::mpsc::channel();
        // Ends with the test process: it serves until then.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((conn, _)) = listener.accept().await {
                    let report = report.clone();
                    tokio::spawn(async move {
                        if let Ok(bulk) = exchange_gib(conn, 2).await {
                            let _ = report.send(bulk);
                        }
                    });
                }
            });
        });
        BulkService { port, results }
    }
}
