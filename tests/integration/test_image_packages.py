"""A derived image on the real engine: built from Debian packages on first use, hardened like
the default, the package usable from a cell, cached after, listed and removed by the CLI."""

from __future__ import annotations

import json

import pytest

from rlm_sandbox import Sandbox, SandboxConfig
from rlm_sandbox.sandbox.built_images import list_images
from rlm_sandbox.sandbox.docker_backend import docker_client
from rlm_sandbox.sandbox.image import configured_tag, packages_tag

from ..conftest import remove_test_images
from ..helpers import cli

pytestmark = pytest.mark.docker

# Every setuid/setgid file or directory on the container's own filesystems (not /proc, /sys, /dev).
FIND_SETID = """
import os, stat
found = []
for root, dirs, files in os.walk('/'):
    if root == '/':
        dirs[:] = [d for d in dirs if d not in ('proc', 'sys', 'dev')]
    for name in dirs + files:
        path = os.path.join(root, name)
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            continue
        if not stat.S_ISLNK(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
            found.append(path)
print(len(found), found[:20])
"""

INSIDE = """
import os, socket, tabulate
print(tabulate.tabulate([["disk", 3], ["net", 1]], headers=["kind", "n"]))
print("uid", os.getuid(), os.getgid())
st = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)
print("caps", st['CapEff'].strip(), st['NoNewPrivs'].strip(), st['Seccomp'].strip())
try:
    open('/usr/lib/planted', 'w')
    print("root writable")
except OSError as exc:
    print("root", exc.strerror)
print("ifaces", sorted(name for _i, name in socket.if_nameindex()))
try:
    socket.create_connection(("1.1.1.1", 53), timeout=3)
    print("egress open")
except OSError:
    print("egress refused")
"""


@pytest.mark.timeout(900)
def test_a_derived_image_is_built_hardened_used_cached_listed_and_removed(
    sandbox_config: SandboxConfig, sandbox_image: str, test_image_packages: tuple[str, ...]
) -> None:
    api = docker_client().api
    remove_test_images()  # a real first build, whatever an earlier session left
    cfg = sandbox_config.model_copy(update={"image_packages": list(test_image_packages)})
    tag = configured_tag(cfg)
    layer = packages_tag(test_image_packages, cfg.base_image)
    assert tag != sandbox_image

    # First use: the engine builds the package layer, then the sandbox image on it, and says so.
    built: list[str] = []
    with Sandbox(cfg, progress=built.append) as sb:
        assert any(f"building the package layer {layer}" in m for m in built), built[:5]
        assert any("apt-get install python3-tabulate" in m for m in built)
        assert any(f"building sandbox image {tag} on {layer}" in m for m in built)
        info = api.inspect_container(sb.id)
        assert info["Config"]["Image"] == tag
        r = sb.execute(INSIDE)
        assert r.ok, r
        lines = r.stdout.splitlines()
        assert lines[:4] == ["kind      n", "------  ---", "disk      3", "net       1"], r.stdout
        assert lines[4] == "uid 10001 10001"
        assert lines[5] == "caps 0000000000000000 1 2"
        assert lines[6] == "root Read-only file system"
        assert lines[7] == "ifaces ['lo']"
        assert lines[8] == "egress refused"
        setid = sb.execute(FIND_SETID)
        assert setid.ok and setid.stdout.startswith("0 []"), setid.stdout

        # The same run-time flags as every sandbox (tests/integration/test_hardening.py in full).
        host = info["HostConfig"]
        assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
        assert host["Privileged"] is False and not host.get("Init") and host["IpcMode"] == "private"

    # The derived image adds packages only: the default image's user, entrypoint, env, workdir.
    derived, default = api.inspect_image(tag), api.inspect_image(sandbox_image)
    for key in ("User", "Entrypoint", "Env", "WorkingDir", "Cmd"):
        assert derived["Config"][key] == default["Config"][key], key
    labels = derived["Config"]["Labels"]
    assert labels["rlm-sandbox.packages"] == "python3-tabulate" and labels["rlm-sandbox.from"] == layer

    # The base image itself has setuid binaries (su, mount, passwd...); the derived one none:
    # the check above is not vacuous.
    with Sandbox(sandbox_config) as plain:
        base_setid = plain.execute(FIND_SETID)
        assert base_setid.ok and not base_setid.stdout.startswith("0 "), base_setid.stdout

    # A second use: no build, the same image.
    again: list[str] = []
    with Sandbox(cfg, progress=again.append) as sb:
        assert again == []
        assert api.inspect_container(sb.id)["Image"] == derived["Id"]
        assert sb.execute("import tabulate; print(tabulate.__name__)").stdout == "tabulate\n"
        # Never removed while a sandbox runs on it: said, exit 1, still there.
        refused = cli("image", "rm", tag)
        assert refused.returncode == 1, refused.stderr.decode()
        assert f"kept {tag}: in use by 1 container(s)" in refused.stderr.decode()
        assert api.inspect_image(tag)["Id"] == derived["Id"]

    # image ls shows it (and its package layer), as the configured default when asked with it.
    listed = cli("image", "ls", "--json", "--image-packages", "python3-tabulate")
    assert listed.returncode == 0, listed.stderr.decode()
    rows = {i["tag"]: i for i in json.loads(listed.stdout)["images"]}
    assert rows[tag]["packages"] == ["python3-tabulate"] and rows[tag]["default"] is True
    assert rows[tag]["kind"] == "sandbox" and rows[tag]["size_bytes"] > 0 and not rows[tag]["stale"]
    assert rows[layer]["kind"] == "packages" and rows[layer]["built_on"] == cfg.base_image
    assert rows[sandbox_image]["default"] is False
    plain_ls = cli("image", "ls")
    assert tag in plain_ls.stdout.decode() and "python3-tabulate" in plain_ls.stdout.decode()

    # image rm removes it and the layer under it, and nothing else.
    before = {i.tag for i in list_images(docker_client(), SandboxConfig())}
    removed = cli("image", "rm", tag)
    assert removed.returncode == 0, removed.stderr.decode()
    assert f"removed {tag}" in removed.stdout.decode() and f"removed {layer}" in removed.stdout.decode()
    after = {i.tag for i in list_images(docker_client(), SandboxConfig())}
    assert before - after == {tag, layer}
