"""``rlm-sandbox doctor``: is this machine ready to run RLMs, and if not, what to change.

Each check is a small function returning a :class:`CheckResult`; the hardened-start check
does not trust the engine's word for the container's settings but starts a real sandbox
and looks from inside (interfaces, root mount, uid, cgroup limits), next to what the engine
reports. Only what would make a run fail is a failure: no engine, a sandbox that does not
start hardened, a configured runtime or image that is missing, a configured model without
its key, a configured server that does not answer. A missing gVisor, leftovers for ``gc``
or an image not built yet are warnings. Key values are never read into a message: LiteLLM
is asked for the names of the variables a model needs, and only names are printed.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

from rlm_sandbox.errors import EngineUnavailable
from rlm_sandbox.sandbox.config import SandboxConfig
from rlm_sandbox.sandbox.engine_facts import EngineFacts
from rlm_sandbox.settings import LoadedSettings, redact_url

Status = Literal["ok", "fail", "warn", "skip"]
MARK = {"ok": "✓", "fail": "✗", "warn": "!", "skip": "-"}
ENGINE_FIX = "start a Docker engine (bash scripts/ensure-docker.sh) or point DOCKER_HOST / docker_url at one"
HTTP_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def _ok(name: str, detail: str) -> CheckResult:
    return CheckResult(name, "ok", detail)


# ---- the Docker engine


Engine = EngineFacts  # what the engine checks share: one client, one ``docker info``


def check_engine(url: str) -> tuple[CheckResult, Engine | None]:
    shown = redact_url(url)
    try:
        engine = EngineFacts.read(url)
    except EngineUnavailable as exc:
        reason = exc.message.removeprefix(f"no engine answers at {url}: ")
        return CheckResult(
            "docker engine", "fail", f"no engine answers at {shown}: {reason}", ENGINE_FIX
        ), None
    detail = f"Docker {engine.version} (API {engine.api_version}) at {shown}"
    return _ok("docker engine", detail), engine


def check_engines(urls: list[str]) -> list[CheckResult]:
    """The engines a run spreads its nodes over (``--engine``/``engines``): each must answer
    (over TLS where Docker's settings say so); a run skips one that does not, and fails
    only if none answers."""
    from rlm_sandbox.errors import RLMSandboxError
    from rlm_sandbox.sandbox.engines import EngineSpec, register
    from rlm_sandbox.sandbox.placement import probe

    results, alive = [], 0
    for text in urls:
        try:
            spec = EngineSpec.parse(text)
            register(spec)
            _client, version = probe(spec)
        except RLMSandboxError as exc:
            results.append(
                CheckResult(
                    f"engine {redact_url(text)}",
                    "warn",
                    exc.message,
                    "start it, or drop it from --engine/engines",
                )
            )
            continue
        alive += 1
        results.append(_ok(f"engine {redact_url(spec.url)}", f"Docker {version}"))
    if urls and not alive:
        results.append(
            CheckResult("engines", "fail", f"none of the {len(urls)} configured engines answers", ENGINE_FIX)
        )
    return results


def check_cgroup(engine: Engine) -> CheckResult:
    info = engine.info
    version, driver = info.get("CgroupVersion") or "?", info.get("CgroupDriver") or "?"
    missing = [k for k in ("MemoryLimit", "SwapLimit", "PidsLimit", "CpuCfsQuota") if info.get(k) is False]
    detail = f"cgroup v{version} ({driver} driver)"
    if missing:
        return CheckResult(
            "cgroups",
            "warn",
            f"{detail}; the kernel does not support: {', '.join(missing)}",
            "enable the missing cgroup controllers (e.g. swapaccount=1 / cgroup_enable=memory on the "
            "kernel command line) so every limit holds",
        )
    return _ok("cgroups", f"{detail}; memory, swap, pids and CPU limits supported")


def check_runtimes(engine: Engine, configured: str | None) -> CheckResult:
    runtimes = engine.runtimes
    listed = ", ".join(runtimes) or "none listed"
    if configured and configured not in runtimes:
        return CheckResult(
            "runtime",
            "fail",
            f"runtime {configured!r} is configured but the engine has only: {listed}",
            "install it (bash scripts/ensure-docker.sh sets up runsc) or unset runtime",
        )
    if "runsc" not in runtimes:
        return CheckResult(
            "runtime",
            "warn",
            f"gVisor (runsc) is not available; runtimes: {listed}",
            "bash scripts/ensure-docker.sh installs runsc; then use --runtime runsc for a stronger boundary",
        )
    using = f"; using {configured}" if configured else "; use it with --runtime runsc"
    return _ok("runtime", f"runsc (gVisor) available{using}")


def check_image(engine: Engine, config: SandboxConfig) -> CheckResult:
    from rlm_sandbox.sandbox.built_images import image_status

    tag, built, stale_count = image_status(engine.client, config)
    if config.image:
        if built:
            return _ok("sandbox image", f"{config.image} (configured)")
        return CheckResult(
            "sandbox image",
            "fail",
            f"the configured image {config.image!r} does not exist",
            "build or pull it, or unset image to use the default",
        )
    stale = (
        f"; {stale_count} stale image(s) could be removed (rlm-sandbox image rm --stale)"
        if stale_count
        else ""
    )
    packages = f" with {' '.join(config.image_packages)}" if config.image_packages else ""
    if built:
        return _ok("sandbox image", f"{tag}{packages} is built, current for this kernel{stale}")
    base = "" if engine.image_exists(config.base_image) else f" (nor its base {config.base_image})"
    took = "a few minutes for large packages" if config.image_packages else "about 40 s"
    build = "rlm-sandbox image build" + (
        f" --image-packages {','.join(config.image_packages)}" if config.image_packages else ""
    )
    return CheckResult(
        "sandbox image",
        "warn",
        f"{tag}{packages} is not built yet{base}; it is built on first use ({took}, once){stale}",
        build,
    )


def check_leftovers(engine: Engine) -> CheckResult:
    from rlm_sandbox.sandbox.docker_backend import DockerBackend
    from rlm_sandbox.sandbox.gc import collect_garbage

    report = collect_garbage(DockerBackend(engine.url), include_live=False, dry_run=True)
    live = f"; {len(report.kept)} of running controllers" if report.kept else ""
    if report.removed:
        return CheckResult(
            "leftovers",
            "warn",
            f"{len(report.removed)} sandbox container(s) left by controllers that died{live}",
            "rlm-sandbox gc (rlm-sandbox gc --dry-run lists them)",
        )
    return _ok("leftovers", f"no containers left by dead controllers{live}")


# What the sandbox says about itself. Written for the kernel's Python (stdlib only); every
# probe is allowed to fail, and a failure is reported rather than raised.
PROBE = r"""
import json, os, socket
r = {"uid": os.getuid(), "gid": os.getgid()}
try:
    r["ifaces"] = sorted(name for _i, name in socket.if_nameindex())
except OSError as e:
    r["ifaces"] = None
try:
    with open("/proc/mounts") as f:
        r["root_opts"] = next((l.split()[3].split(",") for l in f if l.split()[1:2] == ["/"]), None)
except OSError:
    r["root_opts"] = None
try:
    open("/.rlm-sandbox-doctor", "w").close()
    r["root_write"] = "allowed"
except OSError as e:
    r["root_write"] = e.strerror
def first(*paths):
    for p in paths:
        try:
            with open(p) as f:
                return f.read().strip()
        except OSError:
            pass
r["memory"] = first("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
r["pids"] = first("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max")
print(json.dumps(r))
"""


def check_hardened_start(engine: Engine, config: SandboxConfig, image_ready: bool) -> CheckResult:
    from rlm_sandbox.errors import RLMSandboxError
    from rlm_sandbox.sandbox.core import Sandbox

    if not image_ready:
        return CheckResult(
            "hardened start",
            "warn",
            "not tried: the sandbox image is not built yet",
            "rlm-sandbox image build, then rlm-sandbox doctor again",
        )
    cfg = config.model_copy(update={"run_id": f"doctor-{uuid.uuid4().hex[:10]}", "cell_timeout": 20.0})
    t0 = time.perf_counter()
    try:
        with Sandbox(cfg) as sb:
            result = sb.execute(PROBE)
            host = engine.host_config(sb.id or "")
    except RLMSandboxError as exc:
        return CheckResult(
            "hardened start", "fail", f"a sandbox did not start: {exc.message}", exc.hint or ENGINE_FIX
        )
    wall = time.perf_counter() - t0
    if not result.ok:
        return CheckResult(
            "hardened start", "fail", f"the probe cell failed in the sandbox: {result.error}", ENGINE_FIX
        )
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    problems, facts = _judge(seen, host, cfg)
    runtime = f" under {cfg.runtime}" if cfg.runtime else ""
    if problems:
        return CheckResult(
            "hardened start",
            "fail",
            f"a sandbox started{runtime} but is not hardened: {'; '.join(problems)}",
            "use an engine whose kernel supports these limits (scripts/ensure-docker.sh), or report a bug",
        )
    return _ok("hardened start", f"started{runtime} and probed in {wall:.1f} s: {', '.join(facts)}")


def _judge(seen: dict[str, Any], host: dict[str, Any], cfg: SandboxConfig) -> tuple[list[str], list[str]]:
    """Compare what the sandbox saw (and the engine reports) with what a sandbox must be."""
    problems: list[str] = []
    facts: list[str] = []
    ifaces = seen.get("ifaces")
    if host.get("NetworkMode") != "none" or (ifaces is not None and set(ifaces) - {"lo"}):
        problems.append(f"network {host.get('NetworkMode')!r}, interfaces {ifaces}")
    else:
        facts.append("no network (lo only)" if ifaces is not None else "network none")
    opts = seen.get("root_opts")
    if seen.get("root_write") == "allowed" or not host.get("ReadonlyRootfs") or (opts and "ro" not in opts):
        problems.append(f"root filesystem writable (write: {seen.get('root_write')}, mount: {opts})")
    else:
        facts.append("read-only root")
    if seen.get("uid") == 0 or seen.get("gid") == 0:
        problems.append(f"runs as uid {seen.get('uid')} gid {seen.get('gid')}")
    else:
        facts.append(f"uid {seen.get('uid')}")
    want_mem = _bytes(cfg.memory)
    mem = _limit(seen.get("memory")) or host.get("Memory")
    if not mem or mem > want_mem * 1.01:
        problems.append(f"memory limit {mem or 'none'} (want {cfg.memory})")
    else:
        facts.append(f"memory {mem / 2**20:.0f} MiB")
    if host.get("MemorySwap") not in (host.get("Memory"), None):
        problems.append(f"swap allowed (memory+swap {host.get('MemorySwap')})")
    pids = _limit(seen.get("pids")) or host.get("PidsLimit")
    if not pids or pids > cfg.effective_pids():
        problems.append(f"pids limit {pids or 'none'} (want {cfg.effective_pids()})")
    else:
        facts.append(f"pids {pids}")
    return problems, facts


def _limit(text: str | None) -> int | None:
    """A cgroup limit file's value; "max" (or v1's huge number) means none."""
    if not text or not text.isdigit():
        return None
    value = int(text)
    return None if value >= 1 << 60 else value


def _bytes(size: str) -> int:
    units = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    s = size.lower()
    return int(float(s[:-1]) * units[s[-1]]) if s[-1] in units else int(s)


# ---- the model


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """LiteLLM prints banners on stdout for some lookups; stdout is --json's."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def check_model(loaded: LoadedSettings) -> list[CheckResult]:
    s = loaded.settings
    if not s.model:
        return [
            CheckResult(
                "model",
                "warn",
                "no model configured (the demo needs none)",
                'pass --model, or set RLM_SANDBOX_MODEL or model = "provider/name" in rlm-sandbox.toml',
            )
        ]
    from rlm_sandbox.rlm.lm import preload_litellm

    litellm = preload_litellm()
    results = []
    roles = [("model", s.model)] + (
        [("sub_model", s.sub_model)] if s.sub_model and s.sub_model != s.model else []
    )
    for role, name in roles:
        where = loaded.origin(role)
        try:
            with _quiet():
                litellm.get_llm_provider(name, api_base=s.api_base)
                env = litellm.validate_environment(model=name, api_base=s.api_base)
        except Exception:
            results.append(
                CheckResult(
                    f"{role} key",
                    "fail",
                    f"LiteLLM does not know the provider of {name!r} ({where})",
                    "use LiteLLM's provider/model form, e.g. openai/gpt-4o-mini",
                )
            )
            continue
        missing = list(env.get("missing_keys") or [])
        if s.api_base:  # the configured server stands in for a *_API_BASE variable
            missing = [k for k in missing if not k.endswith(("_API_BASE", "_BASE_URL"))]
        if missing:
            results.append(
                CheckResult(
                    f"{role} key",
                    "fail",
                    f"{name} ({where}) needs {', '.join(missing)}, which is not set",
                    f"export {missing[0]}=... in the shell that runs rlm-sandbox (keys never enter a sandbox)",
                )
            )
        else:
            results.append(_ok(f"{role} key", f"{name} ({where}): the environment has what LiteLLM needs"))
    return results


def check_api_base(loaded: LoadedSettings, timeout: float = HTTP_TIMEOUT_S) -> CheckResult | None:
    url = loaded.settings.api_base
    if not url:
        return None
    shown, where = redact_url(url), loaded.origin("api_base")
    handlers: list[Any] = []
    if (urllib.parse.urlsplit(url).hostname or "") in ("localhost", "127.0.0.1", "::1"):
        handlers.append(urllib.request.ProxyHandler({}))  # loopback never goes through a proxy
    opener = urllib.request.build_opener(*handlers)
    t0 = time.perf_counter()
    try:
        with opener.open(urllib.request.Request(url, method="GET"), timeout=timeout) as resp:
            code = resp.status
    except urllib.error.HTTPError as exc:  # any HTTP answer means the server is there
        code = exc.code
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return CheckResult(
            "api base",
            "fail",
            f"{shown} ({where}) does not answer: {reason}",
            "start the server, or fix api_base / --api-base",
        )
    ms = (time.perf_counter() - t0) * 1000
    return _ok("api base", f"{shown} ({where}) answered HTTP {code} in {ms:.0f} ms")


# ---- all of them


def run_checks(
    loaded: LoadedSettings, on_result: Callable[[CheckResult], None] | None = None
) -> list[CheckResult]:
    """Every check in order; ``on_result`` sees each as soon as it is known."""
    from rlm_sandbox.sandbox.docker_backend import engine_url

    results: list[CheckResult] = []

    def add(result: CheckResult | None) -> None:
        if result is not None:
            results.append(result)
            if on_result is not None:
                on_result(result)

    config = loaded.settings.rlm_config().sandbox
    engine_result, engine = check_engine(engine_url(config.docker_url))
    add(engine_result)
    if engine is None:
        for name in ("cgroups", "runtime", "sandbox image", "leftovers", "hardened start"):
            add(CheckResult(name, "skip", "not checked: no Docker engine"))
    else:
        add(check_cgroup(engine))
        runtime = check_runtimes(engine, config.runtime)
        add(runtime)
        image = check_image(engine, config)
        add(image)
        add(_guarded("leftovers", lambda: check_leftovers(engine)))
        if runtime.failed:
            add(CheckResult("hardened start", "skip", "not tried: the configured runtime is missing"))
        else:
            add(check_hardened_start(engine, config, image_ready=image.status == "ok"))
    for result in check_engines(list(loaded.settings.engines)):
        add(result)
    for result in check_model(loaded):
        add(result)
    add(check_api_base(loaded))
    return results


def _guarded(name: str, check: Callable[[], CheckResult]) -> CheckResult:
    """A check that only reports (never needed) must not stop the others."""
    from rlm_sandbox.errors import RLMSandboxError

    try:
        return check()
    except RLMSandboxError as exc:
        return CheckResult(name, "warn", f"could not check: {exc.message}")
