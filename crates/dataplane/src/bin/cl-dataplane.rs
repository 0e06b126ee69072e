use clap::Parser;

fn main() -> std::process::ExitCode {
    clusterlink_dataplane::memory_copies::main(|| {
        clusterlink_dataplane::cmd::run(clusterlink_dataplane::cmd::DataPlaneArgs::parse())
    })
}
