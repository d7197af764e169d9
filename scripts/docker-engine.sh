#!/usr/bin/env bash
# Make a Docker engine and the test image available on a Debian machine without any image registry.
# Idempotent: installs what is missing, starts dockerd only if no daemon answers, builds the image only if absent.
# The debootstrap rootfs is cached as a tarball, so a later run on the same machine skips debootstrap.
#
#   scripts/docker-engine.sh            # engine + mini-swe-runner-test:bookworm
#   MSR_TEST_IMAGE=name:tag DEBIAN_MIRROR=http://... scripts/docker-engine.sh
set -euo pipefail

IMAGE="${MSR_TEST_IMAGE:-mini-swe-runner-test:bookworm}"
SUITE="${MSR_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE_DIR="${MSR_CACHE_DIR:-/var/cache/mini-swe-runner}"
DOCKERD_LOG="${MSR_DOCKERD_LOG:-/var/log/mini-swe-runner-dockerd.log}"
WAIT_SECONDS="${MSR_DOCKERD_WAIT:-60}"

log() { printf 'docker-engine: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "run as root or install sudo"
    SUDO="sudo"
fi

# 1. Packages.
if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null || ! command -v debootstrap >/dev/null; then
    log "installing docker.io and debootstrap"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends docker.io debootstrap
fi

# 2. Daemon.
if docker info >/dev/null 2>&1; then
    log "a Docker daemon already answers"
else
    [ -z "${DOCKER_HOST:-}" ] || die "DOCKER_HOST=$DOCKER_HOST does not answer; unset it to use a local dockerd"
    log "starting dockerd (log: $DOCKERD_LOG)"
    $SUDO mkdir -p "$(dirname "$DOCKERD_LOG")"
    # setsid + nohup: the daemon outlives this script and the shell that ran it; the log is opened as root.
    # From /: a daemon must not hold on to a directory (this checkout) that may be removed later.
    $SUDO sh -c 'cd / && exec setsid nohup dockerd >>"$1" 2>&1 </dev/null' sh "$DOCKERD_LOG" &
    for _ in $(seq "$WAIT_SECONDS"); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { tail -n 20 "$DOCKERD_LOG" >&2 || true; die "dockerd did not answer within ${WAIT_SECONDS}s"; }
    log "dockerd is up"
fi

# 3. Test image, built from a Debian rootfs (no registry needed).
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "image $IMAGE already exists"
    exit 0
fi
TARBALL="$CACHE_DIR/$SUITE-minbase-$(dpkg --print-architecture).tar"
if [ ! -s "$TARBALL" ]; then
    log "debootstrap $SUITE from $MIRROR (about 30 s)"
    $SUDO mkdir -p "$CACHE_DIR"
    WORK="$($SUDO mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
    trap '$SUDO rm -rf "$WORK"' EXIT
    $SUDO debootstrap --variant=minbase "$SUITE" "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    $SUDO rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
    $SUDO tar -C "$WORK/rootfs" --numeric-owner -cf "$TARBALL.tmp" .
    $SUDO mv "$TARBALL.tmp" "$TARBALL"
fi
log "importing $TARBALL as $IMAGE"
$SUDO cat "$TARBALL" | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$IMAGE" >/dev/null
log "image $IMAGE is ready"
