#!/usr/bin/env bash
# Make a Podman service (the Docker API on a Unix socket) and the test image available, for the tests that run the
# docker backend against Podman. Idempotent, like scripts/docker-engine.sh, whose cached rootfs tarball it imports
# (run that first). Prints nothing on stdout; the socket is $MSR_PODMAN_SOCKET (default below).
set -euo pipefail

SOCKET="${MSR_PODMAN_SOCKET:-/run/mini-swe-runner-podman.sock}"
IMAGE="${MSR_TEST_IMAGE:-mini-swe-runner-test:bookworm}"
CACHE_DIR="${MSR_CACHE_DIR:-/var/cache/mini-swe-runner}"
LOG="${MSR_PODMAN_LOG:-/var/log/mini-swe-runner-podman.log}"

log() { printf 'podman-engine: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (the tests use Podman's rootful service)"

# 1. Packages: catatonit is Podman's --init; curl asks the socket whether the service answers.
if ! command -v podman >/dev/null || [ ! -x /usr/libexec/podman/catatonit ] || ! command -v curl >/dev/null; then
    log "installing podman, catatonit and curl"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends podman catatonit curl
fi

# 2. The service. Podman's default container rlimits (nofile and nproc of about a million) exceed what a root
# process may set inside some sandboxes and CI machines ("error setting rlimit type 7: operation not permitted"):
# containers get the service's own hard limits instead (read off the running service, then it starts again).
answers() { curl -sf --unix-socket "$SOCKET" http://d/_ping >/dev/null 2>&1; }
start_service() {
    rm -f "$SOCKET"
    mkdir -p "$(dirname "$LOG")"
    # From /: the service's working directory is its containers' conmon's, and a directory removed later (a
    # checkout, a worktree) makes every container fail ("conmon: Failed to get working directory").
    (cd / && exec setsid nohup podman system service --time=0 "unix://$SOCKET" >>"$LOG" 2>&1 </dev/null) &
    SERVICE_PID=$!
    for _ in $(seq 30); do answers && return 0; sleep 1; done
    tail -n 20 "$LOG" >&2 || true
    die "podman service did not answer within 30 s"
}
CONF=/etc/containers/containers.conf
service_cwd_gone() {
    local pid
    for pid in $(pgrep -f "podman system service --time=0 unix://$SOCKET" || true); do
        case "$(readlink "/proc/$pid/cwd" 2>/dev/null)" in *" (deleted)") return 0 ;; esac
    done
    return 1
}
if ! answers || ! grep -q 'mini-swe-runner' "$CONF" 2>/dev/null || service_cwd_gone; then
    pkill -f "podman system service --time=0 unix://$SOCKET" 2>/dev/null || true
    log "starting podman system service on $SOCKET (log: $LOG)"
    start_service
    hard() { awk -v name="$1" '$0 ~ name {print $(NF-1)}' "/proc/$SERVICE_PID/limits"; }
    nofile="$(hard 'Max open files')"
    nproc="$(hard 'Max processes')"
    if [ -f "$CONF" ] && ! grep -q 'mini-swe-runner' "$CONF"; then
        cp "$CONF" "$CONF.before-mini-swe-runner"
    fi
    printf '# written by mini-swe-runner scripts/podman-engine.sh\n[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n' \
        "$nofile" "$nofile" "$nproc" "$nproc" >"$CONF"
    kill "$SERVICE_PID" 2>/dev/null || true
    sleep 1
    start_service
fi

# 4. The test image, from docker-engine.sh's rootfs tarball.
if ! podman image exists "$IMAGE"; then
    TARBALL="$(ls "$CACHE_DIR"/*-minbase-*.tar 2>/dev/null | head -n 1)"
    [ -n "$TARBALL" ] || die "no rootfs tarball in $CACHE_DIR: run scripts/docker-engine.sh first"
    log "importing $TARBALL into podman as $IMAGE"
    podman import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' "$TARBALL" "$IMAGE" >/dev/null
fi
log "podman is ready on $SOCKET"
