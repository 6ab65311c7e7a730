"""A command line built from a pydantic model: one option per leaf field, validated by the model.

Option spelling: a leaf field is addressed by its dotted path of field names, written exactly as the fields
are named (underscores kept, no dash conversion): ``PipelineConfig.training.epochs`` is ``--training.epochs``,
the top-level ``solvers`` is ``--solvers``, ``model.depth_variant`` is ``--model.depth_variant`` /
``--no-model.depth_variant``. Abbreviated options are not accepted.

Values: ``int`` and ``float`` fields are converted by argparse (so ``--training.epochs x`` fails with an argparse
error); ``Literal`` fields become ``choices``; ``list`` / ``tuple`` / ``set`` fields take one or more values
(``--solvers rk4 tsit5``); ``bool`` fields are ``--x`` / ``--no-x`` flags; an ``Optional`` field also accepts the
word ``none`` (meaning None); every other type is passed as the string given and coerced by pydantic.

Every option defaults to ``argparse.SUPPRESS``, so only the options actually given become overrides; a partial
override of a nested model keeps the parent's default for that model's other fields. The model then validates the
overrides, and a ``ValidationError`` exits with status 2 (``parser.error``) naming each bad field by its option.

Typical use::

    parser = build_parser(PipelineConfig, prog="train_flow")
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    config, args = parse_config(PipelineConfig, parser=parser)
"""

from __future__ import annotations

import argparse
import enum
import shlex
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

__all__ = [
    "build_parser",
    "collect_overrides",
    "format_validation_error",
    "leaf_paths",
    "option_name",
    "parse_config",
]

M = TypeVar("M", bound=BaseModel)

NONE_WORD = "none"
_SEQUENCES = (list, tuple, set, frozenset)
_NO_DEFAULT = object()


def option_name(path: Sequence[str]) -> str:
    """Return the option of the leaf field at ``path``: ``("training", "epochs")`` -> ``--training.epochs``."""
    return "--" + ".".join(path)


@dataclass(frozen=True)
class _Leaf:
    """One leaf field: where it lives, its annotation and its effective default."""

    path: tuple[str, ...]
    field: FieldInfo
    default: Any  # _NO_DEFAULT when the field is required

    @property
    def dest(self) -> str:
        return ".".join(self.path)


def _model_class(annotation: Any) -> type[BaseModel] | None:
    """Return ``annotation`` if it is a pydantic model class, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _field_default(field: FieldInfo) -> Any:
    """Return a field's default (calling a default factory), or ``_NO_DEFAULT`` if it is required."""
    if field.is_required():
        return _NO_DEFAULT
    if field.default_factory is not None:
        if field.default_factory_takes_data:
            return _NO_DEFAULT  # depends on the other fields; cannot be shown up front
        return field.default_factory()
    return None if field.default is PydanticUndefined else field.default


_Owner = tuple[type[BaseModel], tuple[str, ...]]  # the model a leaf belongs to, and that model's path


def _walk(model: type[BaseModel], base: BaseModel | None, prefix: tuple[str, ...]) -> Iterator[tuple[_Leaf, _Owner]]:
    """Yield ``(leaf, owner)`` for every leaf field, depth first in field order.

    ``base`` is the effective default instance of ``model`` (the parent's default), or None where there is none;
    leaf defaults come from it, so help text shows what a run would actually use.
    """
    for name, field in model.model_fields.items():
        default = getattr(base, name) if base is not None else _field_default(field)
        nested = _model_class(field.annotation)
        if nested is not None:
            child_base = default if isinstance(default, nested) else None
            yield from _walk(nested, child_base, (*prefix, name))
        else:
            yield _Leaf((*prefix, name), field, default), (model, prefix)


def _leaves(model: type[BaseModel]) -> list[tuple[_Leaf, _Owner]]:
    return list(_walk(model, None, ()))


def leaf_paths(model: type[BaseModel]) -> list[tuple[str, ...]]:
    """Return the dotted paths (as tuples) of every leaf field of ``model``, in option order."""
    return [leaf.path for leaf, _ in _leaves(model)]


# --- annotations -> argparse keyword arguments -------------------------------------------------------------


def _strip_annotated(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _split_optional(annotation: Any) -> tuple[Any, bool]:
    """Return ``(X, True)`` for ``Optional[X]`` / ``X | None``, else ``(annotation, False)``."""
    annotation = _strip_annotated(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) < len(get_args(annotation)):
            inner = args[0] if len(args) == 1 else Union[tuple(args)]  # type: ignore[valid-type]
            return _strip_annotated(inner), True
    return annotation, False


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"invalid bool value: {text!r} (use true or false)")


def _literal_converter(values: tuple[Any, ...]) -> Callable[[str], Any]:
    """Map the text of a ``Literal`` value back to the value itself (so ``Literal[1, 2]`` gets ints)."""
    by_text = {str(value): value for value in values}

    def convert(text: str) -> Any:
        return by_text.get(text, text)  # unknown text stays text; argparse's choices check rejects it

    convert.__name__ = "choice"
    return convert


def _scalar(annotation: Any, where: str) -> dict[str, Any]:
    """argparse kwargs (``type``, ``choices``, ``metavar``) for one value of ``annotation``."""
    annotation = _strip_annotated(annotation)
    origin = get_origin(annotation)
    if origin is Literal:
        values = get_args(annotation)
        return {"type": _literal_converter(values), "choices": list(values), "metavar": None}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        values = tuple(member.value for member in annotation)
        return {"type": _literal_converter(values), "choices": list(values), "metavar": None}
    if annotation is bool:
        return {"type": _parse_bool, "choices": None, "metavar": "{true,false}"}
    if annotation is int:
        return {"type": int, "choices": None, "metavar": "INT"}
    if annotation is float:
        return {"type": float, "choices": None, "metavar": "FLOAT"}
    if (
        _model_class(annotation) is not None
        or origin in (*_SEQUENCES, dict, Mapping)
        or annotation in (*_SEQUENCES, dict)
        or (origin in (Union, types.UnionType) and any(_model_class(a) for a in get_args(annotation)))
    ):
        raise TypeError(f"{where}: cannot expose a field of type {annotation!r} as a command-line option")
    name = getattr(annotation, "__name__", "VALUE")
    return {"type": str, "choices": None, "metavar": name.upper() if name != "str" else "TEXT"}


def _or_none(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap a converter so that the word ``none`` means None."""

    def convert_or_none(text: str) -> Any:
        return None if text.lower() == NONE_WORD else convert(text)

    convert_or_none.__name__ = f"{getattr(convert, '__name__', 'value')}-or-{NONE_WORD}"
    return convert_or_none


def _show(value: Any) -> str:
    """Render a default the way it would be typed on the command line."""
    if value is None:
        return NONE_WORD
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, enum.Enum):
        return _show(value.value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return " ".join(_show(item) for item in value) if value else "(empty)"
    if isinstance(value, str):
        return shlex.quote(value)
    return str(value)


def _help(leaf: _Leaf) -> str:
    default = "required" if leaf.default is _NO_DEFAULT else f"default: {_show(leaf.default)}"
    text = f"{leaf.field.description} ({default})" if leaf.field.description else f"({default})"
    return text.replace("%", "%%")


def _add_option(group: argparse._ArgumentGroup, leaf: _Leaf) -> None:
    """Add the option of one leaf field to ``group``."""
    option = option_name(leaf.path)
    annotation, optional = _split_optional(leaf.field.annotation)
    common = {"dest": leaf.dest, "default": argparse.SUPPRESS, "help": _help(leaf)}
    if annotation is bool and not optional:
        group.add_argument(option, action=argparse.BooleanOptionalAction, **common)
        return
    origin = get_origin(annotation)
    if annotation in _SEQUENCES or origin in _SEQUENCES:
        item_args = [arg for arg in get_args(annotation) if arg is not Ellipsis]
        item = item_args[0] if origin is not tuple or len(item_args) == 1 else str
        kwargs = _scalar(item if item_args else str, option)
        if origin is tuple and len(item_args) > 1:  # tuple[int, str, ...] positions: leave to pydantic
            kwargs = {"type": str, "choices": None, "metavar": "VALUE"}
        kwargs["nargs"] = "+"
    else:
        kwargs = _scalar(annotation, option)
    if optional:
        kwargs["type"] = _or_none(kwargs["type"])
        if kwargs["choices"] is not None:
            kwargs["metavar"] = "{" + ",".join([*map(str, kwargs["choices"]), NONE_WORD]) + "}"
            kwargs["choices"] = [*kwargs["choices"], None]
        else:
            kwargs["metavar"] = f"{kwargs['metavar']}|{NONE_WORD}"
    group.add_argument(option, **kwargs, **common)


def _first_line(text: str | None) -> str | None:
    return text.strip().splitlines()[0] if text and text.strip() else None


def build_parser(
    model: type[BaseModel], *, prog: str | None = None, description: str | None = None
) -> argparse.ArgumentParser:
    """Build an argument parser with one option per leaf field of ``model`` (see the module docstring).

    Options of a nested model are grouped under its path with its docstring's first line as the heading; every
    option's default is ``argparse.SUPPRESS``. Callers may add their own options (any name without a dot) before
    passing the parser to :func:`parse_config`.

    Args:
        model: the pydantic model class.
        prog: program name shown in usage lines.
        description: text above the options; the model's docstring if None.

    Returns:
        The parser.

    Raises:
        TypeError: a leaf field's type cannot be expressed as an option (a dict, a list of models, ...).
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description if description is not None else _first_line(model.__doc__),
        allow_abbrev=False,
    )
    groups: dict[tuple[str, ...], argparse._ArgumentGroup] = {}
    for leaf, (owner, owner_path) in _leaves(model):
        if owner_path not in groups:
            title = ".".join(owner_path) if owner_path else f"{model.__name__} options"
            groups[owner_path] = parser.add_argument_group(title, _first_line(owner.__doc__))
        _add_option(groups[owner_path], leaf)
    return parser


# --- namespace -> overrides -> validated model ------------------------------------------------------------


def collect_overrides(model: type[BaseModel], namespace: argparse.Namespace) -> dict[str, Any]:
    """Return the options given on the command line as a nested dict of field values (only those given)."""
    overrides: dict[str, Any] = {}
    for leaf, _ in _leaves(model):
        if not hasattr(namespace, leaf.dest):
            continue
        value = getattr(namespace, leaf.dest)
        _, optional = _split_optional(leaf.field.annotation)
        if optional and isinstance(value, list) and value == [None]:
            value = None  # ``--x none`` for an Optional[list[...]] field
        node = overrides
        for name in leaf.path[:-1]:
            node = node.setdefault(name, {})
        node[leaf.path[-1]] = value
    return overrides


def _on_defaults(model: type[BaseModel], overrides: dict[str, Any], base: BaseModel | None) -> dict[str, Any]:
    """Lay ``overrides`` over the effective defaults of nested models, so a partial override keeps the rest.

    ``base`` is the effective default instance of ``model`` (None at the top level or where none exists).
    """
    out: dict[str, Any] = {} if base is None else {name: getattr(base, name) for name in model.model_fields}
    for name, value in overrides.items():
        field = model.model_fields[name]
        nested = _model_class(field.annotation)
        if nested is not None and isinstance(value, dict):
            default = getattr(base, name) if base is not None else _field_default(field)
            value = _on_defaults(nested, value, default if isinstance(default, nested) else None)
        out[name] = value
    return out


def _describe(error: Mapping[str, Any], options: dict[tuple[str, ...], str]) -> str:
    """One line for one pydantic error, naming the field by its option."""
    loc = tuple(str(part) for part in error.get("loc", ()))
    where = ".".join(loc) or "config"
    for size in range(len(loc), 0, -1):
        if loc[:size] in options:
            where = options[loc[:size]]
            rest = loc[size:]
            if rest:
                where += f" (item {', '.join(rest)})" if all(p.isdigit() for p in rest) else f" ({'.'.join(rest)})"
            break
    message = error.get("msg", "invalid value").removeprefix("Value error, ")
    skip_input = error.get("type") in ("missing", "extra_forbidden", "value_error", "assertion_error")
    if "input" in error and not skip_input and not isinstance(error["input"], (dict, BaseModel)):
        message += f" (got {error['input']!r})"
    return f"{where}: {message}"


def format_validation_error(model: type[BaseModel], err: ValidationError) -> str:
    """Render a ``ValidationError`` of ``model`` with each field named by its command-line option."""
    options = {path: option_name(path) for path in leaf_paths(model)}
    lines = [_describe(error, options) for error in err.errors()]
    if len(lines) == 1:
        return lines[0]
    return "invalid configuration:\n  " + "\n  ".join(lines)


def parse_config(
    model: type[M],
    argv: Sequence[str] | None = None,
    *,
    parser: argparse.ArgumentParser | None = None,
) -> tuple[M, argparse.Namespace]:
    """Parse ``argv`` into a validated ``model`` instance; exit with status 2 on any invalid option.

    Args:
        model: the pydantic model class.
        argv: arguments without the program name; ``sys.argv[1:]`` if None.
        parser: a parser from :func:`build_parser` for the same ``model``, possibly with extra options added;
            a fresh one if None.

    Returns:
        ``(config, namespace)``: the validated model, and a namespace holding only the non-config options
        (those the caller added to ``parser``).

    Raises:
        SystemExit: status 2 for an unknown option, a bad value, or a value the model rejects; status 0 for
            ``--help``.
        ValueError: ``parser`` was not built from ``model``.
    """
    if parser is None:
        parser = build_parser(model)
    leaves = [leaf for leaf, _ in _leaves(model)]
    foreign = [option_name(leaf.path) for leaf in leaves if parser.get_default(leaf.dest) is not argparse.SUPPRESS]
    if foreign:
        raise ValueError(f"parser was not built from {model.__name__}: it lacks or changed option(s) {foreign}")
    namespace = parser.parse_args(argv)
    overrides = collect_overrides(model, namespace)
    try:
        config = model.model_validate(_on_defaults(model, overrides, None))
    except ValidationError as err:
        parser.error(format_validation_error(model, err))
    for leaf in leaves:
        if hasattr(namespace, leaf.dest):
            delattr(namespace, leaf.dest)
    return config, namespace
