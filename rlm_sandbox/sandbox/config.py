"""Settings, validated with pydantic, with safe defaults: loosening any of them is explicit."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rlm_sandbox.errors import ConfigError
from rlm_sandbox.sandbox.packages import MAX_PACKAGES, check_package_names, split_package_list

OFFLINE_BASE = "rlm-sandbox-base:bookworm"
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9_.:@/-]{0,128}$")
_MEMORY = re.compile(r"^\d+(\.\d+)?[bkmgBKMG]?$")


class SandboxConfig(BaseModel):
    """How one sandbox container is built, limited and talked to."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    image: str | None = Field(
        None, description="sandbox image; None builds/uses the kernel-hash-tagged default"
    )
    base_image: str = Field(
        OFFLINE_BASE, description="base for the default image (an official python image works too)"
    )
    image_packages: list[str] = Field(
        default_factory=list,
        description=(
            "Debian packages added to the sandbox image, e.g. python3-pandas (a derived image, "
            f"built once and cached by the list; at most {MAX_PACKAGES})"
        ),
    )
    memory: str = Field("1g", description="memory limit; swap is set equal, so there is no swap")
    cpus: Annotated[float, Field(gt=0, le=64)] = 1.0
    pids: Annotated[int, Field(ge=8, le=65536)] | None = Field(
        None, description="pids limit; None = 128, or 512 under runsc (gVisor's own threads count against it)"
    )
    nofile: Annotated[int, Field(ge=16, le=1 << 20)] = 256
    tmpfs_size: str = Field("64m", description="size of the noexec tmpfs mounted on /tmp")
    cell_timeout: Annotated[float, Field(gt=0, le=86400)] = 60.0
    kill_grace: Annotated[float, Field(gt=0, le=600)] = 3.0
    start_timeout: Annotated[float, Field(gt=0, le=600)] = 30.0
    io_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    output_cap: Annotated[int, Field(ge=0, le=64 << 20)] = 64 * 1024
    max_frame_header: Annotated[int, Field(ge=1024, le=16 << 20)] = 64 * 1024
    max_frame_payload: Annotated[int, Field(ge=1 << 16, le=4 << 30)] = 256 << 20
    max_pending_llm: Annotated[int, Field(ge=1, le=65536)] = 1024
    max_held_bytes: Annotated[int, Field(ge=1 << 20, le=1 << 40)] = Field(
        768 << 20,
        description="bytes of its requests the host may hold for one sandbox (a prompt counts twice "
        "its size: text and request body); past it the host stops reading from the sandbox",
    )
    held_stall_timeout: Annotated[float, Field(gt=0, le=86400)] = Field(
        600.0,
        description="seconds a sandbox may wait for room with nothing released in its run before "
        "it is killed; keep it above lm_timeout",
    )
    llm_concurrency: Annotated[int, Field(ge=1, le=1024)] = 16
    context_chunk: Annotated[int, Field(ge=4096, le=64 << 20)] = 4 << 20
    input_file: bool = Field(
        True,
        description="an input of 1 MB or more reaches a sandbox on a local engine through a private "
        "file mounted read-only (several times faster than the stream); false streams everything",
    )
    backend: Literal["docker", "local"] = Field(
        "docker",
        description="'local' runs the kernel as a plain subprocess: NO SANDBOX, trusted code only",
    )
    runtime: str | None = Field(
        None, description="OCI runtime, e.g. 'runsc' for gVisor; None = engine default"
    )
    docker_url: str | None = Field(None, description="engine URL; None = DOCKER_HOST or the local socket")
    labels: dict[str, str] = Field(default_factory=dict)
    run_id: str | None = None
    node_id: str | None = None
    tenant: str = "default"

    def effective_pids(self) -> int:
        if self.pids is not None:
            return self.pids
        return 512 if self.runtime == "runsc" else 128

    @field_validator("memory", "tmpfs_size")
    @classmethod
    def _size(cls, v: str) -> str:
        if not _MEMORY.match(v):
            raise ValueError(f"{v!r} is not a size like 512m or 2g")
        return v.lower()

    @field_validator("tenant", "run_id", "node_id")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        if v is not None and not _LABEL_VALUE.match(v):
            raise ValueError(f"{v!r}: use letters, digits and _.:@/- (at most 128)")
        return v

    @field_validator("image_packages", mode="before")
    @classmethod
    def _packages(cls, v: object) -> list[str]:
        """Sorted and unique, so the same set is the same image; a name that is not a
        Debian package name raises :class:`ConfigError` at once (never a build)."""
        return list(check_package_names(split_package_list(v)))  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _packages_need_the_default_image(self) -> SandboxConfig:
        if self.image_packages and self.image:
            raise ConfigError(
                f"image_packages adds packages to the default image, but image={self.image!r} is set",
                hint="unset image (the packages are built into a derived image), or install them in yours",
            )
        if self.image_packages and self.backend == "local":
            raise ConfigError(
                "image_packages needs the docker backend: the local backend has no image",
                hint="drop --backend local, or install the packages on this machine yourself",
            )
        return self

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if key.startswith("rlm-sandbox"):
                raise ValueError(f"label {key!r} is reserved for the engine")
        return v
