//! The proxy pairs ClusterLink is compared with, configured as the reference measurements were:
//! TLS 1.3 with AES-128-GCM, ECDSA P-256 certificates from one CA, each side verifying the other
//! (and the client side checking the server's name), default worker counts, no access logs, and
//! limits high enough for 10,000 idle tunnels.
//!
//! - nginx and haproxy: TCP over mutual TLS, one server-side TLS port per route.
//! - Envoy: the reference ClusterLink's data plane. The client side opens an HTTP CONNECT tunnel
//!   per connection (`tcp_proxy` with `tunneling_config`) to one server-side TLS listener that
//!   routes on the CONNECT authority; over HTTP/1.1 (a TLS connection per tunnel) or HTTP/2
//!   (tunnels as streams of shared connections).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

use crate::setup::{Backends, Certs, Fronts, PathKind, Process, Setup, free_address};

/// Routes every pair carries, in the order of [`Fronts`] and [`Backends`].
const ROUTES: [&str; 3] = ["iperf", "echo", "hold"];
/// Connections a proxy process may hold: far more than the descriptor limit lets it open, so the
/// limit is what bounds them, as for ClusterLink.
const MAX_CONNECTIONS: u32 = 100_000;
/// The name in the server side's certificate, checked by the client side.
const SERVER_NAME: &str = "server1";

/// Starts the pair `kind` in `work`; returns side A (client) and side B (server).
pub fn start(
    kind: PathKind,
    setup: &Setup,
    work: &Path,
    backends: &Backends,
    fronts: &Fronts,
) -> anyhow::Result<Vec<Process>> {
    let backends = [backends.iperf, backends.echo, backends.hold];
    let fronts = [fronts.iperf, fronts.echo, fronts.hold];
    let c = &setup.certs;
    let (client, server) = match kind {
        PathKind::Nginx => {
            let tls = [free_address()?, free_address()?, free_address()?];
            (
                nginx(work, "client", &nginx_client(c, &fronts, &tls))?,
                nginx(work, "server", &nginx_server(c, &tls, &backends))?,
            )
        }
        PathKind::Haproxy => {
            let tls = [free_address()?, free_address()?, free_address()?];
            (
                haproxy(work, "client", &haproxy_client(c, &fronts, &tls))?,
                haproxy(work, "server", &haproxy_server(c, &tls, &backends))?,
            )
        }
        PathKind::EnvoyH1 | PathKind::EnvoyH2 => {
            let http2 = kind == PathKind::EnvoyH2;
            let tls = free_address()?;
            (
                envoy(setup, work, "client", &envoy_client(c, &fronts, tls, http2))?,
                envoy(
                    setup,
                    work,
                    "server",
                    &envoy_server(c, tls, &backends, http2),
                )?,
            )
        }
        PathKind::Direct | PathKind::Clusterlink | PathKind::ClusterlinkLink => {
            unreachable!("{} is not a proxy pair", kind.label())
        }
    };
    Ok(vec![client, server])
}

fn write_config(work: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = work.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn nginx(work: &Path, side: &str, config: &str) -> anyhow::Result<Process> {
    let prefix = work.join(format!("nginx-{side}"));
    std::fs::create_dir_all(&prefix)?;
    let config = write_config(&prefix, "nginx.conf", config)?;
    let mut command = Command::new("nginx");
    command
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&config)
        // Errors before the configuration is read go here, not to /var/log/nginx.
        .arg("-e")
        .arg(prefix.join("error.log"))
        .args(["-g", "daemon off;"]);
    Process::spawn(command, &work.join(format!("nginx-{side}.log")))
}

/// Settings both nginx sides share: workers, limits, the stream module, no logs.
fn nginx_common(out: &mut String) {
    let _ = write!(
        out,
        "worker_processes auto;\n\
         pid nginx.pid;\n\
         error_log error.log warn;\n\
         load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
         events {{ worker_connections {MAX_CONNECTIONS}; }}\n\
         stream {{\n\
         access_log off;\n\
         proxy_timeout 1h;\n",
    );
}

fn nginx_client(c: &Certs, fronts: &[SocketAddr; 3], tls: &[SocketAddr; 3]) -> String {
    let mut out = String::new();
    nginx_common(&mut out);
    let _ = write!(
        out,
        "proxy_ssl on;\n\
         proxy_ssl_protocols TLSv1.3;\n\
         proxy_ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;\n\
         proxy_ssl_certificate {cert};\n\
         proxy_ssl_certificate_key {key};\n\
         proxy_ssl_trusted_certificate {ca};\n\
         proxy_ssl_verify on;\n\
         proxy_ssl_verify_depth 2;\n\
         proxy_ssl_name {SERVER_NAME};\n\
         proxy_ssl_server_name on;\n",
        cert = c.client_cert.display(),
        key = c.client_key.display(),
        ca = c.ca.display()
    );
    for (front, to) in fronts.iter().zip(tls) {
        let _ = writeln!(
            out,
            "server {{ listen {front} backlog=4096; proxy_pass {to}; }}"
        );
    }
    out.push_str("}\n");
    out
}

fn nginx_server(c: &Certs, tls: &[SocketAddr; 3], backends: &[SocketAddr; 3]) -> String {
    let mut out = String::new();
    nginx_common(&mut out);
    let _ = write!(
        out,
        "ssl_protocols TLSv1.3;\n\
         ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;\n\
         ssl_certificate {cert};\n\
         ssl_certificate_key {key};\n\
         ssl_client_certificate {ca};\n\
         ssl_verify_client on;\n\
         ssl_verify_depth 2;\n",
        cert = c.server_cert.display(),
        key = c.server_key.display(),
        ca = c.ca.display()
    );
    for (listen, backend) in tls.iter().zip(backends) {
        let _ = writeln!(
            out,
            "server {{ listen {listen} ssl backlog=4096; proxy_pass {backend}; }}"
        );
    }
    out.push_str("}\n");
    out
}

fn haproxy(work: &Path, side: &str, config: &str) -> anyhow::Result<Process> {
    let config = write_config(work, &format!("haproxy-{side}.cfg"), config)?;
    let mut command = Command::new("haproxy");
    // -db: foreground, no daemon.
    command.arg("-db").arg("-f").arg(&config);
    Process::spawn(command, &work.join(format!("haproxy-{side}.log")))
}

/// `global` and `defaults` both haproxy sides share; `tls` is the side's TLS settings.
fn haproxy_common(out: &mut String, tls: &str) {
    let _ = write!(
        out,
        // No maxconn: haproxy derives it from the descriptor limit, and refuses to start with
        // one the limit cannot serve.
        "global\n{tls}\
         defaults\n    mode tcp\n    timeout connect 10s\n    timeout client 1h\n    timeout server 1h\n"
    );
}

fn haproxy_client(c: &Certs, fronts: &[SocketAddr; 3], tls: &[SocketAddr; 3]) -> String {
    let mut out = String::new();
    haproxy_common(
        &mut out,
        "    ssl-default-server-options ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3\n    \
         ssl-default-server-ciphersuites TLS_AES_128_GCM_SHA256\n",
    );
    for ((route, front), to) in ROUTES.iter().zip(fronts).zip(tls) {
        let _ = write!(
            out,
            "listen {route}\n    bind {front}\n    server s1 {to} ssl verify required ca-file {ca} crt {crt} sni str({SERVER_NAME}) verifyhost {SERVER_NAME}\n",
            ca = c.ca.display(),
            crt = c.client_bundle.display()
        );
    }
    out
}

fn haproxy_server(c: &Certs, tls: &[SocketAddr; 3], backends: &[SocketAddr; 3]) -> String {
    let mut out = String::new();
    haproxy_common(
        &mut out,
        "    ssl-default-bind-options ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3\n    \
         ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256\n",
    );
    for ((route, listen), backend) in ROUTES.iter().zip(tls).zip(backends) {
        let _ = write!(
            out,
            "listen {route}\n    bind {listen} ssl crt {crt} ca-file {ca} verify required\n    server b1 {backend}\n",
            ca = c.ca.display(),
            crt = c.server_bundle.display()
        );
    }
    out
}

fn envoy(setup: &Setup, work: &Path, side: &str, config: &str) -> anyhow::Result<Process> {
    let config = write_config(work, &format!("envoy-{side}.yaml"), config)?;
    let mut command = Command::new(&setup.envoy);
    // Two instances on one machine: without hot restart they share no shared-memory region.
    command
        .arg("-c")
        .arg(&config)
        .args(["--disable-hot-restart", "-l", "warn"]);
    Process::spawn(command, &work.join(format!("envoy-{side}.log")))
}

fn socket_address(addr: SocketAddr, indent: &str) -> String {
    format!(
        "{indent}socket_address:\n{indent}  address: {}\n{indent}  port_value: {}\n",
        addr.ip(),
        addr.port()
    )
}

/// Envoy's default limit of 1,024 connections and requests per cluster would cap the idle test.
fn envoy_circuit_breakers() -> String {
    format!(
        "    circuit_breakers:\n      thresholds:\n      - priority: DEFAULT\n        \
         max_connections: {MAX_CONNECTIONS}\n        max_pending_requests: {MAX_CONNECTIONS}\n        \
         max_requests: {MAX_CONNECTIONS}\n        max_retries: {MAX_CONNECTIONS}\n"
    )
}

fn envoy_tls_params() -> &'static str {
    "tls_params:\n  tls_minimum_protocol_version: TLSv1_3\n  tls_maximum_protocol_version: TLSv1_3\n"
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

fn envoy_client(c: &Certs, fronts: &[SocketAddr; 3], server: SocketAddr, http2: bool) -> String {
    let mut out = String::from("static_resources:\n  listeners:\n");
    for (route, front) in ROUTES.iter().zip(fronts) {
        let _ = write!(
            out,
            "  - name: {route}\n    address:\n{addr}    filter_chains:\n    - filters:\n      \
             - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \
             \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          \
             stat_prefix: {route}\n          cluster: peer\n          tunneling_config:\n            \
             hostname: \"{route}.default:443\"\n",
            addr = socket_address(*front, "      ")
        );
    }
    let _ = write!(
        out,
        "  clusters:\n  - name: peer\n    type: STATIC\n    connect_timeout: 10s\n{breakers}",
        breakers = envoy_circuit_breakers()
    );
    if http2 {
        out.push_str(
            "    typed_extension_protocol_options:\n      \
             envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \
             \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        \
             explicit_http_config:\n          http2_protocol_options:\n            \
             initial_stream_window_size: 268435456\n",
        );
    }
    let _ = write!(
        out,
        "    load_assignment:\n      cluster_name: peer\n      endpoints:\n      - lb_endpoints:\n        \
         - endpoint:\n            address:\n{addr}    transport_socket:\n      \
         name: envoy.transport_sockets.tls\n      typed_config:\n        \
         \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n        \
         sni: {SERVER_NAME}\n        common_tls_context:\n{params}          tls_certificates:\n          \
         - certificate_chain:\n              filename: {cert}\n            private_key:\n              \
         filename: {key}\n{alpn}          validation_context:\n            trusted_ca:\n              \
         filename: {ca}\n            match_typed_subject_alt_names:\n            - san_type: DNS\n              \
         matcher:\n                exact: {SERVER_NAME}\n",
        addr = socket_address(server, "              "),
        params = indent(envoy_tls_params(), 10),
        cert = c.client_cert.display(),
        key = c.client_key.display(),
        ca = c.ca.display(),
        alpn = if http2 {
            "          alpn_protocols:\n          - h2\n"
        } else {
            ""
        },
    );
    out
}

fn envoy_server(c: &Certs, listen: SocketAddr, backends: &[SocketAddr; 3], http2: bool) -> String {
    let mut out = format!(
        "static_resources:\n  listeners:\n  - name: tunnel\n    address:\n{addr}    filter_chains:\n    \
         - transport_socket:\n        name: envoy.transport_sockets.tls\n        typed_config:\n          \
         \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n          \
         require_client_certificate: true\n          common_tls_context:\n{params}            \
         tls_certificates:\n            - certificate_chain:\n                filename: {cert}\n              \
         private_key:\n                filename: {key}\n{alpn}            validation_context:\n              \
         trusted_ca:\n                filename: {ca}\n      filters:\n      \
         - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          \
         \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          \
         stat_prefix: tunnel\n          codec_type: {codec}\n{h2}          stream_idle_timeout: 3600s\n          \
         upgrade_configs:\n          - upgrade_type: CONNECT\n          http_filters:\n          \
         - name: envoy.filters.http.router\n            typed_config:\n              \
         \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n          \
         route_config:\n            name: routes\n            virtual_hosts:\n",
        addr = socket_address(listen, "      "),
        params = indent(envoy_tls_params(), 12),
        cert = c.server_cert.display(),
        key = c.server_key.display(),
        ca = c.ca.display(),
        alpn = if http2 {
            "            alpn_protocols:\n            - h2\n"
        } else {
            ""
        },
        codec = if http2 { "HTTP2" } else { "HTTP1" },
        h2 = if http2 {
            "          http2_protocol_options:\n            allow_connect: true\n            \
             initial_stream_window_size: 268435456\n"
        } else {
            ""
        },
    );
    for route in ROUTES {
        let _ = write!(
            out,
            "            - name: {route}\n              domains:\n              - \"{route}.default:443\"\n              \
             routes:\n              - match:\n                  connect_matcher: {{}}\n                \
             route:\n                  cluster: backend_{route}\n                  timeout: 0s\n                  \
             upgrade_configs:\n                  - upgrade_type: CONNECT\n                    connect_config: {{}}\n"
        );
    }
    out.push_str("  clusters:\n");
    for (route, backend) in ROUTES.iter().zip(backends) {
        let _ = write!(
            out,
            "  - name: backend_{route}\n    type: STATIC\n    connect_timeout: 10s\n{breakers}    \
             load_assignment:\n      cluster_name: backend_{route}\n      endpoints:\n      \
             - lb_endpoints:\n        - endpoint:\n            address:\n{addr}",
            breakers = envoy_circuit_breakers(),
            addr = socket_address(*backend, "              ")
        );
    }
    out
}
