"""Build the stack's local images and seed their base image when no registry is reachable.

``build_all`` builds every service of the spec that has a ``build`` (API always; PostgreSQL
and Redis when ``build_local_images``), through the engine's API with layer caching.
``seed_base_image`` provides ``debian:bookworm-slim``: pulled when a registry answers,
otherwise debootstrapped (``--variant=minbase``) and imported (~25 s).
"""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Collection, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from docker.errors import APIError, DockerException, ImageNotFound

from app_patch.settings import PROJECT_ROOT
from infra.config import StackConfig
from infra.docker_host import client
from infra.progress import CommandFailed, Progress, Quiet, run_streaming
from infra.spec import Stack
from infra.stack import build_stack

BASE_IMAGE = "debian:bookworm-slim"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DISTRO_CA_GLOB = "/usr/share/ca-certificates/mozilla/*.crt"
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)


class ImageBuildError(RuntimeError):
    """An image could not be built or seeded; the message ends with the build log tail."""


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    seconds: float


def image_exists(tag: str) -> bool:
    with closing(client()) as engine:
        try:
            engine.images.get(tag)
        except ImageNotFound:
            return False
    return True


def extra_ca_certs(bundle: Path = HOST_CA_BUNDLE, distro_glob: str = DISTRO_CA_GLOB) -> str:
    """PEM certificates this host trusts beyond the distribution's set (e.g. a TLS-inspecting
    proxy's CA); passed to builds so ``pip`` inside them can reach PyPI. Empty when none."""
    if not bundle.is_file():
        return ""
    distro: set[str] = set()
    for path in glob.glob(distro_glob):
        distro.update(cert.strip() for cert in _PEM.findall(Path(path).read_text()))
    extra = [cert for cert in _PEM.findall(bundle.read_text()) if cert.strip() not in distro]
    return "\n".join(extra)


def build_all(
    spec: Stack | None = None,
    progress: Progress | None = None,
    only: Collection[str] | None = None,
    extra_args: Mapping[str, str] | None = None,
) -> list[BuiltImage]:
    """Build every image the spec builds locally (default: the managed stack's spec), each
    once (the API replicas share one); ``only`` limits it to these services' images, and
    ``extra_args`` adds build arguments (e.g. the API's ``BUILD_STAMP``)."""
    spec = spec if spec is not None else build_stack(StackConfig())
    extra_ca = extra_ca_certs()
    built: list[BuiltImage] = []
    for service in spec.services:
        if service.build is None or (only is not None and service.name not in only):
            continue
        if any(image.tag == service.image for image in built):
            continue
        args = {**service.build.args, **(extra_args or {})}
        if extra_ca:
            args.setdefault("EXTRA_CA_CERTS", extra_ca)
        base = args.get("BASE_IMAGE", BASE_IMAGE)
        if not image_exists(base):
            raise ImageBuildError(f"base image {base} is missing: run `invoke seed-base-image`")
        built.append(
            build_image(
                service.image,
                PROJECT_ROOT / service.build.context,
                service.build.dockerfile,
                args,
                progress,
            )
        )
    return built


def build_image(
    tag: str,
    context: Path,
    dockerfile: str,
    args: dict[str, str],
    progress: Progress | None = None,
) -> BuiltImage:
    """One ``docker build`` (classic builder, cached layers, intermediate containers removed);
    each build step goes to ``progress`` as it starts."""
    reporter = progress or Quiet()
    started = time.monotonic()
    where = context.relative_to(PROJECT_ROOT) if context.is_relative_to(PROJECT_ROOT) else context
    reporter.step(f"building {tag} from {where}")
    lines: list[str] = []
    image_id = ""
    with closing(client(timeout_s=1800)) as engine:
        try:
            # The low-level API streams each step as the daemon runs it (images.build would
            # return only when the build is over).
            for chunk in engine.api.build(
                path=str(context),
                dockerfile=dockerfile,
                tag=tag,
                buildargs=args,
                rm=True,
                forcerm=True,
                labels={"io.media-analysis-kit.stack": "media-analysis"},
                decode=True,
            ):
                if not isinstance(chunk, dict):
                    continue
                if "error" in chunk:
                    last = [line for line in lines if line.strip()][-1:] or [""]
                    raise ImageBuildError(
                        f"building {tag} failed: {str(chunk['error']).strip()} (after: {last[0]})"
                    )
                image_id = str((chunk.get("aux") or {}).get("ID") or image_id)
                text = str(chunk.get("stream", "")).rstrip()
                if text:
                    lines.append(text)
                    reporter.detail(text)
        except (APIError, DockerException) as exc:
            raise ImageBuildError(f"building {tag} failed: {exc}") from None
        if not image_id:
            image_id = str(engine.images.get(tag).id)
    seconds = time.monotonic() - started
    reporter.step(f"built {tag} in {seconds:.1f}s")
    return BuiltImage(tag, image_id, seconds)


def try_pull(tag: str, timeout_s: int = 60) -> bool:
    repository, _, version = tag.partition(":")
    try:
        with closing(client(timeout_s=timeout_s)) as engine:
            engine.images.pull(repository, tag=version or "latest")
    except (APIError, DockerException, OSError):
        return False
    return True


def seed_base_image(
    tag: str = BASE_IMAGE,
    suite: str = "bookworm",
    mirror: str = DEBIAN_MIRROR,
    pull_first: bool = True,
    progress: Progress | None = None,
) -> str:
    """Make ``tag`` exist locally. Returns how: ``present``, ``pulled`` or ``debootstrapped``."""
    if image_exists(tag):
        return "present"
    reporter = progress or Quiet()
    if pull_first and try_pull(tag):
        reporter.step(f"pulled {tag}")
        return "pulled"
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ImageBuildError(
            f"{tag} cannot be pulled and debootstrap is not installed (apt-get install debootstrap)"
        )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="seed-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        reporter.step(f"seeding {tag}: debootstrap {suite} (minbase) from {mirror}")
        try:
            run_streaming([debootstrap, "--variant=minbase", suite, str(rootfs), mirror],
                          reporter, timeout_s=900)  # fmt: skip
        except (CommandFailed, TimeoutError) as exc:
            last = exc.last_line if isinstance(exc, CommandFailed) else str(exc)
            raise ImageBuildError(f"debootstrap failed: {last}") from None
        _slim(rootfs)
        archive = Path(tmp) / "rootfs.tar"
        subprocess.run(
            ["tar", "-C", str(rootfs), "-cf", str(archive), "."], check=True, timeout=300
        )
        repository, _, version = tag.partition(":")
        with closing(client(timeout_s=600)) as engine:
            engine.api.import_image_from_file(
                str(archive),
                repository=repository,
                tag=version or "latest",
                changes=['CMD ["bash"]', "ENV LANG=C.UTF-8"],
            )
    reporter.step(f"seeded {tag} in {time.monotonic() - started:.1f}s")
    return "debootstrapped"


def _slim(rootfs: Path) -> None:
    """Drop caches a container image does not need (apt lists are fetched again by builds)."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "var/log/*.log"):
        for path in rootfs.glob(pattern):
            if path.is_file():
                path.unlink()
