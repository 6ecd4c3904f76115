#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine; idempotent.
#
# Why a script: these machines ship the docker client but no engine, and CI starts from a
# fresh clone. If `docker info` already works we touch nothing. Otherwise we install
# Debian's docker.io (and gVisor's runsc, registered as an optional runtime), start dockerd
# in its own process session with a log file, and wait for its socket. If it does not come
# up we print the log's tail and fail: a missing engine is an error, never a silent skip.
set -euo pipefail

LOG="${RLM_SANDBOX_DOCKERD_LOG:-/var/log/rlm-sandbox-dockerd.log}"
WAIT_S="${RLM_SANDBOX_DOCKERD_WAIT:-60}"

say() { printf 'ensure-docker: %s\n' "$*" >&2; }

if docker info >/dev/null 2>&1; then
    exit 0
fi

if [ -n "${DOCKER_HOST:-}" ] && [ "${DOCKER_HOST#unix://}" = "$DOCKER_HOST" ]; then
    say "DOCKER_HOST=$DOCKER_HOST does not answer; a remote engine is not ours to start."
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        say "need root (or sudo) to install and start a Docker engine"; exit 1
    fi
fi

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v runsc >/dev/null 2>&1 || need_pkgs+=(runsc)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    say "installing ${need_pkgs[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q >/dev/null
    # runsc is optional: a Debian without it still gets a working engine.
    if ! $SUDO apt-get install -y -q "${need_pkgs[@]}" >/dev/null; then
        say "install of ${need_pkgs[*]} failed; retrying without runsc"
        $SUDO apt-get install -y -q docker.io debootstrap >/dev/null
    fi
fi

# Register gVisor as an optional runtime. It needs --network=none at the runtime level:
# without it every start fails with "cannot run with network enabled in root network namespace".
if command -v runsc >/dev/null 2>&1; then
    RUNSC="$(command -v runsc)"
    $SUDO mkdir -p /etc/docker
    if [ ! -s /etc/docker/daemon.json ] || ! grep -q '"runsc"' /etc/docker/daemon.json; then
        python3 - "$RUNSC" <<'PY' | $SUDO tee /etc/docker/daemon.json.new >/dev/null
import json, pathlib, sys
p = pathlib.Path("/etc/docker/daemon.json")
cfg = json.loads(p.read_text()) if p.exists() and p.read_text().strip() else {}
cfg.setdefault("runtimes", {})["runsc"] = {"path": sys.argv[1], "runtimeArgs": ["--network=none"]}
print(json.dumps(cfg, indent=2))
PY
        $SUDO mv /etc/docker/daemon.json.new /etc/docker/daemon.json
    fi
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
    say "starting dockerd (log: $LOG)"
    $SUDO mkdir -p "$(dirname "$LOG")"
    # Its own session, so it outlives this shell and ignores the caller's signals.
    $SUDO setsid dockerd >>"$LOG" 2>&1 < /dev/null &
fi

for _ in $(seq 1 "$((WAIT_S * 4))"); do
    if docker info >/dev/null 2>&1; then
        say "engine up ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
        exit 0
    fi
    sleep 0.25
done

say "dockerd did not answer within ${WAIT_S}s; last lines of $LOG:"
tail -n 40 "$LOG" >&2 || true
exit 1
