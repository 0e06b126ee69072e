use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = clusterlink::kubernetes_cmd::DataPlaneArgs::parse();
    clusterlink::exit_code(clusterlink::kubernetes_cmd::run_dataplane(args).await)
}
