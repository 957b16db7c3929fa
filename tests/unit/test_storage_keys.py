"""Key generation and validation: nothing a caller passes can name a path outside the root."""

from __future__ import annotations

import os
import uuid
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app_patch.settings import StorageSettings
from app_patch.storage import (
    Storage,
    StorageKeyError,
    artifact_key,
    check_key,
    sha256_of_upload_key,
    upload_key,
)

ROOT = Path("/srv/ma-storage-unit-test/root")  # never created: path_for only resolves
STORE = Storage(StorageSettings(root=ROOT))

PATHY = st.lists(
    st.sampled_from(["/", "..", ".", "\\", "\x00", "a", "uploads", "tmp", "~", " ", "é"]),
    max_size=12,
).map("".join)


@settings(max_examples=500, deadline=None)
@given(st.one_of(PATHY, st.text(max_size=40)))
def test_any_key_is_refused_or_stays_inside_the_root(key: str) -> None:
    try:
        path = STORE.path_for(key)
    except StorageKeyError:
        return
    resolved = Path(os.path.realpath(path))
    assert resolved.is_relative_to(ROOT) and resolved != ROOT
    assert ".." not in path.parts and "\x00" not in key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs/path",
        "../x",
        "uploads/../x",
        "uploads/../../x",
        "uploads/./x",
        "uploads//x",
        "uploads/x/",
        "uploads/a\x00b",
        "uploads\\x",
        "nowhere/x",
        "uploads",
    ],
)
def test_malformed_keys_are_refused(key: str) -> None:
    with pytest.raises(StorageKeyError):
        check_key(key)


def test_upload_key_layout_and_inverse() -> None:
    sha = "0123456789abcdef" * 4
    key = upload_key(sha)
    assert key == f"uploads/01/23/{sha}"
    assert sha256_of_upload_key(key) == sha
    assert sha256_of_upload_key(f"uploads/99/23/{sha}") is None
    assert sha256_of_upload_key("artifacts/x") is None


@pytest.mark.parametrize("digest", ["", "0" * 63, "0" * 65, "G" * 64, "A" * 64, "../" * 21 + "a"])
def test_upload_key_wants_a_lowercase_hex_digest(digest: str) -> None:
    with pytest.raises(StorageKeyError):
        upload_key(digest)


def test_artifact_key_layout() -> None:
    job = uuid.UUID(int=7)
    assert (
        artifact_key(job, "thumbnail", "png", date(2026, 1, 2))
        == f"artifacts/2026/01/02/{job}/thumbnail.png"
    )


@pytest.mark.parametrize(
    ("kind", "ext"),
    [("../x", "png"), ("a/b", "png"), ("", "png"), ("Thumb", "png"), ("ok", ""), ("ok", "p.g")],
)
def test_artifact_key_refuses_odd_parts(kind: str, ext: str) -> None:
    with pytest.raises(StorageKeyError):
        artifact_key(uuid.uuid4(), kind, ext, date.today())
