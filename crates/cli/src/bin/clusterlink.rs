use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    clusterlink::clusterlink_cmd::run(clusterlink::clusterlink_cmd::Clusterlink::parse()).await
}
