#!/usr/bin/env bash
# Build the REPL image the official `rlms` engine runs in (see Dockerfile beside this file).
#
# Why a script: there is no container registry on these machines, so the base is our own
# offline Debian base (images/debian-base/build.sh builds it once from Debian's packages), and
# the Debian packages rlms needs are installed from Debian's archive during the build. The
# build container uses the host's network (--network host) because Debian's archive is
# reached from the host and the default bridge may be absent. The tag is cached.
#
# usage: images/rlms/build.sh [TAG] [--force]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TAG="${1:-rlms-repl:bookworm}"
FORCE="${2:-}"
BASE="${RLMS_IMAGE_BASE:-rlm-sandbox-base:bookworm}"

say() { printf 'rlms-image: %s\n' "$*" >&2; }

if [ "$FORCE" != "--force" ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    say "$TAG already present"
    exit 0
fi
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    if [ "$BASE" = "rlm-sandbox-base:bookworm" ]; then
        bash "$HERE/../debian-base/build.sh" "$BASE"
    else
        say "base image $BASE is missing"; exit 1
    fi
fi
say "building $TAG on $BASE (apt: python3-requests python3-dill python-is-python3)"
LOG="$(mktemp /tmp/rlms-image.XXXXXX)"
trap 'rm -f "$LOG"' EXIT
docker build --network host --build-arg "BASE=$BASE" -t "$TAG" -f "$HERE/Dockerfile" "$HERE" >"$LOG" 2>&1 \
    || { tail -n 30 "$LOG" >&2; say "build failed"; exit 1; }
docker run --rm --network none "$TAG" python -c 'import requests, dill' \
    || { say "$TAG lacks requests or dill"; exit 1; }
say "done: $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
