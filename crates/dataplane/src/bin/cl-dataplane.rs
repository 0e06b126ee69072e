use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = clusterlink_dataplane::cmd::DataPlaneArgs::parse();
    clusterlink_dataplane::process::exit_code(clusterlink_dataplane::cmd::run(args).await)
}
