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
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from docker.errors import APIError, BuildError, DockerException, ImageNotFound

from infra.config import StackConfig
from infra.docker_host import client
from infra.spec import Stack
from infra.stack import build_stack

REPO_ROOT = Path(__file__).resolve().parent.parent
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
    log: Callable[[str], None] = lambda line: None,
) -> list[BuiltImage]:
    """Build every image the spec builds locally (default: the managed stack's spec)."""
    spec = spec if spec is not None else build_stack(StackConfig())
    extra_ca = extra_ca_certs()
    built: list[BuiltImage] = []
    for service in spec.services:
        if service.build is None:
            continue
        args = dict(service.build.args)
        if extra_ca:
            args.setdefault("EXTRA_CA_CERTS", extra_ca)
        base = args.get("BASE_IMAGE", BASE_IMAGE)
        if not image_exists(base):
            raise ImageBuildError(f"base image {base} is missing: run `invoke seed-base-image`")
        built.append(
            build_image(
                service.image,
                REPO_ROOT / service.build.context,
                service.build.dockerfile,
                args,
                log,
            )
        )
    return built


def build_image(
    tag: str,
    context: Path,
    dockerfile: str,
    args: dict[str, str],
    log: Callable[[str], None] = lambda line: None,
) -> BuiltImage:
    """One ``docker build`` (classic builder, cached layers, intermediate containers removed)."""
    started = time.monotonic()
    log(f"building {tag} from {context}")
    lines: list[str] = []
    with closing(client(timeout_s=1800)) as engine:
        try:
            image, stream = engine.images.build(
                path=str(context),
                dockerfile=dockerfile,
                tag=tag,
                buildargs=args,
                rm=True,
                forcerm=True,
                labels={"io.media-analysis-kit.stack": "media-analysis"},
            )
        except BuildError as exc:
            tail = "".join(
                str(chunk.get("stream", chunk.get("error", ""))) for chunk in exc.build_log
            )
            raise ImageBuildError(f"building {tag} failed: {exc.msg}\n{tail[-4000:]}") from None
        except (APIError, DockerException) as exc:
            raise ImageBuildError(f"building {tag} failed: {exc}") from None
        for chunk in stream:
            text = str(chunk.get("stream", "")).rstrip() if isinstance(chunk, dict) else ""
            if text:
                lines.append(text)
    seconds = time.monotonic() - started
    log(f"built {tag} in {seconds:.1f}s")
    return BuiltImage(tag, str(image.id), seconds)


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
    log: Callable[[str], None] = lambda line: None,
) -> str:
    """Make ``tag`` exist locally. Returns how: ``present``, ``pulled`` or ``debootstrapped``."""
    if image_exists(tag):
        return "present"
    if pull_first and try_pull(tag):
        log(f"pulled {tag}")
        return "pulled"
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ImageBuildError(
            f"{tag} cannot be pulled and debootstrap is not installed (apt-get install debootstrap)"
        )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="seed-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"debootstrapping {suite} (minbase) from {mirror}")
        result = subprocess.run(
            [debootstrap, "--variant=minbase", suite, str(rootfs), mirror],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if result.returncode != 0:
            raise ImageBuildError(f"debootstrap failed:\n{(result.stdout + result.stderr)[-3000:]}")
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
    log(f"seeded {tag} in {time.monotonic() - started:.1f}s")
    return "debootstrapped"


def _slim(rootfs: Path) -> None:
    """Drop caches a container image does not need (apt lists are fetched again by builds)."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "var/log/*.log"):
        for path in rootfs.glob(pattern):
            if path.is_file():
                path.unlink()
