"""The historic archive (Contract 5): a folder or `s3://bucket/prefix`, one file per day.

`{root}/{YYYY-MM-DD}.jsonl` and/or `{root}/{YYYY-MM-DD}.jsonl.gz`; both are read when both
exist. Lines come back as raw bytes with their 1-based number: parsing and dead-lettering are
the caller's, and a corrupt gzip tail ends the file with an `ArchiveTailError` after the lines
before it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, BinaryIO

from botocore.exceptions import ClientError

from enrollment_pipeline.lib.clients.aws import AwsConfig, boto3_client
from enrollment_pipeline.settings import ArchiveSettings

SUFFIXES = (".jsonl", ".jsonl.gz")


@dataclass(frozen=True)
class ArchiveLine:
    file: str  # as shown in dead letters: the name under the root
    line: int  # 1-based
    raw: bytes  # the line; of a line longer than the limit, only its first bytes
    size: int  # the line's length in bytes
    sha256: str | None = None  # of the whole line, when it was longer than the limit

    @property
    def oversized(self) -> bool:
        return self.size > len(self.raw)


class ArchiveTailError(RuntimeError):
    """A gzip member ended early or is corrupt; the lines before it were returned."""

    def __init__(self, file: str, line: int, detail: str) -> None:
        super().__init__(f"{file}: unreadable after line {line - 1}: {detail}")
        self.file, self.line, self.detail = file, line, detail


class ArchiveMissingError(RuntimeError):
    """ARCHIVE_ROOT names no folder, bucket or file: a backfill would read nothing at all."""


@dataclass(frozen=True)
class Archive:
    """ARCHIVE_ROOT (a folder, or s3:// with AWS_REGION / AWS_ENDPOINT_URL)."""

    root: str
    aws: AwsConfig = field(default_factory=AwsConfig)

    @classmethod
    def from_settings(cls, settings: ArchiveSettings) -> Archive:
        return cls(root=settings.archive_root, aws=AwsConfig.from_settings(settings))

    @property
    def is_s3(self) -> bool:
        return self.root.startswith("s3://")

    def _bucket_prefix(self) -> tuple[str, str]:
        bucket, _, prefix = self.root.removeprefix("s3://").partition("/")
        return bucket, prefix.strip("/")

    def _s3(self) -> Any:
        # A stalled S3 read fails the run instead of waiting (botocore waits 60 s by default).
        return boto3_client(self.aws, "s3", connect_timeout=10, read_timeout=30)

    def check_exists(self) -> None:
        """Fail, naming ARCHIVE_ROOT, when the folder is missing (or the bucket, or every file
        under the prefix): else a backfill would succeed with zero files."""
        fix = "set ARCHIVE_ROOT to the archive's folder or s3://bucket/prefix"
        if not self.is_s3:
            path = Path(self.root)
            if not path.is_dir():
                what = "is a file, not a folder" if path.exists() else "does not exist"
                raise ArchiveMissingError(f"ARCHIVE_ROOT {self.root} {what}; {fix}")
            return
        bucket, prefix = self._bucket_prefix()
        try:
            found = self._s3().list_objects_v2(
                Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise ArchiveMissingError(
                f"ARCHIVE_ROOT {self.root}: S3 answered {code}; {fix}, and check AWS_REGION, "
                "AWS_ENDPOINT_URL and the AWS credentials"
            ) from None
        if not found.get("KeyCount"):
            raise ArchiveMissingError(f"ARCHIVE_ROOT {self.root} holds no file; {fix}")

    def files_for_day(self, day: date) -> list[str]:
        """Names of the day's files that exist (none is an empty day, not an error)."""
        names = [f"{day.isoformat()}{suffix}" for suffix in SUFFIXES]
        if not self.is_s3:
            return [n for n in names if (Path(self.root) / n).is_file()]
        bucket, prefix = self._bucket_prefix()
        found = []
        client = self._s3()
        for name in names:
            key = f"{prefix}/{name}" if prefix else name
            try:
                client.head_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    continue
                raise
            found.append(name)
        return found

    def open(self, name: str) -> BinaryIO:
        """The file as a stream: read in chunks, never loaded whole (a day may be 1 GB)."""
        if not self.is_s3:
            return (Path(self.root) / name).open("rb")
        bucket, prefix = self._bucket_prefix()
        key = f"{prefix}/{name}" if prefix else name
        body = self._s3().get_object(Bucket=bucket, Key=key)["Body"]
        return io.BufferedReader(_Readable(body), buffer_size=1 << 20)

    def lines(self, name: str, *, max_line_bytes: int = 1_000_000) -> Iterator[ArchiveLine]:
        """The file's non-empty lines, streamed; a corrupt gzip tail raises after the good
        lines. Memory stays at one chunk and `max_line_bytes` whatever the file holds: a
        longer line (a newline-free stream, say) comes back as its first bytes, its size and
        its SHA-256, the rest read and dropped."""
        counter = _LineCounter()
        with self.open(name) as raw_stream:
            stream: BinaryIO = (
                gzip.GzipFile(fileobj=raw_stream)  # type: ignore[assignment]
                if name.endswith(".gz")
                else raw_stream
            )
            try:
                for number, raw, size, digest in _bounded_lines(stream, max_line_bytes, counter):
                    if size > len(raw):
                        yield ArchiveLine(name, number, raw, size, digest)
                        continue
                    stripped = raw.rstrip(b"\r\n")
                    if stripped.strip():
                        yield ArchiveLine(name, number, stripped, len(stripped))
            except (EOFError, OSError, zlib.error) as exc:
                raise ArchiveTailError(
                    name, counter.complete + 1, f"{type(exc).__name__}: {exc}"
                ) from exc


class _LineCounter:
    """How many lines were read whole (where a corrupt tail starts)."""

    complete = 0


_CHUNK = 1 << 20


def _bounded_lines(
    stream: BinaryIO, limit: int, counter: _LineCounter
) -> Iterator[tuple[int, bytes, int, str | None]]:
    """(line number, bytes, size, sha256 of an over-long line) for each line of `stream`,
    holding at most one chunk and `limit` bytes of a line in memory."""
    kept = bytearray()
    size = 0
    digest: Any = None  # hashing an over-long line as it streams past
    number = 0
    # read1: what is there now, so the lines before a corrupt gzip tail still come out.
    read = getattr(stream, "read1", stream.read)
    while True:
        chunk = read(_CHUNK)
        if not chunk:
            break
        start = 0
        while start <= len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            size += len(piece)
            if digest is not None:
                digest.update(piece)
            elif len(kept) + len(piece) > limit:
                digest = hashlib.sha256(kept)
                digest.update(piece)
                kept += piece[: limit - len(kept)]
            else:
                kept += piece
            if end < 0:
                break
            number += 1
            counter.complete = number
            yield number, bytes(kept), size, digest.hexdigest() if digest else None
            kept, size, digest = bytearray(), 0, None
            start = end + 1
    if size or kept:
        number += 1
        counter.complete = number
        yield number, bytes(kept), size, digest.hexdigest() if digest else None


class _Readable(io.RawIOBase):
    """An S3 body as a raw stream, so gzip and line buffering read it chunk by chunk."""

    def __init__(self, body: Any) -> None:
        self.body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self.body.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        self.body.close()
        super().close()
