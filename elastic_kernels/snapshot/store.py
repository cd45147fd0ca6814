"""Where sealed snapshots are kept: one object per kernel id under a directory-like URL.

``open_store(url)`` takes a plain path or a ``file://`` URL (:class:`LocalStore`, standard
library only), or any other URL that fsspec understands (``s3://bucket/prefix``,
``gs://...``, ``memory://...``) when fsspec is installed (:class:`FsspecStore`; the
``snapshot-fsspec`` extra). Every store offers ``put``, ``get``, ``delete`` and ``exists``,
and for snapshots too big to hold in memory ``open_write`` (a :class:`SnapshotWriter`:
``write`` pieces, then ``commit`` or ``abort``) and ``open_read`` (a binary file).

A gateway killed in the middle of a save leaves its temporary object behind (nothing else can
remove it: its name is random). ``remove_unfinished(older_than)`` deletes temporary objects
older than that many seconds, longer than any save may take; the cull cron calls it.

Keys are kernel ids, checked against a strict pattern (letters, digits, ``.``, ``_``, ``-``;
not starting with a dot) before any path is built, so no key can climb out of the store's
directory or name a hidden temporary file. Writes are atomic: the bytes go to a temporary
object beside the final one, which is then renamed over it, so a reader sees the old snapshot
or the new one, never half of one. The methods block (file or network I/O): the gateway calls
them in a thread (``asyncio.to_thread``).

The store holds only sealed containers (``format.seal``): whoever can write it cannot make
the gateway restore what it did not sign.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import typing as t
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import unquote, urlparse

from .collect import write_atomically

#: Kernel ids are UUIDs; this also admits other simple names (tests, other id schemes).
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SUFFIX = ".eksnap"
#: Every temporary object's name starts so (a kernel id never does: see ``object_name``).
_TEMPORARY = ".tmp-"


class SnapshotStore(Protocol):
    """A place for sealed snapshots, by kernel id."""

    def put(self, kernel_id: str, data: bytes) -> None: ...

    def get(self, kernel_id: str) -> bytes | None: ...

    def delete(self, kernel_id: str) -> bool: ...

    def exists(self, kernel_id: str) -> bool: ...

    def open_write(self, kernel_id: str) -> SnapshotWriter: ...

    def open_read(self, kernel_id: str) -> IO[bytes] | None: ...

    def remove_unfinished(self, older_than: float) -> list[str]: ...


class SnapshotWriter(Protocol):
    """A snapshot being written in pieces: invisible under its name until :meth:`commit`."""

    def write(self, data: bytes) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


def object_name(kernel_id: str) -> str:
    """The object's name for a kernel id, or ValueError for a key that could escape the store."""
    if not isinstance(kernel_id, str) or not _KEY.fullmatch(kernel_id) or ".." in kernel_id:
        raise ValueError("a snapshot key must be a kernel id (letters, digits, '.', '_', '-')")
    return kernel_id + SUFFIX


class LocalStore:
    """Snapshots as files ``<kernel id>.eksnap`` in a directory (created, mode 0700)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def _path(self, kernel_id: str) -> Path:
        return self.directory / object_name(kernel_id)

    def put(self, kernel_id: str, data: bytes) -> None:
        """Write atomically: a private temporary file, fsync, rename, fsync the directory."""
        path = self._path(kernel_id)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(str(path), data, prefix=_TEMPORARY)
        _sync_directory(str(self.directory))

    def get(self, kernel_id: str) -> bytes | None:
        """The snapshot's bytes, or None when there is none."""
        try:
            return self._path(kernel_id).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, kernel_id: str) -> bool:
        """Remove the snapshot; whether there was one."""
        try:
            self._path(kernel_id).unlink()
        except FileNotFoundError:
            return False
        return True

    def exists(self, kernel_id: str) -> bool:
        return self._path(kernel_id).is_file()

    def open_write(self, kernel_id: str) -> _LocalWriter:
        """A private temporary file beside the snapshot, renamed over it by ``commit``."""
        path = self._path(kernel_id)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TEMPORARY, dir=self.directory)
        return _LocalWriter(os.fdopen(fd, "wb"), tmp, str(path))

    def open_read(self, kernel_id: str) -> IO[bytes] | None:
        try:
            return self._path(kernel_id).open("rb")
        except FileNotFoundError:
            return None

    def remove_unfinished(self, older_than: float) -> list[str]:
        """Delete temporary files last written over ``older_than`` seconds ago; their names."""
        cutoff = time.time() - older_than
        removed = []
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        for entry in entries:
            if not entry.name.startswith(_TEMPORARY) or not entry.is_file(follow_symlinks=False):
                continue
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed.append(entry.name)
            except FileNotFoundError:
                continue  # committed or aborted meanwhile
        return removed


class _LocalWriter:
    def __init__(self, file: IO[bytes], tmp: str, path: str) -> None:
        self._file = file
        self._tmp = tmp
        self._path = path

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def commit(self) -> None:
        """fsync, rename over the snapshot, fsync the directory (as ``put``)."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self._path)
        except BaseException:
            self.abort()
            raise
        _sync_directory(os.path.dirname(self._path))

    def abort(self) -> None:
        self._file.close()
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass


def _sync_directory(directory: str) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some filesystems cannot sync a directory; the rename is still atomic
    finally:
        os.close(dir_fd)


class FsspecStore:
    """Snapshots as objects ``<kernel id>.eksnap`` under an fsspec URL.

    The atomic write is a put of a temporary object and a move; on object stores, where a
    single put is already atomic, the move is a server-side copy and a delete.
    """

    def __init__(self, url: str, **storage_options: Any) -> None:
        try:
            import fsspec  # optional: the snapshot-fsspec extra
        except ImportError:
            raise ValueError(f"snapshot store {url.split('://')[0]}:// needs fsspec "
                             "(pip install 'elastic-kernels[snapshot-fsspec]')") from None
        self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.root = str(root).rstrip("/")

    def _path(self, kernel_id: str) -> str:
        return f"{self.root}/{object_name(kernel_id)}"

    def put(self, kernel_id: str, data: bytes) -> None:
        path = self._path(kernel_id)
        tmp = f"{self.root}/{_TEMPORARY}{uuid.uuid4().hex}{SUFFIX}"
        self.fs.makedirs(self.root, exist_ok=True)
        self.fs.pipe_file(tmp, data)
        try:
            self.fs.mv(tmp, path)
        except BaseException:
            try:
                self.fs.rm(tmp)
            except Exception:
                pass
            raise

    def get(self, kernel_id: str) -> bytes | None:
        try:
            data = self.fs.cat_file(self._path(kernel_id))
        except FileNotFoundError:
            return None
        return bytes(data)

    def delete(self, kernel_id: str) -> bool:
        path = self._path(kernel_id)
        try:
            self.fs.rm(path)
        except FileNotFoundError:
            return False
        return True

    def exists(self, kernel_id: str) -> bool:
        return bool(self.fs.exists(self._path(kernel_id)))

    def open_write(self, kernel_id: str) -> _FsspecWriter:
        """A temporary object written as a stream (multipart on object stores), moved over
        the snapshot by ``commit``."""
        path = self._path(kernel_id)
        tmp = f"{self.root}/{_TEMPORARY}{uuid.uuid4().hex}{SUFFIX}"
        self.fs.makedirs(self.root, exist_ok=True)
        return _FsspecWriter(self.fs, self.fs.open(tmp, "wb"), tmp, path)

    def open_read(self, kernel_id: str) -> IO[bytes] | None:
        try:
            return t.cast(IO[bytes], self.fs.open(self._path(kernel_id), "rb"))
        except FileNotFoundError:
            return None

    def remove_unfinished(self, older_than: float) -> list[str]:
        """Delete temporary objects older than ``older_than`` seconds; their names. An object
        whose listing carries no time (some filesystems) is left alone: its age is unknown."""
        cutoff = time.time() - older_than
        try:
            listing = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return []
        removed = []
        for info in listing:
            name = str(info.get("name", "")).rstrip("/").rsplit("/", 1)[-1]
            if not name.startswith(_TEMPORARY) or info.get("type") == "directory":
                continue
            written = _listed_time(info)
            if written is None or written >= cutoff:
                continue
            try:
                self.fs.rm(f"{self.root}/{name}")
            except FileNotFoundError:
                continue
            removed.append(name)
        return removed


def _listed_time(info: dict[str, Any]) -> float | None:
    """When an fsspec listing says an object was last written, as a POSIX time."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
        if isinstance(value, datetime):  # a time without a zone is UTC, as object stores say
            return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    return None


class _FsspecWriter:
    def __init__(self, fs: Any, file: Any, tmp: str, path: str) -> None:
        self._fs = fs
        self._file = file
        self._tmp = tmp
        self._path = path

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def commit(self) -> None:
        try:
            self._file.close()
            self._fs.mv(self._tmp, self._path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        try:
            self._file.close()
        except Exception:
            pass
        try:
            self._fs.rm(self._tmp)
        except Exception:
            pass  # not written yet, or already moved


def open_store(url: str, **storage_options: Any) -> LocalStore | FsspecStore:
    """The store at ``url``: a path or ``file://`` URL, else an fsspec URL."""
    if "://" not in url:
        return LocalStore(url)
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError("a file:// snapshot store must be local (file:///path)")
        return LocalStore(unquote(parsed.path))
    return FsspecStore(url, **storage_options)
