use clap::Parser;

fn main() -> std::process::ExitCode {
    clusterlink_dataplane::memory_copies::main(|| {
        clusterlink::gateway_cmd::run(clusterlink::gateway_cmd::GatewayArgs::parse())
    })
}
