use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = clusterlink::kubernetes_cmd::ControlPlaneArgs::parse();
    match clusterlink::kubernetes_cmd::run_controlplane(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
