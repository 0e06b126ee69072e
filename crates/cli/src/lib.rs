//! ClusterLink's command-line tools. The binaries are thin; everything lives here so tests and
//! other tools can call it.
//!
//! - `clusterlink` ([`clusterlink_cmd`]): fabric PKI, Kubernetes deployment, and the local demo
//!   (`demo`, with the default feature `demo`, the only part that links the test bed,
//!   `clusterlink-testbed`).
//! - `gwctl` ([`gwctl`]): manage a gateway through its management API.
//! - `cl-gateway` ([`gateway_cmd`]): the gateway process.
//! - `cl-controlplane` ([`kubernetes_cmd`]): a peer's control plane on Kubernetes (its data-plane
//!   replicas, `cl-dataplane`, are in `clusterlink-dataplane`, which links no store, HTTP server
//!   framework or Kubernetes client).

pub mod client;
pub mod clusterlink_cmd;
pub mod context;
#[cfg(feature = "demo")]
pub mod demo;
pub mod gateway_cmd;
pub mod gwctl;
pub mod kubernetes_cmd;
mod manifests;
pub mod output;
pub mod policy_cmd;
mod terminal;

pub use clusterlink_dataplane::process::{error_report, exit_code, init_logging};

/// A duration as operators write it: a number and a unit, `s`, `m`, `h` or `d` (`90s`, `15m`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit: write it as 90s, 15m, 24h or 7d"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number then s, m, h or d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("{text:?}: unknown unit {other:?} (s, m, h or d)")),
    };
    number
        .checked_mul(seconds)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// A duration in the largest unit that divides it (`15m`, `24h`, `90s`).
pub fn format_duration(duration: std::time::Duration) -> String {
    let s = duration.as_secs();
    match s {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
