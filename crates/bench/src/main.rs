use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    clusterlink_bench::run(clusterlink_bench::Args::parse()).await
}
