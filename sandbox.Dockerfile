# The default sandbox image: a Python base + the kernel, run as a non-root user. Nothing else.
# BASE is the offline Debian base (images/debian-base/build.sh) or, where a registry is
# reachable, an official image such as python:3.12-slim.
ARG BASE=rlm-sandbox-base:bookworm
FROM ${BASE}
COPY kernel/ /opt/rlm-kernel/
RUN python3 -m compileall -q /opt/rlm-kernel \
 && chmod -R a+rX,go-w /opt/rlm-kernel \
 && echo 'sandbox:x:10001:10001:rlm sandbox:/tmp:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'sandbox:x:10001:' >> /etc/group
ENV HOME=/tmp PYTHONDONTWRITEBYTECODE=1 LANG=C.UTF-8
WORKDIR /tmp
USER 10001:10001
# PID 1 is our own supervisor (not Docker's init): it starts the kernel, reaps, relays the host's
# stream, and ends every process of the container when the controller goes (supervisor.py).
ENTRYPOINT ["python3", "-I", "/opt/rlm-kernel/supervisor.py"]
