#!/usr/bin/env bash
# Installs what the test suite needs on a bare Debian machine. Safe to run repeatedly.
set -euo pipefail
needed=()
command -v openssl >/dev/null || needed+=(openssl)
if [ ${#needed[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing ${needed[*]}: install them (needs root: apt-get install ${needed[*]})" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${needed[@]}" >/dev/null
fi
