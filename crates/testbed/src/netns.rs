//! Sites as Linux network namespaces on one machine: the stage for the multi-site tests and the
//! demo.
//!
//! Each site is a namespace with one leg (`wan0`) on a shared "WAN", a bridge that lives in a
//! namespace of its own, and its own address there. A firewall in each site lets in only the
//! gateway's peer port (and replies to what the site itself opened), as a site's edge would: a
//! service inside a site is reachable from another site only through ClusterLink.
//!
//! Every interface is created directly inside a namespace made here, so deleting the namespaces
//! removes everything, and nothing is ever added to the machine's own namespace. Namespaces are
//! named `clusterlink-<pid>-<n>.<site>` after the process that made them: a later
//! [`Wan::create`] sweeps away those whose process is gone (a test run interrupted by a signal).
//! Processes started with [`Site::command`] die with the thread that started them, so an
//! interrupted run leaves nothing running either.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Every namespace made here starts with this, followed by the pid of the process that made it;
/// distinctive, since the sweep deletes such namespaces when that process is gone.
const NAME_PREFIX: &str = "clusterlink-";
/// The WAN's namespace is `<tag>.wan`; sites are `<tag>.<site>`, and no site may be called this.
const WAN_NAME: &str = "wan";
/// The WAN is this /24; site `i` (from 0) is `.i+1`. Each WAN is its own bridge in its own
/// namespace, so concurrent test beds reuse the same addresses without meeting.
const WAN_NET: [u8; 3] = [10, 77, 0];
/// The site's leg on the WAN, as seen inside the site.
const SITE_INTERFACE: &str = "wan0";
/// How long torn-down processes get to disappear before their namespace is deleted anyway.
const TEARDOWN_WAIT: Duration = Duration::from_secs(5);

/// Test beds made by this process, for unique names.
static NEXT_WAN: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN); run as root")]
    NotRoot,
    #[error("cannot run `{program}`: {source} (install iproute2 and nftables)")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error(
        "`{program}` is not installed: apt-get install {package} (or your system's {package} package)"
    )]
    Missing {
        program: &'static str,
        package: &'static str,
    },
    #[error("site name {0:?}: use 1 to 20 lowercase letters, digits or '-', other than \"wan\"")]
    BadSiteName(String),
    #[error("two sites named {0:?}")]
    DuplicateSite(String),
    #[error("a WAN holds at most 250 sites, not {0}")]
    TooManySites(usize),
    #[error("no site named {0:?} on this WAN")]
    NoSuchSite(String),
}

/// Whether this machine lets us make network namespaces: root, `ip` and `nft` present, and a
/// namespace can really be added. The error says why not.
pub fn available() -> Result<(), NetnsError> {
    if !rustix::process::geteuid().is_root() {
        return Err(NetnsError::NotRoot);
    }
    for (program, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        if !on_path(program) {
            return Err(NetnsError::Missing { program, package });
        }
    }
    let probe = format!(
        "{NAME_PREFIX}{}-{}.probe",
        std::process::id(),
        NEXT_WAN.fetch_add(1, Ordering::Relaxed)
    );
    ip(&["netns", "add", &probe])?;
    let nft = run(Command::new("ip").args(["netns", "exec", &probe, "nft", "list", "tables"]));
    delete_namespace(&probe);
    nft.map(|_| ())
}

/// A WAN joining sites; tearing it down (on drop) kills every process inside its sites and deletes
/// every namespace and interface it made.
pub struct Wan {
    namespace: String,
    sites: Vec<Site>,
    /// The NAT routers of sites behind NAT.
    routers: Vec<String>,
}

/// One site: a namespace with an address on the WAN, or behind a NAT router that has one.
#[derive(Debug, Clone)]
pub struct Site {
    pub name: String,
    pub namespace: String,
    /// The site's own address: on the WAN, or private behind its NAT router.
    pub address: Ipv4Addr,
    /// The address the WAN sees the site's connections come from: [`Site::address`], or its NAT
    /// router's WAN address.
    pub public_address: Ipv4Addr,
    /// The site's port on the WAN bridge; down means the site's link is cut.
    bridge_port: String,
    wan_namespace: String,
}

impl Wan {
    /// Makes a site per name, each letting in from the WAN only TCP to `open_ports` (a gateway's
    /// peer port; a cluster's data-plane replicas have one each).
    pub fn create(site_names: &[&str], open_ports: &[u16]) -> Result<Wan, NetnsError> {
        Wan::create_with_nat(site_names, &[], open_ports)
    }

    /// [`Wan::create`], with the sites named in `behind_nat` behind a masquerading NAT router of
    /// their own: the router holds the site's WAN address, and lets out the site's connections
    /// (their replies come back) but nothing in, as a home router or a carrier-grade NAT would.
    pub fn create_with_nat(
        site_names: &[&str],
        behind_nat: &[&str],
        open_ports: &[u16],
    ) -> Result<Wan, NetnsError> {
        if site_names.len() > 250 {
            return Err(NetnsError::TooManySites(site_names.len()));
        }
        for (i, name) in site_names.iter().enumerate() {
            if !valid_site_name(name) {
                return Err(NetnsError::BadSiteName(name.to_string()));
            }
            if site_names[..i].contains(name) {
                return Err(NetnsError::DuplicateSite(name.to_string()));
            }
        }
        if !rustix::process::geteuid().is_root() {
            return Err(NetnsError::NotRoot);
        }
        make_room_for_neighbours(site_names.len());
        sweep_stale();
        let tag = format!(
            "{NAME_PREFIX}{}-{}",
            std::process::id(),
            NEXT_WAN.fetch_add(1, Ordering::Relaxed)
        );
        // From here on, dropping `wan` removes whatever was made, also on an early return.
        let mut wan = Wan {
            namespace: format!("{tag}.{WAN_NAME}"),
            sites: Vec::new(),
            routers: Vec::new(),
        };
        ip(&["netns", "add", &wan.namespace])?;
        let n = wan.namespace.clone();
        ip(&["-n", &n, "link", "set", "lo", "up"])?;
        ip(&["-n", &n, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &n, "link", "set", "br0", "up"])?;
        for (i, name) in site_names.iter().enumerate() {
            let [a, b, c] = WAN_NET;
            let on_wan = Ipv4Addr::new(a, b, c, i as u8 + 1);
            let natted = behind_nat.contains(name);
            // Behind NAT, the site's own address is private, on its link to the router.
            let private = Ipv4Addr::new(192, 168, i as u8 + 1, 2);
            let site = Site {
                name: name.to_string(),
                namespace: format!("{tag}.{name}"),
                address: if natted { private } else { on_wan },
                public_address: on_wan,
                bridge_port: format!("s{i}"),
                wan_namespace: n.clone(),
            };
            ip(&["netns", "add", &site.namespace])?;
            wan.sites.push(site.clone());
            let s = &site.namespace;
            // What holds the WAN address: the site itself, or its router.
            let edge = if natted {
                let router = format!("{tag}.{name}-nat");
                ip(&["netns", "add", &router])?;
                wan.routers.push(router.clone());
                router
            } else {
                s.clone()
            };
            veth((&site.bridge_port, &n), (SITE_INTERFACE, &edge))?;
            ip(&["-n", &n, "link", "set", &site.bridge_port, "master", "br0"])?;
            ip(&["-n", &n, "link", "set", &site.bridge_port, "up"])?;
            up(&edge, &format!("{on_wan}/24"))?;
            if natted {
                let gateway = Ipv4Addr::new(192, 168, i as u8 + 1, 1);
                veth(("lan0", &edge), (SITE_INTERFACE, s))?;
                ip(&[
                    "-n",
                    &edge,
                    "addr",
                    "add",
                    &format!("{gateway}/24"),
                    "dev",
                    "lan0",
                ])?;
                ip(&["-n", &edge, "link", "set", "lan0", "up"])?;
                up(s, &format!("{private}/24"))?;
                ip(&[
                    "-n",
                    s,
                    "route",
                    "add",
                    "default",
                    "via",
                    &gateway.to_string(),
                ])?;
                nat_router(&edge)?;
            }
            site.firewall(open_ports)?;
        }
        Ok(wan)
    }

    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    pub fn site(&self, name: &str) -> Result<&Site, NetnsError> {
        self.sites
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| NetnsError::NoSuchSite(name.to_string()))
    }

    /// The namespaces this WAN made, the WAN's own first.
    pub fn namespaces(&self) -> Vec<String> {
        std::iter::once(self.namespace.clone())
            .chain(self.routers.iter().cloned())
            .chain(self.sites.iter().map(|s| s.namespace.clone()))
            .collect()
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        for namespace in self.namespaces().iter().rev() {
            delete_namespace(namespace);
        }
    }
}

impl Site {
    /// `program` run inside this site. It is killed if the thread that spawns it ends first, so
    /// an interrupted test or demo leaves nothing running.
    ///
    /// Spawn from a thread that lives as long as the process should: a test's own thread, or a
    /// runtime's main thread, never a `spawn_blocking` thread that may end while it runs.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespace]).arg(program);
        let parent = rustix::process::getpid();
        // SAFETY (and the one exception to the workspace's `unsafe_code = "deny"`): the closure runs in the forked child before exec, where only async-signal-safe
        // work is sound: it makes two system calls (prctl, getppid) and does not allocate, since
        // its errors are raw OS error numbers.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))?;
                // The parent may have died between fork and prctl; then no signal would come.
                if rustix::process::getppid() != Some(parent) {
                    return Err(rustix::io::Errno::SRCH.into());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs `f` on a thread inside this site's namespace. Sockets it makes belong to the site and
    /// keep working when handed back to any thread.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let path = Path::new("/run/netns").join(&self.namespace);
        let namespace = std::fs::File::open(&path)?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    rustix::thread::move_into_link_name_space(
                        std::os::fd::AsFd::as_fd(&namespace),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A TCP connection made from inside this site.
    pub fn connect(&self, to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        self.enter(|| TcpStream::connect_timeout(&to, timeout))?
    }

    /// A TCP listener inside this site.
    pub fn bind(&self, address: SocketAddr) -> io::Result<TcpListener> {
        self.enter(|| TcpListener::bind(address))?
    }

    /// Gives the site one more address of its own, reachable only from inside it (on its
    /// loopback interface): what a pod address is to the node it runs on. Kubernetes refuses
    /// loopback addresses as endpoints, so a pod played by a process needs one of these.
    pub fn add_local_address(&self, address: Ipv4Addr) -> Result<(), NetnsError> {
        ip(&[
            "-n",
            &self.namespace,
            "addr",
            "add",
            &format!("{address}/32"),
            "dev",
            "lo",
        ])
    }

    /// Cuts this site's link to the WAN, as a pulled cable would: packets are lost, nothing is
    /// refused.
    pub fn cut(&self) -> Result<(), NetnsError> {
        self.set_link("down")
    }

    /// Restores the link [`Site::cut`] cut.
    pub fn restore(&self) -> Result<(), NetnsError> {
        self.set_link("up")
    }

    fn set_link(&self, state: &str) -> Result<(), NetnsError> {
        ip(&[
            "-n",
            &self.wan_namespace,
            "link",
            "set",
            &self.bridge_port,
            state,
        ])
    }

    /// Drops everything arriving from the WAN but TCP to `open_ports` and replies to connections
    /// the site opened itself.
    fn firewall(&self, open_ports: &[u16]) -> Result<(), NetnsError> {
        let open_ports = match open_ports {
            [] => String::new(),
            ports => {
                let list: Vec<String> = ports.iter().map(u16::to_string).collect();
                format!(
                    "iifname \"{SITE_INTERFACE}\" tcp dport {{ {} }} accept",
                    list.join(", ")
                )
            }
        };
        let rules = format!(
            "table inet clusterlink-site {{
  chain input {{
    type filter hook input priority filter; policy drop;
    iifname \"lo\" accept
    ct state established,related accept
    {open_ports}
    meta l4proto {{ icmp, ipv6-icmp }} accept
  }}
}}
"
        );
        nft(&self.namespace, &rules)
    }
}

/// A veth pair: `a` in its namespace, `b` in its, each end named as given.
fn veth((a, a_namespace): (&str, &str), (b, b_namespace): (&str, &str)) -> Result<(), NetnsError> {
    ip(&[
        "link",
        "add",
        a,
        "netns",
        a_namespace,
        "type",
        "veth",
        "peer",
        "name",
        b,
        "netns",
        b_namespace,
    ])
}

/// Gives `namespace`'s leg ([`SITE_INTERFACE`]) `address` (CIDR) and brings it and loopback up.
fn up(namespace: &str, address: &str) -> Result<(), NetnsError> {
    ip(&[
        "-n",
        namespace,
        "addr",
        "add",
        address,
        "dev",
        SITE_INTERFACE,
    ])?;
    ip(&["-n", namespace, "link", "set", SITE_INTERFACE, "up"])?;
    ip(&["-n", namespace, "link", "set", "lo", "up"])
}

/// Makes `namespace` a masquerading NAT router between its `lan0` (the site) and its WAN leg:
/// the site's connections go out from the router's address, their replies come back, and
/// nothing from the WAN gets in.
fn nat_router(namespace: &str) -> Result<(), NetnsError> {
    run(Command::new("ip").args([
        "netns",
        "exec",
        namespace,
        "sh",
        "-c",
        "echo 1 > /proc/sys/net/ipv4/ip_forward",
    ]))?;
    let rules = format!(
        "table ip clusterlink-nat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"{SITE_INTERFACE}\" masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname \"lan0\" accept
  }}
  chain input {{
    type filter hook input priority filter; policy drop;
    iifname \"lo\" accept
    ct state established,related accept
  }}
}}
"
    );
    nft(namespace, &rules)
}

/// Loads `rules` into nftables inside `namespace`.
fn nft(namespace: &str, rules: &str) -> Result<(), NetnsError> {
    let failed = |source| NetnsError::Spawn {
        program: "nft".into(),
        source,
    };
    let mut child = Command::new("ip")
        .args(["netns", "exec", namespace, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(failed)?;
    let mut stdin = child.stdin.take().expect("piped");
    io::Write::write_all(&mut stdin, rules.as_bytes()).map_err(failed)?;
    drop(stdin);
    let output = child.wait_with_output().map_err(failed)?;
    check(format!("nft -f - (in {namespace})"), output)
}

fn valid_site_name(name: &str) -> bool {
    (1..=20).contains(&name.len())
        && name != WAN_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether `program` is an executable file in a directory of `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The kernel keeps one neighbour (ARP) table shared by all namespaces, and by default drops entries
/// past 1,024: a full mesh of 40 sites needs 40 × 39 of them, and past the limit connections
/// between sites time out for want of an ARP answer. Raised (never lowered) to room for every
/// pair, twice over.
fn make_room_for_neighbours(sites: usize) {
    let pairs = sites * sites;
    for (name, wanted) in [
        ("gc_thresh1", pairs),
        ("gc_thresh2", 2 * pairs),
        ("gc_thresh3", 4 * pairs),
    ] {
        let path = format!("/proc/sys/net/ipv4/neigh/default/{name}");
        let current = std::fs::read_to_string(&path)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok());
        if current.is_some_and(|c| c < wanted) {
            // Best effort: without it only large fabrics suffer, and they say why in their logs.
            let _ = std::fs::write(&path, wanted.to_string());
        }
    }
}

/// Removes the namespaces of processes that are gone: what a test run killed by a signal left.
pub fn sweep_stale() {
    let Ok(listed) = run(Command::new("ip").args(["netns", "list"])) else {
        return;
    };
    for line in listed.lines() {
        // `ip netns list` prints `name` or `name (id: N)`.
        let name = line.split_whitespace().next().unwrap_or_default();
        // Only names of exactly our shape: `clusterlink-<pid>-<n>.<site>`.
        let Some(owner) = name
            .strip_prefix(NAME_PREFIX)
            .and_then(|rest| rest.split_once('.'))
            .and_then(|(tag, site)| (valid_site_name(site) || site == WAN_NAME).then_some(tag))
            .and_then(|tag| tag.split_once('-'))
            .filter(|(_, n)| n.parse::<u32>().is_ok())
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(owner.to_string()).exists() {
            delete_namespace(name);
        }
    }
}

/// Kills every process inside `namespace`, waits for them to go, and deletes it.
fn delete_namespace(namespace: &str) {
    let deadline = Instant::now() + TEARDOWN_WAIT;
    loop {
        let pids: Vec<i32> = run(Command::new("ip").args(["netns", "pids", namespace]))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        for pid in pids {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = ip(&["netns", "delete", namespace]);
}

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    run(Command::new("ip").args(args)).map(|_| ())
}

/// Runs a command to completion; its stdout, or an error with its stderr.
fn run(cmd: &mut Command) -> Result<String, NetnsError> {
    let command = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetnsError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    check(command, output).map(|_| stdout)
}

fn check(command: String, output: std::process::Output) -> Result<(), NetnsError> {
    if output.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Command {
            command,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}
