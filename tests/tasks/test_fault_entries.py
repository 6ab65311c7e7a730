"""NODECORE_FAULTS is parsed up front: a malformed entry is refused naming it and the valid forms."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tasks import faults
from tasks.faults import Fault, validate_faults

TASKS_DIR = Path(faults.__file__).parent


def test_valid_entries_parse() -> None:
    assert validate_faults("") == []
    assert validate_faults("train, evaluate:permanent ,generate:transient:3,train:while:/tmp/a:b") == [
        Fault("train", "train", "transient", 1),
        Fault("evaluate:permanent", "evaluate", "permanent"),
        Fault("generate:transient:3", "generate", "transient", 3),
        Fault("train:while:/tmp/a:b", "train", "while", flag="/tmp/a:b"),
    ]


def test_the_environment_is_read_when_no_value_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faults.ENV, raising=False)
    assert validate_faults() == []
    monkeypatch.setenv(faults.ENV, "train:transient:abc")
    with pytest.raises(ValueError, match="'abc' is not a count"):
        validate_faults()


@pytest.mark.parametrize(("entry", "problem"), [
    ("train:transient:abc", "'abc' is not a count (an integer >= 1)"),
    ("train:transient:0", "'0' is not a count"),
    ("trian:permanent", "unknown stage 'trian'"),
    ("train:sometimes", "not one of the valid forms"),
    ("train:permanent:3", "not one of the valid forms"),
    ("train:while:", "not one of the valid forms"),
])
def test_a_malformed_entry_is_named_with_the_valid_forms(entry: str, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_faults(f"evaluate:permanent,{entry}")
    message = str(info.value)
    assert message.startswith(f"NODECORE_FAULTS entry {entry!r}: {problem}")
    assert "STAGE:transient:N" in message and "STAGE:while:PATH" in message
    assert "generate, train, evaluate" in message


def test_stages_are_those_that_call_the_hook() -> None:
    called = {name for path in TASKS_DIR.glob("*.py")
              for name in re.findall(r"maybe_fail\(\"(\w+)\"", path.read_text())}
    assert called == set(faults.STAGES)
