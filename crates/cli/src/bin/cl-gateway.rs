use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    clusterlink::exit_code(
        clusterlink::gateway_cmd::run(clusterlink::gateway_cmd::GatewayArgs::parse()).await,
    )
}
