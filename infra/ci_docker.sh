#!/usr/bin/env bash
# Prepare a Debian CI machine for the container tests; safe to run any number of times.
#  1. apt-get install docker.io, docker-compose and debootstrap when missing;
#  2. start dockerd in the background when the socket does not answer (bounded wait);
#  3. provide debian:bookworm-slim: docker pull, or debootstrap + docker import (~25 s).
set -Eeuo pipefail

BASE_IMAGE="${BASE_IMAGE:-debian:bookworm-slim}"
SUITE="${SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DOCKERD_LOG="${DOCKERD_LOG:-/tmp/dockerd.log}"
WAIT_S="${DOCKERD_WAIT_S:-60}"

log() { printf '[ci_docker] %s\n' "$*" >&2; }

docker_answers() { timeout 10 docker info >/dev/null 2>&1; }

compose_available() {
    timeout 30 docker compose version >/dev/null 2>&1 || timeout 30 docker-compose version >/dev/null 2>&1
}

install_missing() {
    local packages=()
    command -v dockerd >/dev/null 2>&1 || packages+=(docker.io)
    command -v docker >/dev/null 2>&1 || packages+=(docker.io)
    compose_available || packages+=(docker-compose)
    command -v debootstrap >/dev/null 2>&1 || packages+=(debootstrap)
    if ((${#packages[@]} == 0)); then
        log "docker, compose and debootstrap already installed"
        return
    fi
    mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)
    log "installing ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
}

start_dockerd() {
    if docker_answers; then
        log "docker engine answers"
        return
    fi
    log "starting dockerd in the background (log: $DOCKERD_LOG)"
    nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    local waited=0
    until docker_answers; do
        if ((waited >= WAIT_S)); then
            log "dockerd did not answer within ${WAIT_S}s; last log lines:"
            tail -n 30 "$DOCKERD_LOG" >&2 || true
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    log "dockerd answers after ${waited}s"
}

seed_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "$BASE_IMAGE present"
        return
    fi
    if timeout 60 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
        log "$BASE_IMAGE pulled"
        return
    fi
    log "$BASE_IMAGE cannot be pulled: debootstrapping $SUITE (minbase) from $MIRROR"
    local rootfs
    rootfs="$(mktemp -d /tmp/seed-rootfs.XXXXXX)"
    trap 'rm -rf "$rootfs"' RETURN
    debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >/tmp/debootstrap.log 2>&1 || {
        tail -n 30 /tmp/debootstrap.log >&2
        exit 1
    }
    rm -f "$rootfs"/var/cache/apt/archives/*.deb
    rm -rf "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import -c 'CMD ["bash"]' -c 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" >/dev/null
    log "$BASE_IMAGE imported"
}

if [ "$(id -u)" != 0 ]; then
    log "must run as root (apt-get, dockerd, debootstrap)"
    exit 1
fi
install_missing
start_dockerd
seed_base_image
