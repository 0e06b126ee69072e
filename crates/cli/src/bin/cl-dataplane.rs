use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = clusterlink::kubernetes_cmd::DataPlaneArgs::parse();
    match clusterlink::kubernetes_cmd::run_dataplane(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
