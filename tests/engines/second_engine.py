"""A second, real Docker engine on this machine, for placement and fault tests.

Its own data root, exec root, pid file and sockets: a unix socket, and a loopback TCP port
with mutual TLS (certificates made with openssl here), ``--bridge=none``. The data root is
kept between sessions under /var/lib so the sandbox image is sent to it once, not per run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import docker

DATA_ROOT = Path("/var/lib/rlm-sandbox-test-engine")
RUN_ROOT = Path("/run/rlm-e2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certs(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as Docker wants them."""
    if (d / "cert.pem").exists():
        return
    d.mkdir(parents=True, exist_ok=True)

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=rlm-test-ca",
        "-keyout", "ca-key.pem", "-out", "ca.pem")  # fmt: skip
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who in ("server", "client"):
        key, csr = f"{who}-key.pem", f"{who}.csr"
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}", "-keyout", key, "-out", csr)
        ssl("x509", "-req", "-in", csr, "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
            "-days", "30", "-extfile", f"{who}.ext", "-out", f"{who}-cert.pem")  # fmt: skip
    # DOCKER_CERT_PATH layout for the client side.
    (d / "cert.pem").write_bytes((d / "client-cert.pem").read_bytes())
    (d / "key.pem").write_bytes((d / "client-key.pem").read_bytes())


class SecondEngine:
    def __init__(self) -> None:
        self.certs = RUN_ROOT / "certs"
        self.sock = RUN_ROOT / "docker.sock"
        self.unix_url = f"unix://{self.sock}"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = RUN_ROOT / "dockerd.log"

    @property
    def tcp_url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.unix_url, timeout=30)

    @staticmethod
    def _stop_stale() -> None:
        """A dockerd an interrupted session left on our paths would answer in our place."""
        pidfile = RUN_ROOT / "docker.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)

    def start(self) -> SecondEngine:
        RUN_ROOT.mkdir(parents=True, exist_ok=True)
        self._stop_stale()
        make_certs(self.certs)
        (RUN_ROOT / "daemon.json").write_text("{}")
        self.port = _free_port()
        c = self.certs
        cmd = [
            "dockerd",
            "--config-file", str(RUN_ROOT / "daemon.json"),
            "--data-root", str(DATA_ROOT),
            "--exec-root", str(RUN_ROOT / "exec"),
            "--pidfile", str(RUN_ROOT / "docker.pid"),
            "-H", self.unix_url,
            "-H", self.tcp_url,
            "--tlsverify", "--tlscacert", str(c / "ca.pem"),
            "--tlscert", str(c / "server-cert.pem"), "--tlskey", str(c / "server-key.pem"),
            "--bridge=none", "--iptables=false", "--ip-masq=false",
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the second dockerd exited: {self.log.read_text()[-2000:]}")
            try:
                cl = self.client()
                cl.ping()
                cl.close()
                return self
            except Exception:
                time.sleep(0.2)
        raise RuntimeError(f"the second dockerd did not come up: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """The engine dies (SIGKILL): its API and every attach stream go with it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            cl = self.client()
            for c in cl.containers.list(all=True, filters={"label": "rlm-sandbox"}):
                c.remove(force=True)
            cl.close()
        except Exception:
            pass
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
