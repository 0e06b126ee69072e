//! `clusterlink`: create the fabric's certificates, run the demo, deploy peers on Kubernetes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use clusterlink_pki::authority::{Authority, DEFAULT_LIFETIME, RevokeTarget, parse_hex};
use clusterlink_pki::issue::{DEFAULT_CA_VALIDITY_DAYS, DEFAULT_LEAF_VALIDITY_DAYS};
use clusterlink_pki::{
    DEFAULT_FABRIC, Validity, create_admin_cert, create_fabric, create_peer_cert,
};

#[derive(Debug, Parser)]
#[command(
    name = "clusterlink",
    version,
    about = "ClusterLink: create a fabric's certificates, run the demo, deploy peers on Kubernetes"
)]
pub struct Clusterlink {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create fabric, peer and admin certificates.
    #[command(subcommand)]
    Create(Create),
    /// Run a local fabric of real gateways, apply the example manifests and list them.
    #[cfg(feature = "demo")]
    Demo(crate::demo::DemoArgs),
    /// Deploy a peer on Kubernetes (or write its manifests).
    #[command(subcommand)]
    Deploy(Deploy),
    /// Remove what `deploy` created.
    #[command(subcommand)]
    Delete(Delete),
    /// Work with access policies offline.
    #[command(subcommand)]
    Policy(crate::policy_cmd::Policy),
    /// Revoke a peer's certificates (or one, by serial) with the fabric CA: writes the fabric's
    /// revocation list, which the issuing gateway passes to every gateway within seconds.
    Revoke(RevokeArgs),
}

/// What `clusterlink revoke` revokes, and where the fabric is.
#[derive(Debug, clap::Args)]
#[command(
    group(clap::ArgGroup::new("what").required(true).args(["peer", "serial", "cert"])),
    after_help = "The list is written to <fabric>/authority/revocations.pem. A gateway started with \
        --issuer on this fabric follows that file and passes it on over the peer links: every \
        gateway refuses the certificates at handshake and cuts their live tunnels. A gateway that \
        was offline gets the list when it next probes or is probed. To hand the list to a gateway \
        directly, POST the file to its management API at /api/v1/revocations."
)]
pub struct RevokeArgs {
    /// Every unexpired certificate the fabric's ledger holds for this peer (joined, renewed, or
    /// made with `create peer-cert`). The site needs a new join token to come back.
    #[arg(long)]
    pub peer: Option<String>,
    /// One certificate by serial number, hex (as `openssl x509 -serial` prints it).
    #[arg(long)]
    pub serial: Option<String>,
    /// One certificate, read from its PEM file.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    #[arg(long, default_value = DEFAULT_FABRIC)]
    pub fabric: String,
    /// Directory holding the fabric.
    #[arg(long, default_value = ".")]
    pub path: PathBuf,
}

/// `clusterlink create join-token`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The token is printed alone on stdout, so that it can be captured:\n  \
    TOKEN=$(clusterlink create join-token --name site3 --at 10.0.0.1:443)\n\
    and the new site runs `cl-gateway --join \"$TOKEN\"`. It makes its key there, checks the \
    issuing gateway against the CA fingerprint the token carries, and receives a certificate that \
    renews itself. The token is a secret until it is redeemed, once."
)]
pub struct JoinTokenArgs {
    /// The peer name the new site will have (its certificate's DNS name).
    #[arg(long)]
    pub name: String,
    /// The issuing gateway's peer address, HOST:PORT, as the new site reaches it (repeatable:
    /// tried in order). That gateway runs with --issuer on this fabric.
    #[arg(long = "at", value_name = "HOST:PORT", required = true)]
    pub at: Vec<String>,
    /// How long the token may wait to be redeemed (s, m, h or d; at most 7d).
    #[arg(long, default_value = "15m", value_parser = crate::parse_duration)]
    pub expires: std::time::Duration,
    #[arg(long, default_value = DEFAULT_FABRIC)]
    pub fabric: String,
    /// Directory holding the fabric.
    #[arg(long, default_value = ".")]
    pub path: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Deploy {
    /// Everything a peer needs on Kubernetes: namespace, certificate Secret, RBAC, control- and
    /// data-plane Deployments, the peer-port Service and the custom resource definitions.
    Peer(crate::kubernetes_cmd::DeployPeerArgs),
}

#[derive(Debug, Subcommand)]
pub enum Delete {
    /// Delete the objects `deploy peer` created.
    Peer(crate::kubernetes_cmd::DeletePeerArgs),
}

#[derive(Debug, Subcommand)]
pub enum Create {
    /// Create a fabric: a self-signed ECDSA P-256 CA in <path>/<name>/{cert,key}.pem.
    Fabric {
        #[arg(long, default_value = DEFAULT_FABRIC)]
        name: String,
        /// Directory to create the fabric in.
        #[arg(long, default_value = ".")]
        path: PathBuf,
        /// How long the CA is valid.
        #[arg(long, default_value_t = DEFAULT_CA_VALIDITY_DAYS)]
        validity_days: u32,
    },
    /// Create a peer certificate in <path>/<fabric>/<name>/{cert,key}.pem, signed by the fabric.
    PeerCert(LeafArgs),
    /// Create a management (admin) client certificate in <path>/<fabric>/admins/<name>/, for
    /// gwctl to reach a gateway whose management API is not on loopback.
    AdminCert(LeafArgs),
    /// Create a one-time token with which a new site joins the fabric (`cl-gateway --join`).
    JoinToken(JoinTokenArgs),
}

/// What a certificate signed by the fabric is created from.
#[derive(Debug, clap::Args)]
pub struct LeafArgs {
    /// The name: a DNS label; for a peer, its identity in the fabric.
    #[arg(long)]
    pub name: String,
    #[arg(long, default_value = DEFAULT_FABRIC)]
    pub fabric: String,
    /// Directory holding the fabric.
    #[arg(long, default_value = ".")]
    pub path: PathBuf,
    #[arg(long, default_value_t = DEFAULT_LEAF_VALIDITY_DAYS)]
    pub validity_days: u32,
}

/// Runs a command; its exit status is 0 on success and 1 on an error, except for `policy test`,
/// which answers 0 (allowed), 1 (denied) or 2 (bad input), as `grep` does.
pub async fn run(cli: Clusterlink) -> ExitCode {
    let result = match cli.command {
        Command::Policy(crate::policy_cmd::Policy::Test(args)) => {
            return crate::policy_cmd::run(args).unwrap_or_else(|e| {
                eprintln!("error: {}", crate::error_report(&e));
                ExitCode::from(2)
            });
        }
        Command::Create(create) => create_certificate(create),
        Command::Revoke(args) => revoke(args),
        #[cfg(feature = "demo")]
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Deploy(Deploy::Peer(args)) => crate::kubernetes_cmd::deploy_peer(args).await,
        Command::Delete(Delete::Peer(args)) => crate::kubernetes_cmd::delete_peer(args).await,
    };
    crate::exit_code(result)
}

fn create_certificate(create: Create) -> anyhow::Result<()> {
    let paths = match create {
        Create::Fabric {
            name,
            path,
            validity_days,
        } => create_fabric(&path, &name, Validity::days(validity_days)?)?,
        Create::PeerCert(a) => create_peer_cert(
            &a.path.join(&a.fabric),
            &a.name,
            Validity::days(a.validity_days)?,
        )?,
        Create::AdminCert(a) => create_admin_cert(
            &a.path.join(&a.fabric),
            &a.name,
            Validity::days(a.validity_days)?,
        )?,
        Create::JoinToken(args) => return create_join_token(args),
    };
    println!("wrote {} and {}", paths.cert.display(), paths.key.display());
    Ok(())
}

fn create_join_token(args: JoinTokenArgs) -> anyhow::Result<()> {
    for at in &args.at {
        if !at
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        {
            anyhow::bail!("--at {at:?}: expected HOST:PORT (the issuing gateway's peer address)");
        }
    }
    let authority = Authority::open(&args.path.join(&args.fabric), DEFAULT_LIFETIME)?;
    let token = authority.create_token(&args.name, args.expires, args.at.clone())?;
    println!("{token}");
    eprintln!(
        "join token for peer {:?}: redeem it once, within {}, with `cl-gateway --join TOKEN` on the new site",
        args.name,
        crate::format_duration(args.expires)
    );
    Ok(())
}

fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let target = match (&args.peer, &args.serial, &args.cert) {
        (Some(peer), _, _) => RevokeTarget::Peer(peer.clone()),
        (_, Some(serial), _) => RevokeTarget::Serial(parse_hex(serial).ok_or_else(|| {
            anyhow::anyhow!("--serial {serial:?}: expected hex digits (colons allowed)")
        })?),
        (_, _, Some(cert)) => {
            let certs = clusterlink_pki::tls::load_certs(cert)?;
            let (serial, _) = clusterlink_pki::authority::serial_and_expiry(&certs[0])?;
            RevokeTarget::Serial(serial)
        }
        _ => anyhow::bail!("say what to revoke: --peer, --serial or --cert"),
    };
    // Revocation never issues: the ledger's lifetime setting does not matter here.
    let authority = Authority::open(&args.path.join(&args.fabric), DEFAULT_LIFETIME)?;
    let revoked = authority.revoke(&target)?;
    if revoked.serials.is_empty() {
        println!(
            "already revoked; revocation list #{} rewritten to {}",
            revoked.number,
            revoked.path.display()
        );
    } else {
        println!(
            "revoked {} certificate(s) (serial {}); revocation list #{} written to {}",
            revoked.serials.len(),
            revoked.serials.join(", "),
            revoked.number,
            revoked.path.display()
        );
    }
    Ok(())
}
