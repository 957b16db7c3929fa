"""The file store on a real filesystem: streaming atomic writes, crash safety, path safety."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app_patch.settings import PROJECT_ROOT
from app_patch.storage import (
    AREAS,
    Storage,
    StorageKeyError,
    StorageUnavailableError,
    UploadTooLargeError,
    upload_key,
)
from tests.integration.test_storage_support import chunks_of, storage_settings, tree


async def stage_and_place(storage: Storage, data: bytes) -> tuple[str, bool]:
    async with storage.stage(chunks_of(data)) as staged:
        key = upload_key(staged.sha256)
        return key, await storage.place(staged, key)


async def test_open_creates_the_layout(storage: Storage) -> None:
    assert sorted(p.name for p in storage.root.iterdir()) == sorted(AREAS)


async def test_streamed_write_is_hashed_and_placed_atomically(storage: Storage) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    key, placed = await stage_and_place(storage, data)
    assert placed
    sha = hashlib.sha256(data).hexdigest()
    assert key == f"uploads/{sha[:2]}/{sha[2:4]}/{sha}"
    assert (storage.root / key).read_bytes() == data
    assert list(storage.tmp_dir.iterdir()) == []


async def test_second_write_of_same_bytes_keeps_the_first_file(storage: Storage) -> None:
    data = b"same bytes" * 1000
    key, first = await stage_and_place(storage, data)
    inode = (storage.root / key).stat().st_ino
    _, second = await stage_and_place(storage, data)
    assert (first, second) == (True, False)
    assert (storage.root / key).stat().st_ino == inode
    assert list(storage.tmp_dir.iterdir()) == [], "the duplicate tmp file is discarded"


async def test_large_upload_never_sits_in_memory(storage: Storage) -> None:
    size, piece = 64 * 1024 * 1024, os.urandom(64 * 1024)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // len(piece)):
            yield piece

    storage.settings.max_upload_bytes = size
    tracemalloc.start()
    try:
        async with storage.stage(body()) as staged:
            _, peak = tracemalloc.get_traced_memory()
            assert staged.size_bytes == size
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes for a {size}-byte upload"


async def test_too_large_raises_and_leaves_nothing(storage: Storage) -> None:
    with pytest.raises(UploadTooLargeError, match="1000 bytes"):
        async with storage.stage(chunks_of(b"x" * 1001, 100), max_bytes=1000):
            pytest.fail("never reached")
    assert list(storage.tmp_dir.iterdir()) == []
    assert tree(storage.root / "uploads") == {}


async def test_cancelled_write_leaves_nothing(storage: Storage) -> None:
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"a" * 4096
        started.set()
        await asyncio.sleep(3600)
        yield b"never"

    async def upload() -> None:
        async with storage.stage(slow()):
            pass

    task = asyncio.create_task(upload())
    await started.wait()
    await asyncio.sleep(0.05)
    assert len(list(storage.tmp_dir.iterdir())) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(storage.tmp_dir.iterdir()) == []


async def test_start_up_keeps_tmp_files_of_live_writers(storage: Storage) -> None:
    """Another process starting (a second API worker) must not eat an upload in flight."""
    release = asyncio.Event()

    async def held() -> AsyncIterator[bytes]:
        yield b"in flight"
        await release.wait()

    async def upload() -> bool:
        async with storage.stage(held()) as staged:
            return await storage.place(staged, upload_key(staged.sha256))

    task = asyncio.create_task(upload())
    for _ in range(100):
        if list(storage.tmp_dir.iterdir()):
            break
        await asyncio.sleep(0.01)
    (storage.tmp_dir / "ma-00000000000000000000000000000000.part").write_bytes(b"crash leftover")
    other = await Storage.open(storage.settings)  # the flock of the live writer protects it
    assert [p.name for p in other.tmp_dir.iterdir()] != []
    assert not (other.tmp_dir / "ma-00000000000000000000000000000000.part").exists()
    release.set()
    assert await task is True
    assert list(storage.tmp_dir.iterdir()) == []


# ---------------------------------------------------------------- crashes

CHILD_CRASH_BEFORE_RENAME = """
import asyncio, os, sys
from pathlib import Path
from app_patch.settings import StorageSettings
from app_patch.storage import Storage, upload_key

class CrashingStorage(Storage):
    def _place(self, staged, key, replace):
        print(staged.path, flush=True)
        os._exit(17)  # the process dies after the fsync'd write, before the rename

async def body():
    for _ in range(50):
        yield b"x" * 65536

async def main():
    storage = await CrashingStorage.open(StorageSettings(root=Path(sys.argv[1])))
    async with storage.stage(body()) as staged:
        await storage.place(staged, upload_key(staged.sha256))

asyncio.run(main())
"""

CHILD_KILLED_MID_WRITE = """
import asyncio, sys
from pathlib import Path
from app_patch.settings import StorageSettings
from app_patch.storage import Storage, upload_key

async def body():
    for _ in range(20):
        yield b"y" * 65536
    print("written", flush=True)
    await asyncio.sleep(3600)  # SIGKILLed here, half way through the stream
    yield b"never"

async def main():
    storage = await Storage.open(StorageSettings(root=Path(sys.argv[1]), chunk_bytes=65536))
    async with storage.stage(body()) as staged:
        await storage.place(staged, upload_key(staged.sha256))

asyncio.run(main())
"""


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_crash_between_write_and_rename(tmp_path: Path) -> None:
    root = tmp_path / "root"
    child = _python(CHILD_CRASH_BEFORE_RENAME, str(root))
    out, err = child.communicate(timeout=60)
    assert child.returncode == 17, err
    leftover = Path(out.strip())
    assert leftover.parent == root / "tmp" and leftover.stat().st_size == 50 * 65536
    sha = hashlib.sha256(b"x" * 65536 * 50).hexdigest()
    assert not (root / upload_key(sha)).exists(), "nothing under the final key"
    assert tree(root / "uploads") == {}

    asyncio.run(Storage.open(storage_settings(root)))  # the next start
    assert list((root / "tmp").iterdir()) == []


async def test_sigkill_mid_write(tmp_path: Path) -> None:
    root = tmp_path / "root"
    child = _python(CHILD_KILLED_MID_WRITE, str(root))
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "written"
    deadline = time.monotonic() + 10
    for _ in range(1000):  # wait for the chunks to reach the file
        parts = list((root / "tmp").glob("ma-*.part"))
        if (parts and parts[0].stat().st_size > 0) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    assert len(list((root / "tmp").iterdir())) == 1, "the partial file is left in tmp/ only"
    assert tree(root / "uploads") == {}

    await Storage.open(storage_settings(root))
    assert list((root / "tmp").iterdir()) == []


# ---------------------------------------------------------------- unavailable storage


async def test_root_that_cannot_exist_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(StorageUnavailableError, match="storage unavailable"):
        await Storage.open(storage_settings(tmp_path / "a-file" / "root"))


CHILD_UNWRITABLE = """
import asyncio, concurrent.futures.thread, os, sys
from pathlib import Path
from app_patch.settings import StorageSettings
from app_patch.storage import Storage, StorageUnavailableError

root = Path(sys.argv[1])
if os.geteuid() == 0:
    os.setgid(65534)
    os.setuid(65534)  # root ignores permissions: drop to nobody
try:
    asyncio.run(Storage.open(StorageSettings(root=root)))
except StorageUnavailableError as exc:
    print(exc)
    sys.exit(3)
"""


async def test_read_only_root_is_unavailable(tmp_path: Path) -> None:
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="ma-ro-"))  # traversable by nobody, unlike tmp_path
    try:
        os.chmod(base, 0o755)
        root = base / "root"
        await Storage.open(storage_settings(root))
        for path in [root, *(root / area for area in AREAS)]:
            os.chmod(path, 0o555)
        child = _python(CHILD_UNWRITABLE, str(root))
        out, err = child.communicate(timeout=60)
        assert child.returncode == 3, err
        assert "storage unavailable" in out and "Permission denied" in out
    finally:
        for dirpath, _, _ in os.walk(base):
            os.chmod(dirpath, 0o755)
        import shutil

        shutil.rmtree(base)


async def test_full_disk_mid_write_is_unavailable_and_leaves_nothing(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    done = await asyncio.to_thread(
        subprocess.run,
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs CAP_SYS_ADMIN)")
    try:
        storage = await Storage.open(storage_settings(mount / "root"))
        with pytest.raises(StorageUnavailableError, match="No space left"):
            await stage_and_place(storage, os.urandom(1024 * 1024))
        assert list(storage.tmp_dir.iterdir()) == []
        assert tree(storage.root / "uploads") == {}
    finally:
        await asyncio.to_thread(subprocess.run, ["umount", str(mount)], check=False)


# ---------------------------------------------------------------- path safety


async def test_traversal_attempts_are_refused_and_nothing_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    storage = await Storage.open(storage_settings(root))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    # a fan-out directory and a final key that are symlinks pointing out of the root
    (root / "uploads" / "ab").symlink_to(outside, target_is_directory=True)
    sha_link = "cd" * 32
    (root / "uploads" / "cd" / "cd").mkdir(parents=True)
    (root / "uploads" / "cd" / "cd" / sha_link).symlink_to(outside / "secret")
    before = tree(tmp_path)

    bad_keys = [
        "../outside/secret",
        "uploads/../../outside/x",
        "uploads/./x",
        "uploads//x",
        "/etc/passwd",
        str(outside / "x"),
        "uploads/x\x00y",
        "uploads\\..\\x",
        "elsewhere/x",
        "uploads",
        "",
        f"uploads/ab/{'ab' * 2}/{'ab' * 32}",  # through the directory symlink
        f"uploads/cd/cd/{sha_link}",  # the final symlink
    ]
    for key in bad_keys:
        with pytest.raises(StorageKeyError):
            storage.path_for(key)
        with pytest.raises(StorageKeyError):
            storage.open_read(key)
        with pytest.raises(StorageKeyError):
            storage.remove(key)
        with pytest.raises(StorageKeyError):
            async with storage.stage(chunks_of(b"payload")) as staged:
                await storage.place(staged, key)
    for digest in ["../../etc/passwd", "AB" * 32, "ab" * 31, "ab" * 32 + "/x", "ab" * 31 + "\x00b"]:
        with pytest.raises(StorageKeyError):
            upload_key(digest)
    # the real upload whose content address goes through the symlinked directory
    data = next(
        d for n in range(100_000) if hashlib.sha256(d := f"{n}".encode()).hexdigest()[:2] == "ab"
    )
    with pytest.raises(StorageKeyError, match="outside"):
        await stage_and_place(storage, data)

    after = tree(tmp_path)
    after.pop("root/tmp"), before.pop("root/tmp")  # its mtime moves with every staged write
    assert after == before, "nothing changed outside (or inside) the root"
    assert (outside / "secret").read_bytes() == b"secret"
    assert list(storage.tmp_dir.iterdir()) == []


async def test_usage_counts_files_and_bytes_per_area(storage: Storage) -> None:
    await stage_and_place(storage, b"a" * 100)
    await stage_and_place(storage, b"b" * 50)
    (storage.outbox_dir / "x.json").write_bytes(b"{}")
    usage = await storage.usage_async(max_age_s=0)
    assert usage["uploads"] == (2, 150)
    assert usage["outbox"] == (1, 2)
    assert usage["tmp"] == (0, 0) and usage["artifacts"] == (0, 0)
    await stage_and_place(storage, b"c")
    assert storage.usage()["uploads"] == (2, 150), "cached for usage_cache_s"
    assert storage.usage(max_age_s=0)["uploads"] == (3, 151)
