# The package layer of a derived sandbox image: the base + Debian packages, nothing else.
#
# rlm_sandbox/sandbox/image.py builds it for `image_packages` (names checked against Debian's
# rules before any build) with the host's network, since apt must reach the Debian mirror the
# base came from (no registry is involved), then builds sandbox.Dockerfile on top of it, so
# the kernel, the non-root user, the entrypoint and every run-time flag are the default
# image's. No setuid/setgid bit is left set, no apt index or cache is kept, and no
# recommended packages are pulled in (list what the code needs; dependencies come with it).
ARG BASE=rlm-sandbox-base:bookworm
FROM ${BASE}
ARG PACKAGES
RUN set -eu; \
    test -n "$PACKAGES"; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update -q; \
    apt-get install -y -q --no-install-recommends $PACKAGES; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
           /usr/share/doc /usr/share/man /usr/share/info; \
    find / -xdev ! -type l -perm /6000 -exec chmod ug-s {} +; \
    test -z "$(find / -xdev ! -type l -perm /6000)"; \
    python3 -c 'import json, sys; print("python", sys.version.split()[0])'
