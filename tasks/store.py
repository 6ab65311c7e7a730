"""The artifacts store: a local folder or any fsspec URL (``s3://bucket/prefix``, ``memory://``, ``gs://...``).

Stages build their files in a local folder and readers open local files, so every store has a *local root*:

* a local folder (a path or ``file://`` URL) is its own local root: nothing is copied;
* a remote store gets a working copy under ``$NODECORE_STORE_CACHE`` (default ``~/.cache/nodecore/stores``),
  one folder per store URL. A file enters it only through :meth:`ArtifactStore.fetch`, which checks the
  SHA-256 its signed manifest records (downloading it when the copy is missing or differs), so nothing in the
  working copy is trusted on its own either.

Writes to a remote store go to a temporary key that is then moved onto the real one, so a reader sees a
whole object or none; a stage writes its manifest last (:mod:`tasks.cache`). Credentials and endpoints come
from fsspec's usual configuration, e.g. ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` and
``FSSPEC_S3_ENDPOINT_URL`` for an S3-compatible server.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import threading
from datetime import datetime
from functools import cached_property
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from nodecore.files import atomic_write, file_digest

CACHE_ENV = "NODECORE_STORE_CACHE"
DEFAULT_CACHE = Path("~/.cache/nodecore/stores")
_PARTIAL = ".partial-"
_log = logging.getLogger(__name__)


def _modified(info: dict) -> float | None:
    """The modification time in an fsspec listing entry, as a POSIX time (s3fs: ``LastModified``; local: ``mtime``;
    memory: ``created``), or None if it names none."""
    for field in ("LastModified", "mtime", "updated", "created"):
        value = info.get(field)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _split(location: str) -> tuple[str, str]:
    """(protocol, rest) of a URL; ``("", location)`` for a plain path.

    Raises:
        ValueError: a chained fsspec URL (``simplecache::s3://...``) or a URL whose protocol is not a plain name:
            never silently taken for a local folder.
    """
    if "::" in location:
        raise ValueError(f"chained fsspec URLs are not supported as the store: {location!r}; give one URL")
    protocol, sep, rest = location.partition("://")
    if not sep:
        return "", location
    if not protocol or not all(c.isalnum() or c in "+-._" for c in protocol):
        raise ValueError(f"{location!r} is neither a folder nor a URL with a protocol name")
    return protocol.lower(), rest


def normalise(location: str) -> str:
    """One spelling per store: an absolute path for a local folder, else the URL without a trailing slash."""
    protocol, rest = _split(location)
    if protocol in ("", "file", "local"):
        return str(Path(rest).expanduser().resolve())
    return f"{protocol}://{rest.rstrip('/')}"


def check_location(location: str) -> None:
    """Check that fsspec knows ``location``'s protocol and can load its driver, before any work starts.

    Raises:
        ValueError: an unknown protocol (naming the known ones) or a driver that is not installed.
    """
    protocol, rest = _split(location)
    if protocol in ("", "file", "local"):
        return
    if protocol not in fsspec.available_protocols():
        raise ValueError(f"unknown store protocol {protocol!r} in {location!r}; give a local folder or a URL "
                         f"with one of: {', '.join(sorted(fsspec.available_protocols()))}")
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as err:
        raise ValueError(f"the store {location!r} needs a driver that is not installed: {err}") from None
    if not rest.strip("/"):
        raise ValueError(f"the store URL {location!r} names no bucket or folder")


class ArtifactStore:
    """Where a run's artifacts live; paths given to its methods are relative to the store's root ("a/b.txt")."""

    def __init__(self, location: str) -> None:
        check_location(location)
        self.location = normalise(location)
        # No listings cache: other hosts write the store, and s3fs answers a read from a cached listing
        # ("not found") without asking the server (seen: a manifest written by another host read as missing).
        self.fs, self.base = fsspec.core.url_to_fs(self.location, use_listings_cache=False)
        self.base = self.base.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.location!r})"

    @cached_property
    def local_root(self) -> Path:
        """The folder where stages build and readers open files (the store itself when it is local)."""
        if self.is_local:
            return Path(self.location)
        cache = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()
        return cache / hashlib.sha256(self.location.encode()).hexdigest()[:16]

    def _key(self, relative: str) -> str:
        """The store key of ``relative``, refusing an absolute path or one with ``..`` (local stores too)."""
        parts = Path(relative).parts
        if not parts or Path(relative).is_absolute() or ".." in parts:
            raise ValueError(f"artifact path {relative!r} is not a relative path inside the store {self.location!r}")
        return f"{self.base}/{Path(relative).as_posix()}"

    def url(self, relative: str) -> str:
        """The store URL of ``relative`` (a ``file://`` URI for a local store), for people and links."""
        if self.is_local:
            return (self.local_root / relative).resolve().as_uri()
        return self.fs.unstrip_protocol(self._key(relative))

    def read_bytes(self, relative: str) -> bytes | None:
        """The bytes stored under ``relative``, or None if there is no such object."""
        try:
            return self.fs.cat_file(self._key(relative))
        except (FileNotFoundError, IsADirectoryError):
            return None

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Store ``data`` under ``relative`` whole or not at all (a temporary key, then a move)."""
        key = self._key(relative)
        if self.is_local:
            with atomic_write(self.local_root / relative) as handle:
                handle.write(data)
            return
        partial = f"{key}{_PARTIAL}{secrets.token_hex(6)}"
        self.fs.pipe_file(partial, data)
        self._move(partial, key)

    def put(self, local: Path, relative: str) -> None:
        """Upload the local file ``local`` to ``relative`` (nothing to do when the store is local)."""
        if self.is_local:
            return
        key = self._key(relative)
        partial = f"{key}{_PARTIAL}{secrets.token_hex(6)}"
        self.fs.put_file(str(local), partial)
        self._move(partial, key)

    def _move(self, partial: str, key: str) -> None:
        try:
            self.fs.mv(partial, key)
        finally:
            if self.fs.exists(partial):  # a failed move leaves no stray temporary object
                self.fs.rm_file(partial)

    def remove(self, relative: str) -> None:
        """Delete ``relative`` from the store and the local root, if present."""
        self._key(relative)
        (self.local_root / relative).unlink(missing_ok=True)
        if not self.is_local:
            try:
                self.fs.rm_file(self._key(relative))
            except FileNotFoundError:
                pass

    def names(self, relative: str) -> list[str]:
        """The file names directly under folder ``relative`` in the store (none if it does not exist)."""
        if self.is_local:
            folder = self.local_root / relative
            return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        key = self._key(relative)
        try:
            entries = self.fs.ls(key, detail=True)  # never cached: the store has no listings cache
        except FileNotFoundError:
            return []
        names = (e["name"].rsplit("/", 1)[-1] for e in entries if e.get("type") == "file")
        return sorted(n for n in names if n not in ("", ".", "..") and _PARTIAL not in n)

    def fetch(self, relative: str, digest: str) -> Path | None:
        """A local copy of ``relative`` whose SHA-256 is ``digest``, downloaded if needed; None if none exists.

        The local copy is replaced atomically, so threads and processes sharing the working copy never see a
        half-downloaded file.
        """
        self._key(relative)
        local = self.local_root / relative
        if local.is_file() and file_digest(local) == digest:
            return local
        if self.is_local:
            return None
        data = self.read_bytes(relative)
        if data is None or hashlib.sha256(data).hexdigest() != digest:
            return None
        with atomic_write(local) as handle:
            handle.write(data)
        return local

    def download(self, relative: str) -> Path | None:
        """Copy ``relative`` from the store into the local root as the store holds it; None if there is no such object.

        Unverified: for files without a manifest, such as a training's resume record, whose own signature the
        caller checks. A local store's own file is returned as it is.
        """
        self._key(relative)
        local = self.local_root / relative
        if self.is_local:
            return local if local.is_file() else None
        data = self.read_bytes(relative)
        if data is None:
            return None
        with atomic_write(local) as handle:
            handle.write(data)
        return local

    def listing(self, relative: str) -> dict[str, tuple[int, float | None]]:
        """Every file under the store's folder ``relative``, at any depth, as ``{path below it: (size in bytes,
        modified)}``; ``modified`` is a POSIX time, None where the store does not say.

        What the store itself holds (not the working copy), in one listing request on S3 rather than one per
        file. Temporary ``*.partial-*`` objects are left out; a folder that does not exist lists nothing.
        """
        key = self._key(relative)
        if self.is_local:
            folder = self.local_root / relative
            found = {}
            for path in folder.rglob("*") if folder.is_dir() else ():
                if path.is_file() and not path.is_symlink():
                    stat = path.stat()
                    found[path.relative_to(folder).as_posix()] = (stat.st_size, stat.st_mtime)
            return found
        try:
            entries = self.fs.find(key, detail=True)  # never cached: the store has no listings cache
        except FileNotFoundError:
            return {}
        return {name[len(key) + 1:]: (int(info.get("size") or 0), _modified(info))
                for name, info in entries.items()
                if info.get("type") == "file" and name.startswith(f"{key}/") and _PARTIAL not in name}

    def remove_folder(self, relative: str) -> None:
        """Delete the folder ``relative`` and everything under it from the store and the local root, if present."""
        key = self._key(relative)
        shutil.rmtree(self.local_root / relative, ignore_errors=True)
        if not self.is_local:
            try:
                self.fs.rm(key, recursive=True)
            except FileNotFoundError:
                pass

    def check_writable(self) -> None:
        """Write and delete a probe object, so a missing bucket or bad credentials show before any work starts.

        Raises:
            ValueError: naming the store and what went wrong.
        """
        if self.is_local:
            return
        probe = f".nodecore-write-check-{secrets.token_hex(4)}"
        try:
            self.fs.pipe_file(self._key(probe), b"")
            self.fs.rm_file(self._key(probe))
        except Exception as err:  # the driver's own errors (botocore, gcsfs, ...) vary
            raise ValueError(f"the store {self.location!r} cannot be written: {type(err).__name__}: {err}") from None

    def browser_url(self, relative: str, expires_in: int) -> str:
        """A URL of ``relative`` that a browser opens without credentials, for links in reports and the UI.

        Where the store's filesystem signs URLs (s3fs), a presigned GET URL valid for ``expires_in`` seconds;
        it carries a signature, not the secret key. s3fs is asked for SigV4 unless its config names a signature
        version (botocore otherwise presigns with SigV2 in older regions, which S3 refuses for buckets made since
        mid-2020 and S3-compatible servers may not speak). A SigV4 URL is signed for the client's region
        (``AWS_DEFAULT_REGION``), which must be the bucket's. Elsewhere, :meth:`url`: a local store, or a
        filesystem that cannot sign (``memory://``: fsspec raises NotImplementedError) or fails to (logged).

        Raises:
            ValueError: ``relative`` leaves the store.
        """
        key = self._key(relative)
        if self.is_local:
            return self.url(relative)
        fs = self.fs
        config = getattr(fs, "config_kwargs", None)  # s3fs: botocore's client config
        if isinstance(config, dict) and "signature_version" not in config:
            fs = type(fs)(**{**fs.storage_options, "config_kwargs": {**config, "signature_version": "s3v4"}})
        try:
            return fs.sign(key, expiration=expires_in)
        except NotImplementedError:
            return self.url(relative)
        except Exception as err:  # a driver that can sign but not here (gcsfs without a service account, ...)
            _log.warning("could not presign %s for a browser link (%s: %s); linking the store URL instead",
                         self.url(relative), type(err).__name__, err)
            return self.url(relative)


_STORES: dict[tuple[str, str | None], ArtifactStore] = {}
_LOCK = threading.Lock()


def artifact_store(location: str | os.PathLike[str]) -> ArtifactStore:
    """The process's :class:`ArtifactStore` for ``location`` (one per store and working copy, reused)."""
    key = (normalise(str(location)), os.environ.get(CACHE_ENV))
    with _LOCK:
        if key not in _STORES:
            _STORES[key] = ArtifactStore(key[0])
        return _STORES[key]

