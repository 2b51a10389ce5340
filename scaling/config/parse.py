"""TOML → frozen dataclasses, with errors that name the file, line and dotted key.

Generic and small: every config type in :mod:`scaling.config.schema` is a keyword-only
frozen dataclass whose fields are ``bool``/``int``/``float``/``str``, tuples of
those, nested config dataclasses, or ``dict[str, <config dataclass>]``. Unknown
keys are rejected with a "did you mean"; a wrong type names the key, the
expected type and the value; ``__post_init__`` checks raise :class:`ConfigError`
with a key relative to their own table and the loader prefixes the path.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from scaling.errors import UserError, decode_text

T = TypeVar("T")
INT64_MAX = 2**63 - 1


class ConfigError(UserError):
    """A study or cell file that cannot be used; the message says where and why."""

    def __init__(self, key: str, message: str, *, source: str | None = None) -> None:
        self.key = key
        self.message = message
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {message}" if key else f"{where}{message}")


def check(ok: bool, key: str, message: str) -> None:
    """Raise a ConfigError for ``key`` (relative to the current table) unless ``ok``."""
    if not ok:
        raise ConfigError(key, message)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ConfigError as err:
                errors.append(err.message)
        raise ConfigError(key, " or ".join(errors))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {value!r}")
        return from_dict(tp, value, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(key, f"expected a list of {len(args)} values, got {value!r}")
        return tuple(
            _convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is dict:
        _, vtype = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {value!r}")
        return {str(k): _convert(v, vtype, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):  # no setting means "infinitely many" or "unknown"
                raise ConfigError(key, f"must be a finite number, got {value!r}")
            return float(value)
    elif tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > INT64_MAX:  # Parquet columns, torch steps and seeds are int64
                raise ConfigError(key, f"must fit in 64 bits (at most {INT64_MAX:,}), got {value}")
            return value
    elif tp in (bool, str):
        if isinstance(value, tp):
            return value
    elif tp is Any:
        return value
    raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build ``cls`` from a parsed TOML table; ``prefix`` is the table's dotted path."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in data:
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            valid = ", ".join(sorted(fields))
            raise ConfigError(_join(prefix, name), f"unknown key{hint}; valid keys: {valid}")
    kwargs = {n: _convert(v, hints[n], _join(prefix, n)) for n, v in data.items()}
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(_join(prefix, missing[0]), "required key is missing")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if err.source:
            raise
        raise ConfigError(_join(prefix, err.key), err.message) from None


def to_dict(obj: Any) -> Any:
    """A config as plain JSON/TOML-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _join(prefix: str, key: str) -> str:
    if not prefix or not key:
        return prefix or key
    return f"{prefix}{key}" if key.startswith("[") else f"{prefix}.{key}"


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=v`` → (["a", "b"], v) with v parsed as a TOML value (bare words are strings)."""
    if "=" not in item:
        raise ConfigError("--set", f"expected KEY=VALUE, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][\w-]*(\.[\w\"-]+)*", key):
        raise ConfigError("--set", f"not a dotted key: {key!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        parts, value = parse_override(item)
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(".".join(parts), "cannot set a key inside a non-table value")
        node[parts[-1]] = value
    return data


def read_toml(path: Path) -> tuple[dict[str, Any], str]:
    """Parse a TOML file; syntax errors name the file and line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("", f"no such file: {path}") from None
    except OSError as err:
        raise ConfigError("", f"cannot read {path}: {err.strerror}") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError("", f"{path}: UTF-16 text (a UTF-16 byte-order mark); TOML is UTF-8")
    text = decode_text(  # a UTF-8 byte-order mark (Windows editors write one) is dropped
        data,
        lambda line, _, byte: ConfigError(
            "", f"{path}:{line}: not UTF-8 text (byte 0x{byte:02x}); TOML is UTF-8"
        ),
    )
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("", f"{path}: invalid TOML: {err}") from None


def locate(text: str, dotted: str) -> int | None:
    """Best-effort 1-based line of ``dotted`` (e.g. ``pretrain.mask_ratio``) in TOML text."""
    parts = [p for p in re.split(r"\.(?![^\[]*\])", re.sub(r"\[\d+\]", "", dotted)) if p]
    if not parts:
        return None
    table, key = parts[:-1], parts[-1]
    current: list[str] = []
    header = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+\s*(#.*)?$")
    assign = re.compile(r"^\s*([\w\"'.-]+)\s*=")
    for lineno, line in enumerate(text.splitlines(), 1):
        m = header.match(line)
        if m:
            current = [p.strip().strip("\"'") for p in m.group(1).split(".")]
            if current == parts:
                return lineno
            continue
        m = assign.match(line)
        if m:
            full = current + [p.strip().strip("\"'") for p in m.group(1).split(".")]
            if full[: len(table) + 1] == [*table, key]:
                return lineno
    return None
