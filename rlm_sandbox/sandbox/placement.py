"""Which Docker engine each RLM node runs on, when a run has more than one.

Before the root starts, every configured engine is probed (in parallel, a few seconds at
most): one that does not answer is skipped with a warning, and the run fails only if none
answers. Each live engine gets the sandbox image: built on the first if no engine has it,
then sent to the others with ``docker save | docker load`` (streamed, never held whole in
memory), with progress shown.

A node's whole life is on one engine; children of a fan-out go to the engine with the most
free room (its ``max_containers`` minus its running nodes and the containers its warm pool
is starting). An engine that dies mid-run is marked dead: its nodes fail with a typed error
(their parents see an exception in their cell and may carry on), and no new node goes there.
The run's container budget is capped at the engines' total room, so a node admitted by the
budget always finds a place (no node holds a container while it waits for one).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rlm_sandbox.errors import EngineUnavailable, ImageBuildError
from rlm_sandbox.sandbox.config import SandboxConfig
from rlm_sandbox.sandbox.engines import EngineSpec, docker_tls_config, register

PROBE_TIMEOUT_S = 5.0


@dataclass(eq=False)
class Engine:
    spec: EngineSpec
    cap: int
    client: Any = None
    version: str = ""
    alive: bool = True
    error: str = ""
    in_use: int = 0
    nodes: int = 0
    pool: Any = None
    events: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.spec.url

    def free(self) -> int:
        """Room for one more node: a ready pooled container is room, a starting one is not."""
        pooled = 0
        if self.pool is not None:
            pooled = self.pool.held - self.pool.ready
        return self.cap - self.in_use - pooled


def probe(spec: EngineSpec) -> tuple[Any, str]:
    """A client for the engine and its version, or raises EngineUnavailable quickly."""
    import docker
    from docker.errors import DockerException

    try:
        tls = docker_tls_config(spec.url)
        client = docker.DockerClient(base_url=spec.url, timeout=PROBE_TIMEOUT_S, tls=tls or False)
        version = str(client.version().get("Version", "?"))
        client.close()
    except (DockerException, OSError) as exc:
        raise EngineUnavailable(f"engine {spec.url} does not answer: {exc}") from None
    from rlm_sandbox.sandbox.docker_backend import docker_client

    return docker_client(spec.url), version


class Placement:
    def __init__(
        self,
        specs: list[EngineSpec],
        default_cap: int,
        *,
        warn: Callable[[str, dict[str, Any]], None] = lambda _msg, _fields: None,
        progress: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        if not specs:
            raise ValueError("a placement needs at least one engine")
        seen: set[str] = set()
        self.engines: list[Engine] = []
        for spec in specs:
            if spec.url in seen:
                continue
            seen.add(spec.url)
            register(spec)
            self.engines.append(Engine(spec, cap=spec.max_containers or default_cap))
        self._warn = warn
        self._progress = progress
        self._cond = threading.Condition()

    # ---- before the run

    def prepare(self, sandbox: SandboxConfig) -> None:
        """Probe every engine, drop the dead ones, give the live ones the sandbox image."""
        with ThreadPoolExecutor(max_workers=min(8, len(self.engines))) as ex:
            results = list(ex.map(self._probe_one, self.engines))
        live = [e for e, ok in zip(self.engines, results, strict=True) if ok]
        if not live:
            details = "; ".join(f"{e.url}: {e.error}" for e in self.engines)
            raise EngineUnavailable(
                f"none of the {len(self.engines)} configured Docker engines answers ({details})",
                hint="start them (scripts/ensure-docker.sh on each host) or fix the --engine URLs",
            )
        self._distribute_image(live, sandbox)

    def _probe_one(self, engine: Engine) -> bool:
        try:
            engine.client, engine.version = probe(engine.spec)
            return True
        except EngineUnavailable as exc:
            engine.alive, engine.error = False, exc.message
            self._warn(
                f"skipping engine {engine.url}: it does not answer",
                {"engine": engine.url, "error": exc.message},
            )
            return False

    def _distribute_image(self, live: list[Engine], sandbox: SandboxConfig) -> None:
        from rlm_sandbox.sandbox.image import _has_image, configured_tag, ensure_image

        tag = configured_tag(sandbox)
        have = [e for e in live if _has_image(e.client, tag)]
        if not have:
            ensure_image(live[0].client, sandbox, progress=self._progress)
            have = [live[0]]
        source = have[0]
        for engine in live:
            if engine not in have:
                self._send_image(source, engine, tag)

    def _send_image(self, source: Engine, target: Engine, tag: str) -> None:
        from docker.errors import DockerException

        sent = [0, time.monotonic()]

        def chunks():
            for chunk in source.client.api.get_image(tag, chunk_size=1 << 20):
                sent[0] += len(chunk)
                if time.monotonic() - sent[1] > 0.25:
                    sent[1] = time.monotonic()
                    self._progress(f"sending image {tag} to {target.spec.label}: {sent[0] / 1e6:.0f} MB")
                yield chunk

        self._progress(f"sending image {tag} to {target.spec.label}")
        try:
            for _ in target.client.api.load_image(chunks(), quiet=True):
                pass
        except (DockerException, OSError) as exc:
            raise ImageBuildError(
                f"could not send the sandbox image to {target.url}: {exc}",
                hint=f"build it there: DOCKER_HOST={target.url} rlm-sandbox image build",
            ) from None
        self._progress(f"sent image {tag} to {target.spec.label} ({sent[0] / 1e6:.0f} MB)")

    # ---- during the run

    @property
    def live(self) -> list[Engine]:
        return [e for e in self.engines if e.alive]

    def capacity(self) -> int:
        return sum(e.cap for e in self.live)

    def acquire(self, check: Callable[[], None]) -> Engine:
        """The engine with the most room; waits (checking budgets) while all are full."""
        with self._cond:
            while True:
                live = self.live
                if not live:
                    raise EngineUnavailable(
                        "every Docker engine of this run has failed: "
                        + "; ".join(f"{e.url}: {e.error}" for e in self.engines),
                        hint="restart the engines, then `rlm-sandbox gc` removes what is left",
                    )
                best = max(live, key=lambda e: (e.free(), -e.in_use))
                if best.free() > 0:
                    best.in_use += 1
                    best.nodes += 1
                    return best
                self._cond.wait(0.05)
                check()

    def release(self, engine: Engine) -> None:
        with self._cond:
            engine.in_use = max(0, engine.in_use - 1)
            self._cond.notify_all()

    def mark_dead(self, engine: Engine, error: str) -> None:
        with self._cond:
            if not engine.alive:
                return
            engine.alive, engine.error = False, error
            self._cond.notify_all()
        self._warn(f"engine {engine.url} failed mid-run", {"engine": engine.url, "error": error})

    def pool_room(self, engine: Engine, total: int) -> bool:
        """May ``engine``'s pool grow past ``total`` containers? (its own cap, not the run's).

        Called by the pool with its own lock held, so it takes no lock that is ever held
        while a pool's lock is wanted (``acquire`` reads pools without their locks)."""
        return engine.alive and engine.in_use + total < engine.cap

    def pools_held(self) -> int:
        return sum(e.pool.held for e in self.engines if e.pool is not None)

    def summary(self) -> list[dict[str, Any]]:
        return [
            {
                "engine": e.url,
                "alive": e.alive,
                "nodes": e.nodes,
                "version": e.version,
                "error": e.error or None,
            }
            for e in self.engines
        ]
