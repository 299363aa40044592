#!/usr/bin/env bash
# Debian packages the unit tests use for real (nothing is mocked): ACL tools, promtool (to
# validate the metrics file), headless Chromium (to render the report page), npm and apt tools
# (to build real caches), Go (to build a real module cache for cache_verify). Installed only when
# missing; needs root.
set -euo pipefail
declare -A want=(
  [getfacl]=acl
  [promtool]=prometheus
  [chromium]=chromium
  [npm]=npm
  [docker-compose]=docker-compose
  [go]=golang-go
)
missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "system-deps: missing ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "system-deps: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
