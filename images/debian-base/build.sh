#!/usr/bin/env bash
# Build the offline sandbox base from Debian packages and import it as a Docker image.
#
# Why: no container registry is reachable on air-gapped machines and CI, so no base can be
# pulled. debootstrap fetches .deb files from Debian's archive (reachable) and we import the
# resulting tree. minbase + python3 (not python3-minimal, which lacks json and much of the
# stdlib). The tag is cached: if it exists we do nothing unless --force is given.
#
# usage: images/debian-base/build.sh [TAG] [--force]
set -euo pipefail

TAG="${1:-rlm-sandbox-base:bookworm}"
FORCE="${2:-}"
SUITE="${RLM_SANDBOX_BASE_SUITE:-bookworm}"
MIRROR="${RLM_SANDBOX_DEBIAN_MIRROR:-}"

say() { printf 'debian-base: %s\n' "$*" >&2; }

if [ "$FORCE" != "--force" ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    say "$TAG already present"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null; }
fi

if [ -z "$MIRROR" ]; then
    # Reuse the host's configured Debian mirror when there is one: it is the one known to answer.
    MIRROR="$(grep -rhoE '^(deb|URIs:)[^#]*https?://[^ ]+/debian/?' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
        | grep -oE 'https?://[^ ]+/debian/?' | head -n1 || true)"
    MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi

WORK="$(mktemp -d /tmp/rlm-base.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
say "debootstrap $SUITE from $MIRROR (about 40 s)"
debootstrap --variant=minbase --include=python3 "$SUITE" "$WORK/root" "$MIRROR" >"$WORK/log" 2>&1 \
    || { tail -n 30 "$WORK/log" >&2; say "debootstrap failed"; exit 1; }

# Trim what a sandbox never needs: apt caches, docs, man pages.
rm -rf "$WORK/root/var/cache/apt/archives/"*.deb "$WORK/root/var/lib/apt/lists/"* \
       "$WORK/root/usr/share/doc" "$WORK/root/usr/share/man" "$WORK/root/usr/share/info"
"$WORK/root/usr/bin/python3" -c 'import json, ssl' 2>/dev/null || chroot "$WORK/root" python3 -c 'import json' \
    || { say "python3 in the base lacks the standard library"; exit 1; }

say "importing as $TAG"
tar -C "$WORK/root" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' \
    -m "rlm-sandbox offline base: debootstrap --variant=minbase --include=python3 $SUITE" \
    - "$TAG" >/dev/null
say "done: $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')"
