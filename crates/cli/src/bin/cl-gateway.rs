use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match clusterlink::gateway_cmd::run(clusterlink::gateway_cmd::GatewayArgs::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
