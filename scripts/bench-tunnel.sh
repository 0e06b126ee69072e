#!/usr/bin/env bash
# Benchmark (not a test): direct TCP against two release-built gateways with the full two-sided
# policy path, side by side in one run. Prints medians and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bins
cargo run --release --quiet -p clusterlink --example tunnel_bench
