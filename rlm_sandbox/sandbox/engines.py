"""Docker engines a run may place its nodes on, and how we reach each one.

An engine is named by its URL, as Docker names it (``unix:///var/run/docker.sock``,
``tcp://host:2376``). TLS follows Docker's own conventions so that a user's existing setup
works unchanged: ``DOCKER_TLS_VERIFY`` turns verification on, ``DOCKER_CERT_PATH`` (default
``~/.docker``) holds ``ca.pem``, ``cert.pem`` and ``key.pem``; an engine may override both.
"""

from __future__ import annotations

import os
import ssl
import threading
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field

from rlm_sandbox.errors import ConfigError


class EngineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="engine URL: unix:///path or tcp://host:port")
    max_containers: int | None = Field(None, ge=1, description="containers of this run on it at once")
    tls_verify: bool | None = Field(None, description="None: from DOCKER_TLS_VERIFY")
    cert_path: str | None = Field(None, description="None: from DOCKER_CERT_PATH, else ~/.docker")

    @classmethod
    def parse(cls, text: str) -> EngineSpec:
        """``URL`` or ``URL,max=N`` (the form ``--engine`` takes)."""
        url, *opts = [p.strip() for p in text.split(",")]
        fields: dict[str, object] = {"url": url}
        for opt in opts:
            key, _, value = opt.partition("=")
            if key not in ("max", "max_containers") or not value.isdigit():
                raise ConfigError(
                    f"cannot read engine option {opt!r} in {text!r}",
                    hint="write --engine URL or --engine URL,max=N",
                )
            fields["max_containers"] = int(value)
        scheme = urlparse(url).scheme
        if scheme not in ("unix", "tcp", "http", "https", "ssh"):
            raise ConfigError(
                f"engine URL {url!r} is not one Docker understands",
                hint="use unix:///var/run/docker.sock or tcp://host:2376",
            )
        return cls.model_validate(fields)

    @property
    def label(self) -> str:
        """Short and stable, for the trace and messages."""
        u = urlparse(self.url)
        return f"{u.hostname}:{u.port}" if u.hostname else (u.path or self.url)


_tls_overrides: dict[str, tuple[bool | None, str | None]] = {}
_lock = threading.Lock()


def register(spec: EngineSpec) -> None:
    """Remember an engine's own TLS settings, so every client and stream to it uses them."""
    if spec.tls_verify is not None or spec.cert_path is not None:
        with _lock:
            _tls_overrides[spec.url] = (spec.tls_verify, spec.cert_path)


def tls_files(url: str) -> tuple[bool, Path] | None:
    """(verify, cert dir) when ``url`` is a TCP engine that should be spoken to over TLS."""
    if urlparse(url).scheme not in ("tcp", "https"):
        return None
    with _lock:
        verify, cert_path = _tls_overrides.get(url, (None, None))
    if verify is None:
        verify = os.environ.get("DOCKER_TLS_VERIFY", "") not in ("", "0")
    cert_dir = Path(cert_path or os.environ.get("DOCKER_CERT_PATH") or Path.home() / ".docker")
    if not verify and cert_path is None and not os.environ.get("DOCKER_CERT_PATH"):
        return None  # plain TCP: Docker's default when nothing asks for TLS
    return verify, cert_dir


def _cert_files(url: str) -> tuple[bool, Path, Path, Path] | None:
    """(verify, cert, key, ca) for a TLS engine, checked to exist; None for plain engines."""
    found = tls_files(url)
    if found is None:
        return None
    verify, cert_dir = found
    cert, key, ca = cert_dir / "cert.pem", cert_dir / "key.pem", cert_dir / "ca.pem"
    missing = [str(p) for p in ((cert, key) + ((ca,) if verify else ())) if not p.is_file()]
    if missing:
        raise ConfigError(
            f"TLS files for {url} are missing: {', '.join(missing)}",
            hint="set DOCKER_CERT_PATH to the directory holding ca.pem, cert.pem and key.pem",
        )
    return verify, cert, key, ca


def docker_tls_config(url: str):  # -> docker.tls.TLSConfig | None
    files = _cert_files(url)
    if files is None:
        return None
    from docker.tls import TLSConfig

    class EngineTLS(TLSConfig):
        def configure_client(self, client) -> None:  # type: ignore[no-untyped-def]
            super().configure_client(client)
            # requests would let REQUESTS_CA_BUNDLE replace the engine's own CA: refuse that.
            client.trust_env = False

    verify, cert, key, ca = files
    return EngineTLS(client_cert=(str(cert), str(key)), ca_cert=str(ca) if verify else None, verify=verify)


def ssl_context(url: str) -> ssl.SSLContext | None:
    """The same TLS settings for the raw attach stream as docker-py uses for the API."""
    files = _cert_files(url)
    if files is None:
        return None
    verify, cert, key, ca = files
    if verify:
        ctx = ssl.create_default_context(cafile=str(ca))
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(cert), str(key))
    return ctx
