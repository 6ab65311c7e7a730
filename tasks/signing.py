"""The key that signs stage manifests, so a manifest that was edited in the store is not trusted.

A manifest's SHA-256 digests catch damaged files, but anyone who can write to a shared artifacts store can
also rewrite the manifest. Every manifest therefore carries an HMAC-SHA256 over its content, under a key
the hosts of one deployment share and the store does not hold:

* ``NODECORE_ARTIFACTS_KEY``: the key itself (at least 16 characters), e.g. set in every work pool's
  environment; else
* the file ``NODECORE_ARTIFACTS_KEY_FILE`` (default ``~/.config/nodecore/artifacts.key``), created with 32
  random bytes and mode 0600 on first use. Copy it to each host that shares the store.

A manifest signed under another key, or not signed, reads as absent: its stage is recomputed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_ENV = "NODECORE_ARTIFACTS_KEY"
KEY_FILE_ENV = "NODECORE_ARTIFACTS_KEY_FILE"
DEFAULT_KEY_FILE = Path("~/.config/nodecore/artifacts.key")
MIN_KEY_CHARS = 16


def key_file() -> Path:
    """Where the signing key is kept when ``NODECORE_ARTIFACTS_KEY`` is unset."""
    return Path(os.environ.get(KEY_FILE_ENV) or DEFAULT_KEY_FILE).expanduser()


def signing_key() -> bytes:
    """The key of this host: from the environment, else from :func:`key_file` (created on first use).

    Raises:
        ValueError: a key shorter than 16 characters, naming where it came from.
    """
    if (value := os.environ.get(KEY_ENV)) is not None:
        return _checked(value.strip(), KEY_ENV)
    path = key_file()
    if not path.is_file():
        _create_key_file(path)
    return _checked(path.read_text().strip(), str(path))


def key_source() -> str:
    """Where this host's key comes from, for messages: the environment variable or the key file."""
    return KEY_ENV if os.environ.get(KEY_ENV) is not None else str(key_file())


def _create_key_file(path: Path) -> None:
    """Write a new random key to ``path`` whole or not at all: a concurrent reader never sees it half written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    try:
        os.link(tmp, path)  # fails if another process created the key first: then theirs is used
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _checked(value: str, source: str) -> bytes:
    if len(value) < MIN_KEY_CHARS:
        raise ValueError(f"the artifacts signing key from {source} has {len(value)} characters; "
                         f"it needs at least {MIN_KEY_CHARS}")
    return value.encode()


def sign(payload: bytes) -> str:
    """HMAC-SHA256 of ``payload`` under this host's key, hex."""
    return hmac.new(signing_key(), payload, hashlib.sha256).hexdigest()


def verify(payload: bytes, signature: str) -> bool:
    """Whether ``signature`` is this host's signature of ``payload`` (in constant time)."""
    return hmac.compare_digest(sign(payload), signature)
