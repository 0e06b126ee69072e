//! `clusterlink`: create the fabric's certificates, run the demo, deploy peers on Kubernetes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    };
    println!("wrote {} and {}", paths.cert.display(), paths.key.display());
    Ok(())
}
