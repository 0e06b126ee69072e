use clap::Parser;

fn main() -> std::process::ExitCode {
    clusterlink_dataplane::memory_copies::run_tuned();
    let args = clusterlink_dataplane::cmd::DataPlaneArgs::parse();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(clusterlink_dataplane::cmd::run(args)));
    clusterlink_dataplane::process::exit_code(result)
}
