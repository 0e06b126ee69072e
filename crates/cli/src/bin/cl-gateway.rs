use clap::Parser;

fn main() -> std::process::ExitCode {
    clusterlink_dataplane::memory_copies::run_tuned();
    let args = clusterlink::gateway_cmd::GatewayArgs::parse();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(clusterlink::gateway_cmd::run(args)));
    clusterlink::exit_code(result)
}
