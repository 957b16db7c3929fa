"""Upload ingress of ``POST /analyses``: the gate in front of the body and the streamed form.

Why not FastAPI's ``UploadFile`` + ``Form``: Starlette then spools the whole multipart body to
a temp file before the handler runs, so the size limit was only checked against a declared
Content-Length; a chunked body skipped it, and any number of parts of any size was accepted.
Here the body is never held by the framework:

- ``upload_gate.UploadGate`` (pure ASGI) counts the body bytes each request really delivers,
  whatever the headers say (chunked included), and ends the request with 413 once
  ``max_upload_bytes + MULTIPART_OVERHEAD_BYTES`` is crossed; it also caps the uploads in
  flight in this process (503 + Retry-After, answered before any body byte is read).
- ``StreamedForm`` pushes ``request.stream()`` through python-multipart's streaming
  ``MultipartParser``: the ``file`` part's bytes go straight to ``Storage.stage`` (written
  once into ``tmp/``, hashed on the way, at most ``max_upload_bytes``); the text fields are
  kept (small, capped) and checked as soon as their part ends, so a bad field sent before the
  file is refused before the file is read. Fields may also follow the file: the request is
  only described (``StreamedForm.submission``) once the body has ended.
- ``ensure_free_space`` refuses with 507 before a byte is written when the storage volume is
  under its free-space floor.

Form rules: exactly one part named ``file`` (none or a second one: 422); ``analysis_type`` and
``client_ref`` at most once each (a repeat: 422); other parts carrying a filename are refused
(422: one file per request); other text parts are ignored, as FastAPI forms ignored them
(clients that add a field keep working), but count towards the caps: at most ``MAX_PARTS``
parts (413) and ``MAX_FIELD_BYTES`` per non-file part (422, like an over-long ``client_ref``).
An empty text field counts as absent (FastAPI's form behaviour). Error details are fixed texts
that never repeat what was sent.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from app_patch.media import CONTROL_CHARACTERS
from app_patch.storage import Storage
from app_patch.submission import Submission
from app_patch.threads import in_thread

MAX_PARTS = 8
MAX_FIELD_BYTES = 1024
MAX_PART_HEADERS = 4  # Content-Disposition, Content-Type and a little slack
MAX_PART_HEADER_BYTES = 2048  # one header line: room for a long (percent-encoded) file name
CLIENT_REF_MAX_CHARS = 255
FILE_FIELD, TYPE_FIELD, REF_FIELD = "file", "analysis_type", "client_ref"
TEXT_FIELDS = frozenset({TYPE_FIELD, REF_FIELD})


class UploadRefusedError(Exception):
    """The upload is refused with ``status`` and a fixed ``detail`` (never the input)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


# ---------------------------------------------------------------- free space


def _free_bytes(storage: Storage) -> int:
    st = os.statvfs(storage.root)
    return st.f_bavail * st.f_frsize


async def ensure_free_space(storage: Storage, floor_bytes: int, declared: int | None) -> None:
    """507 before writing when the volume would fall under ``floor_bytes`` free.

    A declared Content-Length counts against the free space too; a chunked body cannot be
    known in advance, so then only the floor itself is checked.
    """
    if floor_bytes <= 0:
        return
    try:
        free = await in_thread(_free_bytes, storage)
    except OSError:
        raise UploadRefusedError(507, "storage unavailable: the upload was not stored") from None
    if free - (declared or 0) < floor_bytes:
        raise UploadRefusedError(
            507, "storage volume is low on free space: the upload was not stored"
        )


def declared_length(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


# ---------------------------------------------------------------- the streamed form


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _boundary(content_type: str) -> bytes:
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary", b"")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadRefusedError(422, "expected a multipart/form-data body with a file part")
    return boundary


@dataclass
class _Part:
    kind: Literal["file", "field", "ignored"]
    name: str = ""
    value: bytearray = field(default_factory=bytearray)


class StreamedForm:
    """One upload's multipart body, parsed as it streams (see the module docstring).

    python-multipart calls back synchronously from ``write``; the file part's data is queued
    per written chunk and handed out by ``file_chunks`` right after, so at most one network
    chunk of file data is held here.
    """

    def __init__(self, content_type: str, analysis_types: Sequence[str]) -> None:
        boundary = _boundary(content_type)
        self.analysis_types = tuple(analysis_types)
        self.original_name: str | None = None
        self.file_seen = False
        self.fields: dict[str, str] = {}
        self._seen_fields: set[str] = set()
        self._parts = 0
        self._ended = False
        self._part: _Part | None = None
        self._headers: dict[bytes, bytes] = {}
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._pending: list[bytes] = []
        try:
            self._parser = MultipartParser(
                boundary,
                callbacks={
                    "on_part_begin": self._on_part_begin,
                    "on_header_field": self._on_header_field,
                    "on_header_value": self._on_header_value,
                    "on_header_end": self._on_header_end,
                    "on_headers_finished": self._on_headers_finished,
                    "on_part_data": self._on_part_data,
                    "on_part_end": self._on_part_end,
                    "on_end": self._on_end,
                },
                max_header_count=MAX_PART_HEADERS,
                max_header_size=MAX_PART_HEADER_BYTES,
            )
        except FormParserError:  # e.g. a boundary longer than the RFC allows
            raise UploadRefusedError(400, "malformed multipart body") from None

    # ---- feeding

    async def file_chunks(self, body: AsyncIterable[bytes]) -> AsyncGenerator[bytes, None]:
        """The file part's bytes, parsing the whole body (fields after the file included).

        Bounded: ``UploadGate`` ends the body at its byte limit and staging at
        ``max_upload_bytes``; a malformed body raises ``UploadRefusedError`` (400).
        """
        async for chunk in body:
            self._write(chunk)
            pending, self._pending = self._pending, []
            for piece in pending:
                yield piece
        if not self._ended:
            raise UploadRefusedError(400, "malformed multipart body: it ends before its last part")

    def _write(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except UploadRefusedError:
            raise
        except FormParserError:
            raise UploadRefusedError(400, "malformed multipart body") from None

    # ---- the outcome

    def submission(self, idempotency_key: str | None) -> Submission:
        """What the body asked for, once it has ended (called by ``AnalysisService``)."""
        if not self.file_seen:
            raise UploadRefusedError(422, "the form has no file part")
        return Submission(
            analysis_type=self.fields.get(TYPE_FIELD) or "auto",
            client_ref=self.fields.get(REF_FIELD),
            idempotency_key=idempotency_key,
            original_name=self.original_name,
        )

    # ---- parser callbacks

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise UploadRefusedError(413, f"too many form parts (at most {MAX_PARTS})")
        self._headers = {}
        self._part = None

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[bytes(self._header_name).strip().lower()] = bytes(self._header_value).strip()
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        raw_name = options.get(b"name")
        if raw_name is None:
            raise UploadRefusedError(422, "a form part has no name")
        name = _decode(raw_name)
        filename = options.get(b"filename")
        if name == FILE_FIELD:
            if self.file_seen:
                raise UploadRefusedError(422, "more than one file part: send one file per request")
            self.file_seen = True
            self.original_name = _decode(filename) if filename else None
            self._part = _Part("file", name)
        elif filename is not None:
            raise UploadRefusedError(422, "unexpected file part: send the file as 'file'")
        elif name in TEXT_FIELDS:
            if name in self._seen_fields:
                raise UploadRefusedError(422, f"{name} given more than once")
            self._seen_fields.add(name)
            self._part = _Part("field", name)
        else:
            self._part = _Part("ignored", name)

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part is None:
            return
        if part.kind == "file":
            self._pending.append(data[start:end])
            return
        if len(part.value) + (end - start) > MAX_FIELD_BYTES:
            what = part.name if part.kind == "field" else "a form field"
            raise UploadRefusedError(422, f"{what} is longer than {MAX_FIELD_BYTES} bytes")
        if part.kind == "field":
            part.value += data[start:end]

    def _on_part_end(self) -> None:
        part, self._part = self._part, None
        if part is not None and part.kind == "field":
            value = _checked_field(part.name, bytes(part.value), self.analysis_types)
            if value:  # empty means absent, as with FastAPI forms
                self.fields[part.name] = value

    def _on_end(self) -> None:
        self._ended = True


def _checked_field(name: str, raw: bytes, analysis_types: Sequence[str]) -> str:
    """The rules the ``Form`` declarations enforced before (422 each), with fixed details."""
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UploadRefusedError(422, f"{name} must be UTF-8 text") from None
    if not value:
        return value
    if name == TYPE_FIELD and value not in analysis_types:
        raise UploadRefusedError(
            422, f"unsupported analysis_type; allowed: {', '.join(analysis_types)}"
        )
    if name == REF_FIELD:
        if len(value) > CLIENT_REF_MAX_CHARS:
            raise UploadRefusedError(422, f"client_ref: at most {CLIENT_REF_MAX_CHARS} characters")
        if CONTROL_CHARACTERS.search(value):
            raise UploadRefusedError(422, "client_ref must not contain control characters")
    return value


# ---------------------------------------------------------------- OpenAPI


def openapi_upload_body() -> dict[str, Any]:
    """The multipart form the handler parses by hand, as FastAPI described ``File``/``Form``."""
    form = {
        "title": "Body_create_analysis_analyses_post",
        "type": "object",
        "required": [FILE_FIELD],
        "properties": {
            FILE_FIELD: {
                "type": "string",
                "contentMediaType": "application/octet-stream",
                "title": "File",
                "description": "the media file",
            },
            TYPE_FIELD: {
                "type": "string",
                "title": "Analysis Type",
                "description": "auto, basic, image or audio",
                "default": "auto",
            },
            REF_FIELD: {
                "anyOf": [{"type": "string", "maxLength": CLIENT_REF_MAX_CHARS}, {"type": "null"}],
                "title": "Client Ref",
                "description": "your reference (printable text)",
            },
        },
    }
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": form}},
        }
    }
