"""Study and cell files: TOML → validated configs, with errors at file:line and dotted key.

``load_study`` reads a study file, applies ``--set a.b=v`` overrides, makes the
paths absolute (Ray moves trials into their own directories) and validates;
``load_cell`` does the same for a ``cell.toml``; ``dump_toml`` writes a resolved
config back (beside every cell's results). Nothing here imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scaling.config.parse import ConfigError, apply_overrides, from_dict, locate, read_toml
from scaling.config.schema import CellConfig, StudyConfig


def _absolute(path: str) -> str:
    if not path or "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def _absolutize_data(data: Any) -> None:
    if isinstance(data, dict):
        for key in ("manifest_dir", "root", "packed"):  # packed: a folder or a URI
            if isinstance(data.get(key), str):
                data[key] = _absolute(data[key])


def _where(path: Path, text: str, err: ConfigError, overrides: list[str]) -> str:
    """``file:line`` of the key, and ``(--set)`` when an override set it."""
    line = locate(text, err.key)
    where = f"{path}:{line}" if line else str(path)
    set_keys = [o.split("=", 1)[0].strip() for o in overrides]
    if any(err.key == k or err.key.startswith((f"{k}[", f"{k}.")) for k in set_keys):
        where += " (--set)"
    return where


def load_study(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """Load, override and validate a study file; errors name the file, line and key."""
    path, overrides = Path(path), list(overrides or [])
    raw, text = read_toml(path)
    try:
        raw = apply_overrides(raw, overrides)
        raw["source"] = str(path.resolve())
        if isinstance(raw.get("output_dir"), str):
            raw["output_dir"] = _absolute(raw["output_dir"])
        _absolutize_data(raw.get("data"))
        return from_dict(StudyConfig, raw)
    except ConfigError as err:
        raise ConfigError(err.key, err.message, source=_where(path, text, err, overrides)) from None


def load_cell(path: str | Path, overrides: list[str] | None = None) -> CellConfig:
    """Load a cell file (``cell.toml`` written beside each cell's results, or by hand)."""
    path, overrides = Path(path), list(overrides or [])
    raw, text = read_toml(path)
    try:
        raw = apply_overrides(raw, overrides)
        _absolutize_data(raw.get("data_config"))
        return from_dict(CellConfig, raw)
    except ConfigError as err:
        raise ConfigError(err.key, err.message, source=_where(path, text, err, overrides)) from None


def dump_toml(data: dict[str, Any]) -> str:
    """A small TOML writer for resolved configs (tables of scalars, lists and sub-tables)."""
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        return json.dumps(str(v))

    def table(prefix: str, d: dict[str, Any]) -> None:
        subs = {k: v for k, v in d.items() if isinstance(v, dict)}
        for k, v in d.items():
            if not isinstance(v, dict) and v is not None:
                lines.append(f"{k} = {scalar(v)}")
        for k, v in subs.items():
            name = f"{prefix}.{json.dumps(k) if not k.isidentifier() else k}".lstrip(".")
            lines.append("")
            lines.append(f"[{name}]")
            table(name, v)

    table("", data)
    return "\n".join(lines).lstrip() + "\n"
