#!/usr/bin/env bash
# Opt-in smoke test of the container image. NOT part of CI or `pytest`: it needs a running
# Docker engine, debootstrap and root, and network access to a Debian mirror and to PyPI.
# No image registry is needed: the base image is built locally with debootstrap.
#
#   sudo deploy/smoke/run.sh              # build the base (once), build the image, run the checks
#   sudo deploy/smoke/run.sh --rebuild-base
#
# Steps:
#   1. base image `rotator-smoke-base:bookworm`: debootstrap --variant=minbase bookworm with
#      python3, python3-venv, python3-pip, then `docker import` (about a minute; kept for reuse)
#   2. `docker build --build-arg PYTHON_IMAGE=rotator-smoke-base:bookworm -t rotator:smoke .`
#   3. the image's user, entrypoint and command are 10001:10001, ["rotator"], ["daemon"]
#   4. `rotator demo` inside it: read-only root filesystem, /tmp on a tmpfs, no capabilities,
#      no new privileges, as the image's user; the simulated year ends with 0 expired keys and
#      0 outages
#   5. the default command (`rotator daemon`) against `rotator emulator` in a second container
#      and a file backend on a volume: /readyz answers 200 (the first key issued), `docker stop`
#      (SIGTERM to PID 1) ends it with status 0; then a one-shot `rotator rotate` on the same
#      volume finds nothing to do and exits 0
#
# Environment:
#   DOCKER_HOST          the engine to use (default: docker's own default)
#   SMOKE_MIRROR         Debian mirror for debootstrap (default http://deb.debian.org/debian)
#   SMOKE_BUILD_ARGS     extra arguments for `docker build` (e.g. "--network host" or a proxy)
#   SMOKE_CA_BUNDLE      a PEM bundle to install as the base image's CA certificates, when the
#                        network passes through a TLS-intercepting proxy (e.g. the host's
#                        /etc/ssl/certs/ca-certificates.crt); it goes into the local base image
#                        only. Rebuild the base (--rebuild-base) after changing it.
#
# Without an engine, start one for this test only, e.g. (as root):
#   apt-get install docker.io debootstrap
#   dockerd --data-root /var/lib/rotator-smoke/docker -H unix:///run/rotator-smoke.sock \
#       >/var/log/rotator-smoke-dockerd.log 2>&1 &
#   export DOCKER_HOST=unix:///run/rotator-smoke.sock
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BASE=rotator-smoke-base:bookworm
IMAGE=rotator:smoke
MIRROR="${SMOKE_MIRROR:-http://deb.debian.org/debian}"
REBUILD_BASE=0
[[ "${1:-}" == "--rebuild-base" ]] && REBUILD_BASE=1

say() { printf '\n== %s\n' "$*"; }
fail() { printf 'smoke: FAILED: %s\n' "$*" >&2; exit 1; }
missing() {
    printf 'smoke: cannot run: %s\n' "$1" >&2
    printf 'This opt-in smoke test needs a running Docker engine, debootstrap and root (see the\n' >&2
    printf 'top of %s and docs/operations.md, "Smoke-testing the image").\n' "$0" >&2
    exit 2
}

# --- requirements -----------------------------------------------------------------------------
command -v docker >/dev/null || missing "no docker command (apt-get install docker.io)"
docker info >/dev/null 2>&1 || missing "no Docker engine answers at ${DOCKER_HOST:-the default socket} (start dockerd, or set DOCKER_HOST)"
if [[ "$REBUILD_BASE" == 1 ]] || ! docker image inspect "$BASE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || missing "no debootstrap (apt-get install debootstrap), needed to build the base image $BASE"
    [[ "$(id -u)" == 0 ]] || missing "debootstrap needs root"
fi
command -v curl >/dev/null || missing "no curl"

WORK="$(mktemp -d /tmp/rotator-smoke.XXXXXX)"
NET="rotator-smoke-$$"
cleanup() {
    docker rm -f "$NET-emulator" "$NET-daemon" >/dev/null 2>&1 || true
    docker network rm "$NET" >/dev/null 2>&1 || true
    docker volume rm "$NET-data" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- 1. base image ------------------------------------------------------------------------------
if [[ "$REBUILD_BASE" == 1 ]] || ! docker image inspect "$BASE" >/dev/null 2>&1; then
    say "1. building the base image $BASE with debootstrap (bookworm, minbase + python3)"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,passwd,ca-certificates \
        bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap"; }
    rm -rf "$WORK/rootfs/var/lib/apt/lists/"* "$WORK/rootfs/var/cache/apt/"*.bin
    if [[ -n "${SMOKE_CA_BUNDLE:-}" ]]; then
        cp "$SMOKE_CA_BUNDLE" "$WORK/rootfs/etc/ssl/certs/ca-certificates.crt"
    fi
    tar -C "$WORK/rootfs" -c . | docker import --change 'CMD ["python3"]' - "$BASE" >/dev/null
    rm -rf "$WORK/rootfs"
else
    say "1. reusing the base image $BASE (--rebuild-base to make it again)"
fi

# --- 2. the image ---------------------------------------------------------------------------------
say "2. docker build -t $IMAGE (PYTHON_IMAGE=$BASE)"
# shellcheck disable=SC2086  # SMOKE_BUILD_ARGS is a list of arguments on purpose
docker build ${SMOKE_BUILD_ARGS:-} --build-arg "PYTHON_IMAGE=$BASE" -t "$IMAGE" "$ROOT"

# --- 3. image metadata ----------------------------------------------------------------------------
say "3. image configuration"
user="$(docker image inspect -f '{{.Config.User}}' "$IMAGE")"
entrypoint="$(docker image inspect -f '{{json .Config.Entrypoint}}' "$IMAGE")"
cmd="$(docker image inspect -f '{{json .Config.Cmd}}' "$IMAGE")"
echo "user=$user entrypoint=$entrypoint cmd=$cmd"
[[ "$user" == "10001:10001" ]] || fail "user is '$user'"
[[ "$entrypoint" == '["rotator"]' ]] || fail "entrypoint is $entrypoint"
[[ "$cmd" == '["daemon"]' ]] || fail "cmd is $cmd"

LOCKED=(--read-only --tmpfs /tmp:rw,size=64m,mode=1777 --cap-drop ALL --security-opt no-new-privileges)

# --- 4. rotator demo --------------------------------------------------------------------------------
say "4. docker run ... $IMAGE demo --days 120 --quiet"
docker run --rm "${LOCKED[@]}" "$IMAGE" demo --days 120 --quiet | tee "$WORK/demo.txt"
grep -q "expired keys: 0" "$WORK/demo.txt" || fail "the demo reports expired keys"
grep -q "outages: 0" "$WORK/demo.txt" || fail "the demo reports outages"

# --- 5. the daemon, SIGTERM, and a one-shot rotate --------------------------------------------------
say "5. rotator daemon (PID 1) against rotator emulator; docker stop; rotator rotate"
docker network create "$NET" >/dev/null
ADMIN_KEY="ms-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
docker run -d --name "$NET-emulator" --network "$NET" "${LOCKED[@]}" -e QUIVA_API_KEY="$ADMIN_KEY" \
    "$IMAGE" emulator --host 0.0.0.0 --port 8787 >/dev/null
cat >"$WORK/config.toml" <<EOF
[issuers.quiva]
type = "quivaworks"
base_url = "http://$NET-emulator:8787"
insecure_http = true        # the emulator on the test network speaks plain HTTP (rotator warns at start)
admin_key = { env = "QUIVA_API_KEY" }

[backends.files]
type = "file"
directory = "/data"

[[secrets]]
name = "smoke"
issuer = "quiva"
targets = [{ backend = "files", path = "smoke.json" }]

[daemon]
shutdown_timeout = "20s"
EOF
chmod 0644 "$WORK/config.toml"
# The file backend's directory: a volume the image's user owns, shared by the daemon and `rotate`.
docker volume create "$NET-data" >/dev/null
docker run --rm --user 0 --entrypoint chown -v "$NET-data:/data" "$IMAGE" 10001:10001 /data
DATA=(-v "$NET-data:/data")
docker run -d --name "$NET-daemon" --network "$NET" "${LOCKED[@]}" "${DATA[@]}" \
    -v "$WORK/config.toml:/etc/rotator/config.toml:ro" -e QUIVA_API_KEY="$ADMIN_KEY" \
    -p 127.0.0.1::9464 "$IMAGE" >/dev/null
address="$(docker port "$NET-daemon" 9464/tcp | head -1)"
for _ in $(seq 1 60); do
    curl -fsS "http://$address/readyz" >"$WORK/readyz.json" 2>/dev/null && break
    sleep 0.5
done
curl -fsS "http://$address/readyz" >/dev/null || { docker logs "$NET-daemon" >&2; fail "/readyz never answered 200"; }
echo "/readyz: $(tr -d '\n' <"$WORK/readyz.json" | head -c 300)"
curl -fsS "http://$address/metrics" >"$WORK/metrics.txt" || fail "/metrics did not answer"
grep -q '^rotator_build_info' "$WORK/metrics.txt" || fail "/metrics has no rotator_build_info"
started=$(date +%s)
docker stop -t 30 "$NET-daemon" >/dev/null
took=$(( $(date +%s) - started ))
status="$(docker inspect -f '{{.State.ExitCode}}' "$NET-daemon")"
echo "docker stop: exit status $status after ${took}s"
[[ "$status" == 0 ]] || { docker logs "$NET-daemon" >&2; fail "the daemon exited $status on SIGTERM"; }
(( took < 20 )) || fail "the daemon took ${took}s to stop"

docker run --rm --network "$NET" "${LOCKED[@]}" "${DATA[@]}" -v "$WORK/config.toml:/etc/rotator/config.toml:ro" \
    -e QUIVA_API_KEY="$ADMIN_KEY" "$IMAGE" rotate | tee "$WORK/rotate.txt" || fail "rotator rotate failed"
grep -q "1 secret(s): 0 changed, 0 failed" "$WORK/rotate.txt" || fail "rotate did not find the daemon's key in place"

say "smoke: OK ($IMAGE)"
