use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    clusterlink::exit_code(clusterlink::gwctl::run(clusterlink::gwctl::Gwctl::parse()).await)
}
