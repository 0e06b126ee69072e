#!/usr/bin/env bash
# Benchmark (not a test): time `gwctl apply` of N imports (default 10,000) in one file against a
# release-built gateway on the embedded store. Prints the wall time and objects per second.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
cargo build --release --quiet
bin=$PWD/target/release
work=$(mktemp -d)
trap 'kill $gw 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
"$bin/clusterlink" create fabric >/dev/null
"$bin/clusterlink" create peer-cert --name bench >/dev/null
"$bin/cl-gateway" --peer bench --management-address 127.0.0.1:0 --peer-address 127.0.0.1:0 --log-level warn > ready.json 2> gateway.log &
gw=$!
until [ -s ready.json ]; do
  kill -0 $gw 2>/dev/null || { cat gateway.log; exit 1; }
  sleep 0.05
done
url=$(sed 's/.*"management":"\([^"]*\)".*/\1/' ready.json)
for i in $(seq 1 "$n"); do
  printf -- '---\napiVersion: clusterlink.net/v1alpha1\nkind: Import\nmetadata: {name: svc-%d, namespace: bench}\nspec:\n  port: %d\n  sources:\n    - {peer: p1, exportName: svc-%d, exportNamespace: bench}\n    - {peer: p2, exportName: svc-%d, exportNamespace: bench}\n' "$i" $((i % 60000 + 1024)) "$i" "$i"
done > imports.yaml
start=$(date +%s.%N)
"$bin/gwctl" --server "$url" apply -f imports.yaml > applied.txt
end=$(date +%s.%N)
created=$(grep -c ' created$' applied.txt)
listed=$("$bin/gwctl" --server "$url" get imports -n bench -o json | grep -c '"kind": "Import"')
awk -v n="$n" -v c="$created" -v l="$listed" -v s="$start" -v e="$end" 'BEGIN {
  t = e - s; printf "applied %d imports (%d created, %d listed back) in %.2f s: %.0f objects/s\n", n, c, l, t, n / t }'
