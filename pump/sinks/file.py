"""``file`` sink: JSON Lines or CSV files, rotated by size and by hour.

Formats
-------
``jsonl``
    One line per record: the record's own fields as a JSON object plus its
    stable id under ``id_key`` (default ``"_id"``).
``csv``
    A header row, then one row per record with the columns in ``csv_columns``
    (default: the seed's analytics fields ``timestamp, username, effect,
    conclusion, request, policies, deciders`` and ``_id``). A missing field is
    an empty cell; non-scalar values (lists, maps) are JSON-encoded; booleans
    are ``true``/``false``; times are ISO 8601 in UTC with ``Z``.
    ``csv_style: iam`` writes iam-pump's csv files instead: ``path`` is the
    directory (iam's ``csv_dir``), one file per UTC hour named like iam-pump's
    (``2026-December-1-21.csv``), its header, its cell text and Go's quoting
    (``pump/sinks/_csv.py``); workers of the sink append to the hour's file.

A record that cannot be encoded (JSON refuses a value nested too deep) is
left out and named in ``PermanentError.rejected`` after the others are
written, so the pump dead-letters it alone.

Paths and rotation
------------------
Without rotation ``path`` is one file, appended to (created with
``file_mode``, default 0600; its directory is created 0700 if missing). When
something else renames the file (logrotate), the sink notices at the next
batch and opens a new one at ``path``.

With ``max_bytes > 0`` or ``rotate_hourly: true``, ``path`` is a directory
and files are named ``<prefix>-<UTC start time %Y%m%dT%H%M%SZ>-<nnnn>.<ext>``
(``nnnn`` counts files started within the same second), so names sort in
the order the files were written. Each file is created exclusively
(``O_EXCL``): several workers of one sink rotating into the same directory
each write their own files. Without rotation, workers sharing one file append
whole batches with single ``O_APPEND`` writes; for CSV give such a sink
``workers: 1`` (two processes creating the file could both write a header).
A file is closed and a new one started when the next record would take it
past ``max_bytes`` (a single record larger than that gets a file of its
own), and when the UTC hour changes.

Writing: a batch is encoded in one pass over its columns (``batch.ids()``,
``batch.datas()``; ``_encode.json_lines_of``: one ``orjson.dumps`` per
record, the id merged in, the newline appended by orjson; done per stream
entry as soon as the worker decodes it, ``Sink.encode``) and appended
with one ``write`` of the joined buffer (several when ``max_bytes`` rotates
inside the batch, one per record with ``fsync: always``). Torn-line repair
and the health probe live in ``_files.py``.

Durability (``fsync``)
----------------------
``batch`` (default): one ``fsync`` before ``write`` returns, so a batch the
pump acknowledged is on disk. ``always``: ``fsync`` after every record.
``never``: left to the OS; a process crash loses nothing, a power failure
can lose acknowledged batches.

Torn lines: a worker killed in the middle of a write can leave a partial
last line. Writers therefore hold an ``flock`` on the file while they append
(the whole time for a rotated file of their own, per batch for a shared
file), and before appending, a writer that finds the file not ending in a
newline cuts the partial line (it belonged to a batch that was never
acknowledged, so the pump delivers it again) and logs how many bytes it
removed. At ``open``, rotated files in the directory that no live writer
holds are repaired the same way.

Redelivery: a file cannot tell what it already holds, so a batch redelivered
after a crash is appended again (``deduplicates = False``); readers drop
duplicates by the id key. Local disk writes are not interruptible: the
deadline is checked before each batch and, with ``fsync: always``, before
each record.

Outages: a full file system or quota (``ENOSPC``, ``EDQUOT``) raises
``OutageError``: the pump holds the batch and retries; the health check
writes and ``fsync``s a small probe file (``.collector-probe-<pid>``, removed
at once) in the directory, as a write would.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from collector.common.log import get_logger

from . import _csv
from ._base import (
    Batch,
    PermanentError,
    Records,
    RetryableError,
    Sink,
    SinkConfig,
    Verdict,
    register,
)
from ._encode import json_lines_of
from ._files import fsync_dir, repair_abandoned, repair_tail, utc_hour, write_error, write_probe

log = get_logger(__name__)

DEFAULT_CSV_COLUMNS = (
    "timestamp", "username", "effect", "conclusion", "request", "policies", "deciders", "_id",
)


class FileConfig(SinkConfig):
    """``meta`` of a ``file`` sink."""

    path: str = Field(min_length=1, description="a file, or a directory when rotating")
    format: Literal["jsonl", "csv"] = "jsonl"
    id_key: str = Field(default="_id", min_length=1,
                        description="JSON Lines key (or CSV column) holding the record id")
    csv_columns: tuple[str, ...] = Field(default=DEFAULT_CSV_COLUMNS, min_length=1)
    max_bytes: int = Field(default=0, ge=0, description="rotate past this size; 0 = never")
    rotate_hourly: bool = False
    fsync: Literal["always", "batch", "never"] = "batch"
    file_mode: int = Field(default=0o600, ge=0, le=0o777)
    filename_prefix: str = Field(default="analytics", min_length=1)
    csv_style: Literal["collector", "iam"] = "collector"  # see the module docstring

    @field_validator("filename_prefix")
    @classmethod
    def _no_slash(cls, value: str) -> str:
        if "/" in value:
            raise ValueError(f"filename_prefix {value!r} must not contain '/'")
        return value

    @model_validator(mode="after")
    def _iam_style(self) -> FileConfig:
        if self.csv_style == "iam" and (self.format != "csv" or self.rotating):
            raise ValueError("csv_style iam needs format csv and names its own hourly files: "
                             "no max_bytes or rotate_hourly")
        return self

    @property
    def rotating(self) -> bool:
        return self.max_bytes > 0 or self.rotate_hourly

    @property
    def directory(self) -> Path:
        """Where the files are."""
        if self.rotating or self.csv_style == "iam":
            return Path(self.path)
        return Path(self.path).parent


@register
class FileSink(Sink):
    """Appends records to local files (see the module docstring)."""

    name = "file"
    Config = FileConfig
    deduplicates = False

    def __init__(self, config: FileConfig) -> None:  # type: ignore[override]
        super().__init__(config)
        self.cfg = config
        self._fd: int | None = None
        self._file_path: Path | None = None
        self._size = 0
        self._hour: int | None = None
        self._inode: tuple[int, int] | None = None

    # life cycle
    def open(self) -> None:
        try:
            if self.cfg.rotating:
                repair_abandoned(Path(self.cfg.path), self.cfg.filename_prefix)
            self._open_file()
        except OSError as exc:
            raise RetryableError(f"file sink cannot open {self.cfg.path!r}: {exc}") from exc

    def close(self, timeout_s: float = 5.0) -> None:
        self._close_file()

    def health_check(self, *, deadline: float) -> None:
        """Write and fsync a probe file where the records go, then remove it."""
        self.time_left(deadline)
        write_probe(self.cfg.directory)
        if self._fd is not None:
            try:
                os.fstat(self._fd)
            except OSError as exc:
                raise RetryableError(f"file sink lost its file: {exc}") from exc

    # writing
    def write(self, batch: Batch, *, deadline: float) -> Verdict:
        self.time_left(deadline)
        if not len(batch):
            return Verdict.OK
        lines, rejected = self._lines(batch)
        if lines:
            self._append(lines, deadline)
        if rejected:
            raise PermanentError.for_records("file", rejected, "written")
        return Verdict.OK

    def _append(self, lines: list[bytes], deadline: float) -> None:
        shared = not self.cfg.rotating
        locked = False
        try:
            self._ensure_current()
            if shared:
                # Other workers may append to the same file: take it for this batch.
                fcntl.flock(self._fd, fcntl.LOCK_EX)  # type: ignore[arg-type]
                locked = True
                self._size = self._prepare_shared()
            if self.cfg.fsync == "always":
                for line in lines:
                    self.time_left(deadline)
                    self._rotate_if_full(len(line))
                    self._write_all(line)
                    os.fsync(self._fd)  # type: ignore[arg-type]
            elif self.cfg.max_bytes:
                pending: list[bytes] = []
                pending_bytes = 0
                for line in lines:
                    if self._size + pending_bytes + len(line) > self.cfg.max_bytes and (
                            self._size or pending):
                        self._write_all(b"".join(pending))
                        pending, pending_bytes = [], 0
                        self._rotate_if_full(len(line))
                    pending.append(line)
                    pending_bytes += len(line)
                self._write_all(b"".join(pending))
            else:
                self._write_all(b"".join(lines))
            if self.cfg.fsync == "batch":
                os.fsync(self._fd)  # type: ignore[arg-type]
        except OSError as exc:
            self._close_file()  # reopen (and re-check the path) on the next batch
            raise write_error(f"file sink cannot write {self._describe()}", exc) from exc
        finally:
            if locked and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _prepare_shared(self) -> int:
        """Under the lock: cut a torn last line, write the CSV header if empty; the size."""
        assert self._fd is not None
        size = repair_tail(self._fd, self._file_path)
        if self.cfg.format == "csv" and size == 0:
            data = self._csv_header()
            os.write(self._fd, data)
            size = len(data)
        return size

    def _csv_header(self) -> bytes:
        if self.cfg.csv_style == "iam":
            return _csv.iam_header()
        return _csv.collector_header(self.cfg.csv_columns)

    def _rotate_if_full(self, next_bytes: int) -> None:
        limit = self.cfg.max_bytes
        if limit and self._size and self._size + next_bytes > limit:
            self._rotate()

    def encode(self, records: Records) -> list[bytes] | None:
        """An entry's JSON Lines as soon as it is decoded (``Sink.encode``); None for
        CSV, and for an entry with a record JSON refuses (``write`` names it)."""
        if self.cfg.format != "jsonl":
            return None
        lines, rejected = json_lines_of(records.ids(), records.data_list(), self.cfg.id_key)
        return None if rejected else lines

    def _lines(self, batch: Batch) -> tuple[list[bytes], dict[str, str]]:
        """One encoded line per record, and the records that cannot be encoded."""
        if self.cfg.format == "jsonl":
            lines = batch.encoded()
            if lines is not None:
                return lines, {}
            return json_lines_of(batch.ids(), batch.datas(), self.cfg.id_key)
        if self.cfg.csv_style == "iam":
            return _csv.iam_lines(batch.records), {}
        return _csv.collector_lines(batch.records, self.cfg.csv_columns, self.cfg.id_key), {}

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)  # type: ignore[arg-type]
            view = view[n:]
            self._size += n

    # files
    def _ensure_current(self) -> None:
        if self._fd is None:
            self._open_file()
            return
        if self.cfg.rotating:
            if self.cfg.rotate_hourly and utc_hour() != self._hour:
                self._rotate()
        else:
            target = self._shared_path()
            try:
                st = os.stat(target)
                moved = (st.st_dev, st.st_ino) != self._inode
            except FileNotFoundError:
                moved = True
            if moved:
                if target == self._file_path:
                    log.info("The file was moved away; opening a new one.", path=target)
                self._close_file()
                self._open_file()

    def _shared_path(self) -> Path:
        """The file every worker of the sink appends to now (not rotating)."""
        if self.cfg.csv_style == "iam":
            return Path(self.cfg.path) / _csv.iam_file_name()
        return Path(self.cfg.path)

    def _rotate(self) -> None:
        self._close_file()
        self._open_file()

    def _open_file(self) -> None:
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        if self.cfg.rotating:
            directory = Path(self.cfg.path)
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, path = self._create_rotated(directory, flags)
        else:
            path = self._shared_path()
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, flags, self.cfg.file_mode)
        st = os.fstat(fd)
        self._fd, self._file_path, self._size = fd, path, st.st_size
        self._inode = (st.st_dev, st.st_ino)
        self._hour = utc_hour()
        if self.cfg.fsync != "never":
            fsync_dir(path.parent)
        if self.cfg.rotating:
            # A file of our own: hold it for its whole life (see "Torn lines").
            fcntl.flock(fd, fcntl.LOCK_EX)
        if self.cfg.rotating and self.cfg.format == "csv" and st.st_size == 0:
            self._write_all(self._csv_header())

    def _create_rotated(self, directory: Path, flags: int) -> tuple[int, Path]:
        """A new file of its own (O_EXCL), so several workers never share one."""
        ext = "jsonl" if self.cfg.format == "jsonl" else "csv"
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        n = 0
        while True:
            path = directory / f"{self.cfg.filename_prefix}-{stamp}-{n:04d}.{ext}"
            try:
                return os.open(path, flags | os.O_EXCL, self.cfg.file_mode), path
            except FileExistsError:
                n += 1

    def _close_file(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self.cfg.fsync != "never":
                os.fsync(fd)
        except OSError as exc:
            log.warning("fsync on close failed.", path=self._file_path, error=exc)
        finally:
            os.close(fd)

    def _describe(self) -> str:
        return repr(str(self._file_path or self.cfg.path))

    @property
    def current_path(self) -> Path | None:
        """The file being written (None before open and after close)."""
        return self._file_path if self._fd is not None else None
