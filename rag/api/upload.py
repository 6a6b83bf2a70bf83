"""Receiving an upload: a size-limited multipart body streamed straight into the blob store.

The request body is parsed as it arrives (python-multipart's push parser): each file part is
written block by block into its own temporary blob file, hashed and counted on the way, and only
its first bytes are kept in memory for content detection; past ``max_bytes`` the upload stops
with 413 before the rest is read. So an upload of any size holds about one block (1 MiB) per
file in memory, never the file, and is written to disk once. The route detects each file's type
(from its head, and a ZIP's central directory from the temporary file), then commits the files
into the content-addressed store or, on any error, removes them.
"""

from __future__ import annotations

import codecs
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import python_multipart
from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from ingest.blobs import BlobStore, BlobWriter
from rag.core.collections import check_collection
from rag.core.errors import InvalidRequest, PayloadTooLarge

MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 16
MAX_METADATA_DEPTH = 8

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "One part per document.",
                        },
                        "collection": {"type": "string", "default": "default"},
                        "metadata": {
                            "type": "string",
                            "description": "A JSON object, kept with each document.",
                        },
                    },
                }
            }
        },
    }
}
"""The OpenAPI request body of an upload (the route reads the stream itself, so FastAPI cannot
infer it)."""

UNCHANGED = {"description": "Every file was in the collection already: the existing documents"}


@dataclass
class UploadedFile:
    filename: str
    declared_type: str | None
    writer: BlobWriter


@dataclass
class UploadForm:
    collection: str
    metadata: dict[str, Any]
    files: list[UploadedFile]


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    content_type: str | None = None
    data: bytearray = field(default_factory=bytearray)
    writer: BlobWriter | None = None


class _StreamingForm:
    """The callbacks of python-multipart's parser; file data is queued for async writes."""

    def __init__(self, charset: str, max_files: int) -> None:
        self.charset = charset
        self.max_files = max_files
        self.fields: list[tuple[str, str]] = []
        self.parts: list[_Part] = []  # file parts, in order
        self.pending: list[tuple[_Part, bytes]] = []  # file data to write, in order
        self.opened: list[_Part] = []  # file parts whose writer is still to be opened
        self._part = _Part()
        self._headers: dict[bytes, bytes] = {}
        self._header_name = b""
        self._header_value = b""

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def _decode(self, raw: bytes) -> str:
        try:
            return raw.decode(self.charset)
        except UnicodeDecodeError:
            return raw.decode("latin-1")

    def on_part_begin(self) -> None:
        self._part = _Part()
        self._headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise InvalidRequest('a multipart part has no Content-Disposition "name"')
        self._part.name = self._decode(options[b"name"])
        if b"filename" in options:
            if len(self.parts) >= self.max_files:
                raise InvalidRequest(f"too many files: at most {self.max_files} per upload")
            self._part.filename = self._decode(options[b"filename"]) or "upload"
            declared = self._headers.get(b"content-type")
            self._part.content_type = self._decode(declared) if declared else None
            self.parts.append(self._part)
            self.opened.append(self._part)
        elif len(self.fields) >= MAX_FIELDS:
            raise InvalidRequest(f"too many form fields: at most {MAX_FIELDS}")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part.filename is not None:
            self.pending.append((self._part, bytes(data[start:end])))
            return
        if len(self._part.data) + end - start > MAX_FIELD_BYTES:
            raise InvalidRequest(f"a form field is longer than {MAX_FIELD_BYTES} bytes")
        self._part.data.extend(data[start:end])

    def on_part_end(self) -> None:
        if self._part.filename is None:
            self.fields.append((self._part.name, self._decode(bytes(self._part.data))))


@asynccontextmanager
async def read_upload(
    request: Request,
    blobs: BlobStore,
    *,
    max_bytes: int,
    max_files: int,
    head_bytes: int,
    max_metadata_bytes: int = 4096,
) -> AsyncIterator[UploadForm]:
    """The parsed upload, its files in temporary blob files; those not committed by the end of
    the block (any error included) are removed."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"upload of {int(declared)} bytes exceeds the limit of {max_bytes}")
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InvalidRequest("uploads must be multipart/form-data with one or more 'file' parts")
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidRequest("malformed multipart body: no boundary")
    charset = params.get(b"charset", b"utf-8").decode("latin-1")
    with contextlib.suppress(LookupError):
        charset = codecs.lookup(charset).name
    form = _StreamingForm(charset, max_files)
    parser = python_multipart.MultipartParser(boundary, form.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise PayloadTooLarge(f"upload exceeds the limit of {max_bytes} bytes")
            try:
                parser.write(chunk)
            except FormParserError as exc:
                raise InvalidRequest(f"malformed multipart body: {exc}") from exc
            await _drain(form, blobs, max_bytes, head_bytes)
        try:
            parser.finalize()
        except FormParserError as exc:
            raise InvalidRequest(f"malformed multipart body: {exc}") from exc
        await _drain(form, blobs, max_bytes, head_bytes)
        for part in form.parts:
            assert part.writer is not None
            await part.writer.finish()
        yield _validated(form, max_metadata_bytes)
    finally:
        for part in form.parts:
            if part.writer is not None:
                await part.writer.discard()  # a no-op for what the route committed


async def _drain(form: _StreamingForm, blobs: BlobStore, max_bytes: int, head_bytes: int) -> None:
    """Open the writers of new file parts and write what the parser queued, in order."""
    for part in form.opened:
        part.writer = await blobs.open_writer(max_bytes, head_bytes=head_bytes)
    form.opened.clear()
    for part, data in form.pending:
        assert part.writer is not None
        await part.writer.write(data)
    form.pending.clear()


def _validated(form: _StreamingForm, max_metadata_bytes: int) -> UploadForm:
    files = [
        UploadedFile(part.filename or "upload", part.content_type, part.writer)
        for part in form.parts
        if part.name == "file" and part.writer is not None
    ]
    if not files:
        raise InvalidRequest("no 'file' part in the upload")
    fields = dict(form.fields)
    collection = check_collection(fields.get("collection") or "default")
    metadata: dict[str, Any] = {}
    raw = fields.get("metadata")
    if raw:
        if len(raw.encode()) > max_metadata_bytes:
            raise InvalidRequest(
                f"metadata is longer than {max_metadata_bytes} bytes", reason="metadata_too_large"
            )
        try:
            metadata = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise InvalidRequest("metadata is not valid JSON") from exc
        if not isinstance(metadata, dict):
            raise InvalidRequest("metadata must be a JSON object")
        if _too_deep(metadata, MAX_METADATA_DEPTH):
            raise InvalidRequest(
                f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels",
                reason="metadata_too_deep",
            )
    return UploadForm(collection, metadata, files)


def _too_deep(value: Any, limit: int) -> bool:
    """Whether a JSON value nests containers deeper than ``limit`` (without recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False
