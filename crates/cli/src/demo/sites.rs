//! The demo on three sites: network namespaces with their own addresses on a shared WAN, where
//! only each gateway's peer port is open. A small app whose services live in different sites,
//! policies that steer and deny, and a throughput check.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::AsyncWriteExt;

use clusterlink_testbed::launcher::LocalGateway;
use clusterlink_testbed::manifests::{ALLOW_ALL, export, import, peer};
use clusterlink_testbed::netns::{Site, Wan};

use super::steps::{
    bin_dir, create_and_show_fabric, describe_failure, last_refusal, read_reply, step,
};

/// Every site's gateway listens here; each site's firewall lets in nothing else.
const PEER_PORT: u16 = clusterlink_dataplane::tunnel::PEER_PORT;
/// How long a direct connection across sites is given before it counts as blocked.
const DIRECT_ATTEMPT: Duration = Duration::from_secs(1);
/// The throughput check's length, as iperf3's default is 10 s and a demo should be brisk.
const THROUGHPUT_SECONDS: u64 = 3;
/// Calls the product page makes per round: enough to see round-robin alternate.
const CALLS: usize = 4;

/// The app: which site runs which service, and the line it answers with.
const SERVICES: [(&str, &str, &str); 4] = [
    ("east", "details", "details v1"),
    ("east", "reviews", "reviews v1"),
    ("west", "reviews", "reviews v2"),
    ("west", "ratings", "ratings v1"),
];
/// shop's imports: service, sources, and the port shop's clients use (inside shop, so fixed).
const IMPORTS: [(&str, &[&str], u16); 3] = [
    ("details", &["east"], 9081),
    ("reviews", &["east", "west"], 9080),
    ("ratings", &["west"], 9082),
];

/// shop steers reviews to east: its egress denies reviews towards west.
const REVIEWS_EAST_ONLY: &str = "\
apiVersion: clusterlink.net/v1alpha1
kind: AccessPolicy
metadata: {name: reviews-east-only, namespace: default}
spec:
  action: deny
  from: [{workloadSelector: {}}]
  to: [{workloadSelector: {matchLabels: {peer.clusterlink.net/name: west, export.clusterlink.net/name: reviews}}}]
";
/// west stops serving ratings to shop.
const NO_RATINGS_FOR_SHOP: &str = "\
apiVersion: clusterlink.net/v1alpha1
kind: AccessPolicy
metadata: {name: no-ratings-for-shop, namespace: default}
spec:
  action: deny
  from: [{workloadSelector: {matchLabels: {peer.clusterlink.net/name: shop}}}]
  to: [{workloadSelector: {matchLabels: {export.clusterlink.net/name: ratings}}}]
";

/// The client attributes of shop's workloads: everything on its loopback is the product page.
const SHOP_CLIENTS: &str =
    "clients:\n  - {cidr: 127.0.0.0/8, namespace: shop, labels: {app: productpage}}\n";

/// A gateway and the site it runs in.
struct SiteGateway<'a> {
    site: &'a Site,
    gateway: LocalGateway,
}

/// Runs the demo in `dir`; with `keep`, waits for Ctrl-C before stopping everything.
/// `temporary`: whether `dir` is removed afterwards (said at the end).
pub async fn run(keep: bool, dir: &Path, temporary: bool) -> anyhow::Result<()> {
    step("1. Three sites, each a network namespace with its own address on a shared WAN");
    let wan = Wan::create(&["shop", "east", "west"], &[PEER_PORT])?;
    for site in wan.sites() {
        println!(
            "   {:<5} {:<11} namespace {}",
            site.name, site.address, site.namespace
        );
    }
    println!(
        "   Each site's firewall lets in only TCP {PEER_PORT} from the WAN: its gateway's peer port."
    );

    step("2. A fabric CA, a certificate per site, and a gateway in each site");
    create_and_show_fabric(dir, &["shop", "east", "west"])?;
    let bin_dir = bin_dir()?;
    // Who shop's clients are, by address: policies that select clients (such as west's
    // no-ratings-for-shop) refuse clients whose attributes are unknown.
    let clients = dir.join("shop-clients.yaml");
    std::fs::write(&clients, SHOP_CLIENTS)?;
    let clients = clients.display().to_string();
    let gateways: Vec<SiteGateway> = [("shop", "shop"), ("east", "east"), ("west", "west")]
        .into_iter()
        .map(|(name, peer)| {
            let site = wan.site(name)?;
            let extra: &[&str] = if name == "shop" {
                &["--client-attributes", &clients]
            } else {
                &[]
            };
            let gateway = LocalGateway::start_in(&bin_dir, dir, peer, site, PEER_PORT, extra)?;
            println!(
                "   {name:<5} peer port {}, management API {} (inside the site)",
                gateway.peer_address(),
                gateway.management()
            );
            Ok(SiteGateway { site, gateway })
        })
        .collect::<anyhow::Result<_>>()?;
    let [shop, east, west] = &gateways[..] else {
        unreachable!("three gateways")
    };
    let by_name = |name: &str| match name {
        "east" => east,
        "west" => west,
        other => unreachable!("no service runs in {other}"),
    };

    step("3. The app's services live in different sites; each site exports its own");
    let mut details_port = 0;
    for (site_name, service, answer) in SERVICES {
        let gw = by_name(site_name);
        let port = serve(gw.site, format!("{answer} ({site_name})")).await?;
        if service == "details" {
            details_port = port;
        }
        apply(gw, &export(service, port)).await?;
        println!("   {site_name}: {answer} on port {port}, exported as {service}");
    }
    for gw in [east, west] {
        apply(gw, ALLOW_ALL).await?;
    }
    println!("   east and west allow every peer (AccessPolicy allow-all)");

    step("4. shop learns where east and west are and imports the services");
    for gw in [east, west] {
        apply(shop, &peer(gw.gateway.peer(), gw.gateway.peer_address())).await?;
        println!(
            "   Peer {:<5} at {}",
            gw.gateway.peer(),
            gw.gateway.peer_address()
        );
    }
    for (service, sources, port) in IMPORTS {
        apply(shop, &import(service, port, sources)).await?;
        println!(
            "   {service:<8} from {:<10} at 127.0.0.1:{port} in shop{}",
            sources.join(", "),
            if sources.len() > 1 {
                " (round-robin)"
            } else {
                ""
            }
        );
    }
    apply(shop, ALLOW_ALL).await?;
    println!(
        "   shop allows its clients everything (AccessPolicy allow-all); they are known by address (--client-attributes: 127.0.0.0/8 is namespace shop, app=productpage)"
    );
    for (service, _, _) in IMPORTS {
        wait_listening(shop, service).await?;
    }

    step("5. Without ClusterLink, shop cannot reach another site's services");
    let direct = SocketAddr::from((east.site.address, details_port));
    let blocked = connect(shop.site, direct).await.is_err();
    println!(
        "   shop -> {direct} (east's details, directly): {}",
        if blocked {
            "blocked by east's firewall"
        } else {
            "CONNECTED (the site is not isolated!)"
        }
    );
    if !blocked {
        bail!("east's firewall let shop reach a service directly");
    }

    step("6. shop's product page calls each service through its import");
    product_page(shop.site).await;

    step("7. Policies: shop steers reviews to east, and west stops serving ratings to shop");
    apply(shop, REVIEWS_EAST_ONLY).await?;
    println!("   shop: AccessPolicy reviews-east-only denies reviews from west (egress)");
    apply(west, NO_RATINGS_FOR_SHOP).await?;
    println!("   west: AccessPolicy no-ratings-for-shop denies ratings to shop (ingress)");
    product_page(shop.site).await;
    if let Some(reason) = last_refusal(shop.gateway.log()) {
        println!("   shop's gateway logged why: {reason}");
    }

    step("8. Throughput from shop to east, through both gateways");
    match throughput(shop, east).await {
        Ok(line) => println!("   {line}"),
        Err(e) => println!("   skipped: {e:#}"),
    }

    println!();
    if keep {
        println!("Everything keeps running. Try, as root:");
        println!(
            "   ip netns exec {} gwctl --server {} get imports",
            shop.site.namespace,
            shop.gateway.management()
        );
        println!(
            "   ip netns exec {} curl -s http://127.0.0.1:9080",
            shop.site.namespace
        );
        println!("Press Ctrl-C to stop.");
        tokio::signal::ctrl_c().await?;
    }
    let namespaces = wan.namespaces().len();
    drop(gateways);
    drop(wan);
    println!(
        "Done: 3 gateways stopped, {namespaces} namespaces removed{}.",
        if temporary {
            ", and the demo directory removed"
        } else {
            ""
        }
    );
    Ok(())
}

/// One round of the product page: a call to each import, in a table.
async fn product_page(shop: &Site) {
    let header: Vec<String> = IMPORTS.iter().map(|(s, _, _)| format!("{s:<20}")).collect();
    println!("   call  {}", header.join(" ").trim_end());
    for call in 1..=CALLS {
        let mut row = format!("   {call:<5}");
        for (_, _, port) in IMPORTS {
            let answer = match call_service(shop, port).await {
                Ok(answer) => answer,
                Err(e) => format!("DENIED ({e})"),
            };
            row.push_str(&format!(" {answer:<20}"));
        }
        println!("{}", row.trim_end());
    }
}

/// A service inside `site` on a port of its own that answers each connection with `answer`.
async fn serve(site: &Site, answer: String) -> anyhow::Result<u16> {
    let listener = listen(site)?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let _ = conn.write_all(format!("{answer}\n").as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(port)
}

/// A listener on every address of `site`, on a free port.
fn listen(site: &Site) -> std::io::Result<tokio::net::TcpListener> {
    let listener = site.bind(([0, 0, 0, 0], 0).into())?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// Connects to an import on `site`'s loopback and reads the service's line.
async fn call_service(site: &Site, port: u16) -> Result<String, String> {
    let conn = connect(site, ([127, 0, 0, 1], port).into())
        .await
        .map_err(describe_failure)?;
    read_reply(conn).await
}

/// A connection made from inside `site`, on a blocking thread: entering a namespace takes one,
/// and the services answering live on this runtime's only thread.
async fn connect(site: &Site, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let site = site.clone();
    let conn = tokio::task::spawn_blocking(move || site.connect(to, DIRECT_ATTEMPT))
        .await
        .map_err(std::io::Error::other)??;
    conn.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(conn)
}

/// iperf3 between the sites if it is installed, else a built-in bulk stream; one line of result.
async fn throughput(shop: &SiteGateway<'_>, east: &SiteGateway<'_>) -> anyhow::Result<String> {
    const IMPORT_PORT: u16 = 9090;
    if clusterlink_testbed::netns::on_path("iperf3") {
        // iperf3's server, inside east, on a port of east's own namespace.
        const IPERF_PORT: u16 = 5201;
        let mut server = tokio::process::Command::from(east.site.command("iperf3"));
        let _server = server
            .args(["--server", "--port", &IPERF_PORT.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start iperf3")?;
        let local = SocketAddr::from(([127, 0, 0, 1], IPERF_PORT));
        let mut ready = false;
        for _ in 0..100 {
            if connect(east.site, local).await.is_ok() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !ready {
            bail!("iperf3 did not start in east");
        }
        apply(east, &export("iperf", IPERF_PORT)).await?;
        apply(shop, &import("iperf", IMPORT_PORT, &["east"])).await?;
        wait_listening(shop, "iperf").await?;
        let mut client = tokio::process::Command::from(shop.site.command("iperf3"));
        let out = client
            .args(["--client", "127.0.0.1", "--port", &IMPORT_PORT.to_string()])
            .args(["--time", &THROUGHPUT_SECONDS.to_string(), "--json"])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(THROUGHPUT_SECONDS + 30), out)
            .await
            .context("iperf3 did not finish")??;
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("iperf3 printed no report")?;
        if let Some(error) = report.get("error") {
            bail!("iperf3: {error}");
        }
        let received = &report["end"]["sum_received"];
        return Ok(format!(
            "iperf3, 1 stream, {THROUGHPUT_SECONDS} s: {:.2} Gbit/s ({:.2} GiB received in east)",
            received["bits_per_second"].as_f64().unwrap_or_default() / 1e9,
            received["bytes"].as_f64().unwrap_or_default() / f64::from(1 << 30)
        ));
    }
    // Built in: a sink in east counts what arrives and answers with the count; shop streams.
    let sink = listen(east.site)?;
    apply(east, &export("bulk", sink.local_addr()?.port())).await?;
    apply(shop, &import("bulk", IMPORT_PORT, &["east"])).await?;
    wait_listening(shop, "bulk").await?;
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        // Ends by itself if the sender never comes (the demo failed before it connected).
        let accepted = tokio::time::timeout(Duration::from_secs(30), sink.accept()).await;
        let (mut conn, _) = accepted.map_err(std::io::Error::other)??;
        let (mut total, mut buf) = (0u64, vec![0u8; 1 << 20]);
        loop {
            match conn.read(&mut buf).await? {
                0 => break,
                n => total += n as u64,
            }
        }
        conn.write_all(&total.to_le_bytes()).await?;
        std::io::Result::Ok(total)
    });
    let conn = connect(shop.site, ([127, 0, 0, 1], IMPORT_PORT).into()).await?;
    let mut conn = conn.into_std()?;
    conn.set_nonblocking(false)?;
    let (sent, took) = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, Duration)> {
        use std::io::{Read, Write};
        let block = vec![0x5au8; 1 << 20];
        let started = std::time::Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < Duration::from_secs(THROUGHPUT_SECONDS) {
            conn.write_all(&block)?;
            sent += block.len() as u64;
        }
        conn.shutdown(std::net::Shutdown::Write)?;
        let mut count = [0u8; 8];
        conn.read_exact(&mut count)?;
        if u64::from_le_bytes(count) != sent {
            return Err(std::io::Error::other(
                "east counted a different number of bytes",
            ));
        }
        Ok((sent, started.elapsed()))
    })
    .await??;
    Ok(format!(
        "built-in stream (install iperf3 to use it instead), {THROUGHPUT_SECONDS} s: {:.2} Gbit/s, every byte counted in east",
        sent as f64 * 8.0 / took.as_secs_f64() / 1e9
    ))
}

/// `gwctl apply -f -` inside the gateway's site (the steps say what they apply).
async fn apply(gw: &SiteGateway<'_>, manifest: &str) -> anyhow::Result<()> {
    gwctl(gw, &["apply", "-f", "-"], Some(manifest))
        .await
        .map(drop)
}

/// Runs gwctl against `gw` from inside its site; its stdout, or an error with its stderr.
async fn gwctl(gw: &SiteGateway<'_>, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    let exe = bin_dir()?.join("gwctl");
    let mut cmd = tokio::process::Command::from(gw.site.command(&exe));
    cmd.arg("--server")
        .arg(gw.gateway.management())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(input.unwrap_or_default().as_bytes())
        .await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!(
            "gwctl {} in {}: {}",
            args.join(" "),
            gw.site.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until shop's import `name` listens (it binds right after the commit).
async fn wait_listening(gw: &SiteGateway<'_>, name: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        let status = gwctl(gw, &["get", "import", name, "-o", "json"], None).await?;
        if status.contains("\"Listening\"") {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!(
        "import {name} did not start listening; see {}",
        gw.gateway.log().display()
    )
}
