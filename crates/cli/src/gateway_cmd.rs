//! `cl-gateway`: the gateway process of one peer (standalone mode).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Parser;
use clusterlink_api::clients::ClientTable;
use clusterlink_dataplane::process::{
    BackendArgs, TunnelArgs, parse_labels, raise_open_file_limit, wait_for_signal,
};
use clusterlink_gateway::{Gateway, GatewayConfig, ManagementSecurity};
use clusterlink_pki::authority::{Authority, JoinToken};
use clusterlink_pki::site::{self, Enrollment};
use clusterlink_pki::tls::TlsFiles;
use std::sync::Arc;

/// The management API's default: loopback only, so nothing else on the network can reach it.
pub const DEFAULT_MANAGEMENT_ADDRESS: &str = "127.0.0.1:8443";
/// The peer port: the one port other sites reach, on every address.
pub const DEFAULT_PEER_ADDRESS: SocketAddr = SocketAddr::new(
    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    clusterlink_dataplane::tunnel::PEER_PORT,
);

#[derive(Debug, Parser)]
#[command(
    name = "cl-gateway",
    version,
    about = "Run a ClusterLink gateway for one peer",
    long_about = "Run a ClusterLink gateway for one peer, on the embedded store.\n\n\
        With the layout `clusterlink create` writes, naming the fabric and the peer is enough:\n  \
        cl-gateway --fabric default_fabric --peer p1\n\n\
        The management API listens on loopback by default (plain HTTP). On any other address it\n\
        requires mutual TLS with an admin certificate (`clusterlink create admin-cert`).\n\
        Once listening, one JSON line on stdout tells where: {\"event\":\"ready\",...}."
)]
pub struct GatewayArgs {
    /// The fabric directory (holding cert.pem of the CA, and the peer's directory).
    #[arg(long, default_value = clusterlink_pki::DEFAULT_FABRIC)]
    pub fabric: PathBuf,
    /// The peer this gateway serves; its certificate is <fabric>/<peer>/cert.pem.
    #[arg(long)]
    pub peer: Option<String>,
    /// Fabric CA certificate (default: <fabric>/cert.pem).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Peer certificate (default: <fabric>/<peer>/cert.pem).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Peer private key (default: <fabric>/<peer>/key.pem).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Where the embedded store lives (default: ./<peer>-data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Management API address; port 0 picks a free port.
    #[arg(long, default_value = DEFAULT_MANAGEMENT_ADDRESS)]
    pub management_address: SocketAddr,
    /// Peer port address: mutual TLS tunnels from other gateways; port 0 picks a free port.
    #[arg(long, default_value_t = DEFAULT_PEER_ADDRESS)]
    pub peer_address: SocketAddr,
    /// Address import listeners bind; an import's `port` is the port on this address.
    #[arg(long, default_value = "127.0.0.1")]
    pub import_address: std::net::IpAddr,
    /// YAML table of client address ranges to namespace, serviceAccount and labels, which
    /// policies match as client.clusterlink.net/* attributes.
    #[arg(long, value_name = "FILE")]
    pub client_attributes: Option<PathBuf>,
    /// A label of this peer, KEY=VALUE (repeatable): what this side's policies match as
    /// peer.clusterlink.net/labels.KEY for the local peer.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub backends: BackendArgs,
    #[command(flatten)]
    pub tunnels: TunnelArgs,
    /// Join the fabric with a one-time token (`clusterlink create join-token`): the key is made
    /// here, the certificate comes from the issuing gateway and renews itself. Kept in the data
    /// directory (default ./<name>-data), so later starts need neither the token nor --peer.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CLUSTERLINK_JOIN_TOKEN",
        hide_env_values = true
    )]
    pub join: Option<String>,
    /// Serve joining and renewal on the peer port, signing with the CA key of --fabric (this
    /// gateway's fabric directory must hold key.pem). Its ledger is <fabric>/authority.
    #[arg(long)]
    pub issuer: bool,
    /// How long the certificates this issuing gateway signs last (s, m, h or d); each gateway
    /// renews at two thirds of it.
    #[arg(long, default_value = "24h", value_parser = crate::parse_duration, requires = "issuer")]
    pub certificate_lifetime: std::time::Duration,
    /// Require mutual TLS on the management API even on loopback.
    #[arg(long)]
    pub management_tls: bool,
    /// Log level when RUST_LOG is not set.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}

impl GatewayArgs {
    fn tls_files(&self) -> anyhow::Result<TlsFiles> {
        let ca = self
            .ca
            .clone()
            .unwrap_or_else(|| self.fabric.join(clusterlink_pki::CERT_FILE));
        let (cert, key) = match (&self.cert, &self.key, &self.peer) {
            (Some(cert), Some(key), _) => (cert.clone(), key.clone()),
            (_, _, Some(peer)) => {
                let dir = self.fabric.join(peer);
                (
                    dir.join(clusterlink_pki::CERT_FILE),
                    dir.join(clusterlink_pki::KEY_FILE),
                )
            }
            _ => bail!("name the peer (--peer NAME) or give its --cert and --key"),
        };
        Ok(TlsFiles { ca, cert, key })
    }
}

/// How long joining may take at one issuing address.
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The gateway's certificate files, joining first if asked to; and where it renews, if it joined.
async fn identity(
    args: &GatewayArgs,
    data_dir: &std::path::Path,
) -> anyhow::Result<(TlsFiles, Option<Enrollment>)> {
    let joined = site::enrollment(data_dir)?;
    match (joined, &args.join) {
        (Some(joined), Some(token)) => {
            let token = JoinToken::read(token)?;
            if token.name != joined.name {
                bail!(
                    "{} already holds the identity of peer {:?}, and the token is for {:?}: give another --data-dir",
                    data_dir.display(),
                    joined.name,
                    token.name
                );
            }
            tracing::info!(peer = %joined.name, "already joined; the token is not used again");
            Ok((site::tls_files(data_dir), Some(joined)))
        }
        (Some(joined), None) if args.cert.is_none() => {
            Ok((site::tls_files(data_dir), Some(joined)))
        }
        (None, Some(token)) => {
            let joined = clusterlink_dataplane::enroll::join(token, data_dir, JOIN_TIMEOUT)
                .await
                .context("cannot join the fabric")?;
            let files = site::write_joined(
                data_dir,
                &joined.enrollment,
                &joined.key_pem,
                &joined.enrolled,
            )?;
            let revocations = data_dir.join(clusterlink_pki::authority::REVOCATIONS_FILE);
            if !joined.enrolled.revocations.is_empty() {
                clusterlink_pki::authority::write_atomically(
                    &revocations,
                    joined.enrolled.revocations.as_bytes(),
                )?;
            }
            tracing::info!(
                peer = %joined.enrollment.name,
                issuer = %joined.enrollment.issuer,
                "joined the fabric"
            );
            Ok((files, Some(joined.enrollment)))
        }
        _ => Ok((args.tls_files()?, None)),
    }
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    crate::init_logging(&args.log_level, args.log_json);
    let token_name = args
        .join
        .as_deref()
        .map(JoinToken::read)
        .transpose()?
        .map(|t| t.name);
    let data_dir = match (&args.data_dir, &args.peer, &token_name) {
        (Some(d), _, _) => d.clone(),
        (None, Some(peer), _) | (None, None, Some(peer)) => PathBuf::from(format!("{peer}-data")),
        (None, None, None) => {
            bail!("give --data-dir (or --peer, for the default ./<peer>-data)")
        }
    };
    let (tls, enrollment) = identity(&args, &data_dir).await?;
    // Every argument is checked before anything is bound or opened.
    let labels = parse_labels(&args.labels)?;
    let clients = match &args.client_attributes {
        None => ClientTable::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            ClientTable::parse(&text).with_context(|| path.display().to_string())?
        }
    };
    // The certificate is checked before anything is bound or created: an expired one, one from
    // another CA, or one naming another peer fails here.
    let (_, name) = clusterlink_gateway::gateway::load_identity(&tls)?;
    if let Some(peer) = &args.peer
        && *peer != name
    {
        bail!(
            "--peer {peer} but the certificate {} names {name:?}",
            tls.cert.display()
        );
    }
    let authority = if args.issuer {
        let authority =
            Authority::open(&args.fabric, args.certificate_lifetime).with_context(|| {
                format!(
                    "--issuer needs the fabric CA's key in {}",
                    args.fabric.display()
                )
            })?;
        Some(Arc::new(authority))
    } else {
        None
    };
    if let Some(authority) = &authority {
        // Tokens made from now on name this gateway as the one to redeem them with.
        authority.serve_as(&name)?;
    }
    let open_files = raise_open_file_limit();
    tracing::debug!(open_files, "open-file limit");
    let listener = tokio::net::TcpListener::bind(args.management_address)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for the management API",
                args.management_address
            )
        })?;
    let peer_listener = tokio::net::TcpListener::bind(args.peer_address)
        .await
        .with_context(|| format!("cannot listen on {} for the peer port", args.peer_address))?;
    let security = ManagementSecurity::for_address(listener.local_addr()?, args.management_tls);
    let config = GatewayConfig {
        tls,
        labels,
        import_address: args.import_address,
        clients,
        clients_file: args.client_attributes.clone(),
        data_dir,
        management_security: security,
        loopback_backends: args.backends.allow_loopback_backends,
        limits: args.tunnels.limits(),
        access_log: args.tunnels.access_log,
        authority,
        enrollment,
        known_peers_only: args.tunnels.known_peers_only,
    };
    let mut gateway = Gateway::start(config, listener, peer_listener).await?;
    let scheme = match gateway.management_security() {
        ManagementSecurity::LoopbackPlain => "http",
        ManagementSecurity::AdminTls => "https",
    };
    println!(
        "{}",
        serde_json::json!({
            "event": "ready",
            "peer": gateway.name(),
            "management": format!("{scheme}://{}", gateway.management_addr()),
            "peer_address": gateway.peer_addr().to_string(),
        })
    );
    tokio::select! {
        signal = wait_for_signal() => signal?,
        failure = gateway.failed() => bail!("{failure}; exiting so that a supervisor restarts the gateway"),
    }
    tracing::info!("signal received, shutting down");
    gateway.shutdown().await;
    Ok(())
}
