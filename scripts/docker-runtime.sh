#!/usr/bin/env bash
# Bring up what Molecule needs here: a Docker engine and a locally built Debian base image.
# An engine that already answers is used as it is; the image is reused when it exists.
# No registry is reachable, so the image is built with mmdebstrap from Debian's apt sources.
set -euo pipefail

IMAGE="${MLINFRA_BASE_IMAGE:-localhost/mlinfra-debian:bookworm}"
SUITE="${MLINFRA_BASE_SUITE:-bookworm}"
PACKAGES="python3,python3-apt,sudo,acl,cron,procps,ca-certificates,systemd-sysv"
LOG_DIR="${MLINFRA_LOG_DIR:-/var/log/mlinfra}"

log() { printf 'docker-runtime: %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    log "must run as root to install and start the Docker engine"
    exit 1
  fi
}

install_packages() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  command -v setfacl >/dev/null 2>&1 || missing+=(acl)
  command -v tc >/dev/null 2>&1 || missing+=(iproute2)  # workspace_e2e limits container links
  if [ "${#missing[@]}" -gt 0 ]; then
    need_root
    log "installing ${missing[*]} with apt"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

engine_up() { timeout 10 docker info >/dev/null 2>&1; }

start_engine() {
  if engine_up; then
    log "Docker engine already running: using it"
    return
  fi
  need_root
  mkdir -p "$LOG_DIR"
  log "starting dockerd (log: $LOG_DIR/dockerd.log)"
  # Without explicit limits every container fails on setrlimit on these machines.
  nohup dockerd --default-ulimit nofile=1024:1024 --default-ulimit nproc=1024:1024 \
    >"$LOG_DIR/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    engine_up && { log "dockerd answers"; return; }
    sleep 1
  done
  log "dockerd did not answer within 60 s; last log lines:"
  tail -n 20 "$LOG_DIR/dockerd.log" >&2 || true
  exit 1
}

build_image() {
  if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "base image $IMAGE exists: reusing it"
    return
  fi
  local tmp
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  log "building $IMAGE with mmdebstrap ($SUITE: $PACKAGES)"
  mmdebstrap --quiet --variant=apt --include="$PACKAGES" "$SUITE" "$tmp/rootfs.tar"
  docker import \
    --change 'CMD ["/bin/sleep", "infinity"]' \
    --change 'ENV LANG=C.UTF-8' \
    "$tmp/rootfs.tar" "$IMAGE" >/dev/null
  log "built $IMAGE"
}

install_packages
start_engine
build_image
