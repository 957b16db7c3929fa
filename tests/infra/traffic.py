"""Requests the docker tests send a running stack (no tests here): PNG bodies, the live
probe, and a background load of uploads and reads that counts every outcome."""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
from PIL import Image

T = TypeVar("T")

# A job in one of these states no longer changes.
TERMINAL = {"succeeded", "failed"}


def png(color: tuple[int, int, int] = (200, 30, 90), size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def live(url: str) -> dict[str, str]:
    answer = httpx.get(f"{url}/health/live", timeout=5)
    answer.raise_for_status()
    return dict(answer.json())


@dataclass
class Load:
    """Uploads (each with its own Idempotency-Key) and reads against the proxy until stopped;
    every outcome counted."""

    url: str
    headers: dict[str, str]
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    uploaded: dict[str, str] = field(default_factory=dict)  # key -> job id
    builds: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, worker: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30, headers=self.headers) as api:
            i = 0
            while not self.stop.is_set() and i < 5000:
                i += 1
                key = f"load-{worker}-{i}-{uuid.uuid4().hex[:8]}"
                try:
                    if i % 2:
                        body = png((worker * 30 % 256, i % 256, 77), (24 + i % 7, 16))
                        answer = api.post(
                            "/analyses",
                            files={"file": (f"{key}.png", body, "image/png")},
                            data={"analysis_type": "basic"},
                            headers={"Idempotency-Key": key},
                        )
                        if answer.status_code in (200, 201, 202):
                            self.uploaded[key] = str(answer.json()["id"])
                    else:
                        answer = api.get("/health/live")
                        if answer.status_code == 200:
                            self.builds[str(answer.json().get("build"))] += 1
                except httpx.HTTPError as exc:
                    self.failed.append(f"{type(exc).__name__}")
                    continue
                if answer.status_code >= 300:
                    self.failed.append(f"HTTP {answer.status_code}")
                else:
                    self.ok += 1

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self.run, args=(w,), daemon=True) for w in range(4)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def around_load(
    url: str, headers: dict[str, str], action: Callable[[], T]
) -> tuple[T, Load, float]:
    """``action`` under a :class:`Load` that starts 2 s before it and stops 2 s after; what
    it returned, the load, and the seconds it took."""
    started = time.monotonic()
    with Load(url, headers) as load:
        time.sleep(2)
        result = action()
        time.sleep(2)
    return result, load, time.monotonic() - started - 4
