"""The command line of a config model, built by pydantic-settings' CLI support; and the pre-flight checks of a run.

pydantic-settings turns every leaf field into an option named by its dotted path, underscores kept
(``--training.epochs``, ``--dataset.dataset_type``, the top-level ``--solvers``), with the field's description and
default as its help; the model validates the values and stays the one home of the defaults (a partial override of
a nested model keeps its other fields). On top of what pydantic-settings offers:

* a list takes its items space-separated (``--solvers rk4 euler``), besides comma-separated (``--solvers rk4,euler``),
  JSON (``--solvers '["rk4","euler"]'``) and repeated flags (``--solvers rk4 --solvers euler``, which add up);
* a bool is a ``--x`` / ``--no-x`` flag; ``none`` (any case) sets an optional field to None;
* a bad value exits with status 2 printing one line per error, naming the option, the value and what is valid,
  then ``run with --help for all options`` -- no usage dump.

Typical use::

    config = parse_config(PipelineConfig, prog="python flows/train_flow.py")
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, CliApp, CliSettingsSource, SettingsConfigDict, SettingsError

__all__ = ["HINT", "NONE_WORD", "ConfigParser", "check_artifacts_store", "check_writable_folder", "cli_source", "format_validation_error",
           "parse_config"]

M = TypeVar("M", bound=BaseModel)

HINT = "run with --help for all options"
NONE_WORD = "none"


class ConfigParser(argparse.ArgumentParser):
    """An argument parser whose errors are the message and a hint to ``--help`` (exit status 2), not the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n{HINT}\n")


@lru_cache(maxsize=None)
def _settings_class(model: type[M]) -> type[BaseSettings]:
    """``model`` as pydantic-settings' CLI sees it: read from the command line only (no environment, no .env)."""

    class CliSettings(BaseSettings, model):  # type: ignore[misc, valid-type]
        __doc__ = model.__doc__
        model_config = SettingsConfigDict(
            nested_model_default_partial_update=True,  # --training.epochs 3 keeps the rest of training's default
            case_sensitive=True,
            cli_implicit_flags=True,  # --x / --no-x
            cli_parse_none_str=NONE_WORD,
            cli_avoid_json=True,  # no --training '{...}' in the help (the option still works)
            cli_use_class_docs_for_groups=True,  # each group's heading: its model's docstring
            cli_enforce_required=True,
        )

        @classmethod
        def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: Any,
                                       *_: Any, **__: Any) -> tuple[Any, ...]:
            return (init_settings,)  # CliApp puts the command line in front

    CliSettings.__name__ = CliSettings.__qualname__ = model.__name__
    return CliSettings


def _none_word(text: str) -> str:
    return NONE_WORD if text.lower() == NONE_WORD else text


def _add_argument(parser: Any, *names: str, **kwargs: Any) -> Any:
    """pydantic-settings' ``add_argument``, with lists taking space-separated items and ``None`` meaning none."""
    if kwargs.get("action") == "append":  # a list field: --x a b, and a repeated --x adds to it
        kwargs.update(action="extend", nargs="+")
        metavar = kwargs.get("metavar") or ""
        if metavar.startswith("list[") and metavar.endswith("]"):
            kwargs["metavar"] = metavar[len("list["):-1]
    if NONE_WORD in str(kwargs.get("metavar", "")).replace("{", ",").replace("}", ",").split(","):
        kwargs["type"] = _none_word  # an Optional field: None, NONE, none
    return parser.add_argument(*names, **kwargs)


def cli_source(model: type[BaseModel], *, prog: str | None = None, description: str | None = None
               ) -> CliSettingsSource[ConfigParser]:
    """pydantic-settings' CLI source of ``model``; its parser is ``.root_parser`` (a :class:`ConfigParser`).

    Args:
        model: the pydantic model class.
        prog: program name shown in usage and error lines.
        description: text above the options; the model's docstring if None.
    """
    parser = ConfigParser(prog=prog, usage="%(prog)s [--OPTION VALUE ...]", allow_abbrev=False,
                          description=description if description is not None else model.__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    return CliSettingsSource(_settings_class(model), root_parser=parser, add_argument_method=_add_argument)


def _describe(error: Mapping[str, Any]) -> str:
    """One line for one pydantic error, naming the field by its option and showing the value given."""
    names = []
    for part in error.get("loc", ()):  # ("solvers", 1): the option, then the item's index
        if not isinstance(part, str):
            break
        names.append(part)
    where = "--" + ".".join(names) if names else "config"
    message = error.get("msg", "invalid value").removeprefix("Value error, ")
    shown = error.get("type") not in ("missing", "extra_forbidden", "value_error", "assertion_error")
    if shown and "input" in error and not isinstance(error["input"], (dict, BaseModel)):
        message += f" (got {error['input']!r})"
    return f"{where}: {message}"


def format_validation_error(err: ValidationError) -> str:
    """A ``ValidationError`` of a config model, each field named by its command-line option."""
    lines = [_describe(error) for error in err.errors()]
    return lines[0] if len(lines) == 1 else "invalid configuration:\n  " + "\n  ".join(lines)


def parse_config(model: type[M], argv: Sequence[str] | None = None, *, prog: str | None = None,
                 source: CliSettingsSource[ConfigParser] | None = None) -> M:
    """Parse ``argv`` (``sys.argv[1:]`` if None) into a validated ``model``; exit with status 2 on a bad option.

    Args:
        model: the pydantic model class.
        argv: arguments without the program name.
        prog: program name for a fresh source (ignored with ``source``).
        source: a :func:`cli_source` of ``model``; a fresh one if None.

    Raises:
        SystemExit: status 2 for an unknown option or a bad value (see the module docstring); 0 for ``--help``.
    """
    source = source or cli_source(model, prog=prog)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = CliApp.run(_settings_class(model), cli_args=args, cli_settings_source=source)
        return model.model_validate(dict(settings))
    except ValidationError as err:
        source.root_parser.error(format_validation_error(err))
    except SettingsError as err:  # e.g. unbalanced quotes in a list
        source.root_parser.error(str(err))


# --- pre-flight checks the config cannot make: they need this host ---------------------------------------


def check_writable_folder(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` is, or can be made, a writable folder, creating nothing; return it resolved.

    The nearest existing folder on the way is probed with a temporary subfolder (removed at once), so
    permissions, read-only file systems and the like are found as the run would find them.

    Raises:
        ValueError: ``path`` or a parent exists and is not a folder, or cannot be written; the message names both.
    """
    target = Path(path).resolve()
    existing = target
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == target else f" cannot be created: {str(existing)!r}"
        raise ValueError(f"{str(path)!r}{where} exists and is not a folder; give a folder path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".nodecore-write-check-", dir=existing))
    except OSError as err:
        action = "written" if existing == target else f"created in {str(existing)!r}"
        raise ValueError(f"{str(path)!r} cannot be {action}: {err.strerror or err}") from err
    return target


def check_artifacts_store(location: str) -> str:
    """Check that the artifacts store ``location`` (a folder or fsspec URL) can be written; return its one spelling.

    A folder is checked as :func:`check_writable_folder` does; a remote store gets a probe object written and
    deleted, so an unknown protocol, a missing driver or bucket, or bad credentials show before any work starts.

    Raises:
        ValueError: naming the store and what is wrong.
    """
    from tasks.store import artifact_store, check_location, normalise

    check_location(location)
    store = artifact_store(location)
    if store.is_local:
        check_writable_folder(store.location)
    elif store.location not in _WRITABLE_STORES:  # a probe is two round trips: once per process is enough
        store.check_writable()
        _WRITABLE_STORES.add(store.location)
    return normalise(location)


_WRITABLE_STORES: set[str] = set()  # remote stores this process has written a probe to

