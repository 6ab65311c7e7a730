"""Unit tests of tasks.signing: where the manifest key comes from, and what it refuses."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import signing


@pytest.fixture
def key_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "keys" / "artifacts.key"
    monkeypatch.delenv(signing.KEY_ENV, raising=False)
    monkeypatch.setenv(signing.KEY_FILE_ENV, str(path))
    return path


def test_a_key_file_is_created_private_on_first_use_and_then_reused(key_path: Path) -> None:
    assert not key_path.exists()
    first = signing.sign(b"payload")
    assert key_path.is_file() and stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert len(key_path.read_text().strip()) == 64
    assert signing.sign(b"payload") == first and signing.verify(b"payload", first)
    assert not signing.verify(b"payload!", first) and not signing.verify(b"payload", "0" * 64)


def test_the_environment_key_overrides_the_file(key_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_file = signing.sign(b"x")
    monkeypatch.setenv(signing.KEY_ENV, "a-key-shared-by-every-host")
    assert signing.sign(b"x") != from_file
    assert signing.signing_key() == b"a-key-shared-by-every-host"


@pytest.mark.parametrize("where", ["env", "file"])
def test_a_short_key_is_refused_naming_its_source(key_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    if where == "env":
        monkeypatch.setenv(signing.KEY_ENV, "short")
        source = signing.KEY_ENV
    else:
        key_path.parent.mkdir(parents=True)
        key_path.write_text("\n")
        source = str(key_path)
    with pytest.raises(ValueError, match=f"from {source}.*at least 16"):
        signing.signing_key()


def test_processes_creating_the_key_at_once_agree_on_one(key_path: Path) -> None:
    code = "from tasks import signing; print(signing.signing_key().decode())"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2]) for _ in range(4)]
    keys = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert keys == {key_path.read_text().strip()}
    assert [p.name for p in key_path.parent.iterdir()] == [key_path.name]  # no temporary file left behind
