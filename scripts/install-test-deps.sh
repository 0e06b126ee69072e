#!/usr/bin/env bash
# Installs what the test suite needs on a bare Debian machine. Safe to run repeatedly.
#
# The multi-site tests (crates/cli/tests/sites.rs) run sites as network namespaces with real
# programs as clients and servers; they need root, iproute2 and nftables, and the programs below.
set -euo pipefail
needed=()
want() { command -v "$1" >/dev/null || needed+=("$2"); }
want openssl openssl
# The quickstart's test runs the README's block, which serves a directory with python3.
want python3 python3
# The console's test loads it in a real headless browser.
want chromium chromium
# Prometheus's linter checks what /metrics serves (the package's server is never started).
want promtool prometheus
if [ "$(id -u)" -eq 0 ]; then
  want ip iproute2
  want nft nftables
  want curl curl
  want nginx nginx
  want iperf3 iperf3
  want redis-server redis-server
  want redis-benchmark redis-tools
  # The attack tests give a gateway file capabilities, as an operator binding port 443 would.
  want setcap libcap2-bin
fi
if [ ${#needed[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing ${needed[*]}: install them (needs root: apt-get install ${needed[*]})" >&2
    exit 1
  fi
  apt-get update -qq
  # No service of these packages should start on the machine itself: the tests run their own.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends \
    "${needed[@]}" >/dev/null
fi
