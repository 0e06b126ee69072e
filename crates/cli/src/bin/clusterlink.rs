use clap::Parser;

fn main() -> std::process::ExitCode {
    match clusterlink::clusterlink_cmd::run(clusterlink::clusterlink_cmd::Clusterlink::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
