"""The archive reader on a folder and on S3 (moto's server)."""

from __future__ import annotations

import gzip
from datetime import date

import boto3
import pytest

from enrollment_pipeline.lib.clients.archive import Archive, ArchiveTailError
from enrollment_pipeline.lib.clients.aws import AwsConfig

pytestmark = pytest.mark.integration

DAY = date(2024, 3, 5)
PLAIN = b'{"event_id": "a"}\n\n{"event_id": "b"}\n'
GZIPPED = gzip.compress(b'{"event_id": "c"}\n{"event_id": "d"}\n')
MANY = [f'{{"event_id": "e{i}"}}'.encode() for i in range(5000)]
# A gzip cut short: its tail (and CRC trailer) is missing.
TRUNCATED = gzip.compress(b"\n".join(MANY) + b"\n")[:-200]


@pytest.fixture
def s3_archive(moto_endpoint, aws_credentials) -> Archive:
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="history")
    s3.put_object(Bucket="history", Key="enrollment/2024-03-05.jsonl", Body=PLAIN)
    s3.put_object(Bucket="history", Key="enrollment/2024-03-05.jsonl.gz", Body=GZIPPED)
    s3.put_object(Bucket="history", Key="enrollment/2024-03-06.jsonl.gz", Body=TRUNCATED)
    return Archive(
        root="s3://history/enrollment",
        aws=AwsConfig(region_name="us-east-1", endpoint_url=moto_endpoint),
    )


def _read_all(archive: Archive, day: date) -> list[tuple[str, int, bytes]]:
    return [
        (ln.file, ln.line, ln.raw) for f in archive.files_for_day(day) for ln in archive.lines(f)
    ]


def test_s3_day_reads_both_files_with_line_numbers(s3_archive: Archive):
    assert s3_archive.files_for_day(DAY) == ["2024-03-05.jsonl", "2024-03-05.jsonl.gz"]
    assert _read_all(s3_archive, DAY) == [
        ("2024-03-05.jsonl", 1, b'{"event_id": "a"}'),
        ("2024-03-05.jsonl", 3, b'{"event_id": "b"}'),
        ("2024-03-05.jsonl.gz", 1, b'{"event_id": "c"}'),
        ("2024-03-05.jsonl.gz", 2, b'{"event_id": "d"}'),
    ]


def test_s3_day_without_file_is_empty(s3_archive: Archive):
    assert s3_archive.files_for_day(date(2024, 3, 7)) == []


def test_corrupt_gzip_tail_raises_after_the_good_lines(s3_archive: Archive):
    seen = []
    with pytest.raises(ArchiveTailError) as caught:
        for line in s3_archive.lines("2024-03-06.jsonl.gz"):
            seen.append(line.raw)
    assert caught.value.file == "2024-03-06.jsonl.gz"
    assert 0 < len(seen) < len(MANY)
    assert seen == MANY[: len(seen)]
    assert caught.value.line == len(seen) + 1


def test_folder_archive(tmp_path):
    (tmp_path / "2024-03-05.jsonl").write_bytes(PLAIN)
    (tmp_path / "2024-03-05.jsonl.gz").write_bytes(GZIPPED)
    archive = Archive(root=str(tmp_path))
    assert [raw for _, _, raw in _read_all(archive, DAY)] == [
        b'{"event_id": "a"}',
        b'{"event_id": "b"}',
        b'{"event_id": "c"}',
        b'{"event_id": "d"}',
    ]
    assert archive.files_for_day(date(2024, 3, 6)) == []


def test_a_missing_archive_is_named_before_anything_is_read(tmp_path, s3_archive: Archive):
    from dataclasses import replace

    from enrollment_pipeline.lib.clients.archive import ArchiveMissingError

    Archive(root=str(tmp_path)).check_exists()  # an empty folder is an archive without days
    s3_archive.check_exists()
    for root, says in [
        (str(tmp_path / "nope"), "does not exist"),
        (str(tmp_path / "file.jsonl"), "is a file"),
        ("s3://history/elsewhere", "holds no file"),
        ("s3://no-such-bucket/enrollment", "NoSuchBucket"),
    ]:
        (tmp_path / "file.jsonl").write_bytes(PLAIN)
        archive = replace(s3_archive, root=root) if root.startswith("s3") else Archive(root=root)
        with pytest.raises(ArchiveMissingError, match=says) as raised:
            archive.check_exists()
        assert str(raised.value).startswith(f"ARCHIVE_ROOT {root}")
