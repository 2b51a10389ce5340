"""Manifest digests of a cell: part of its identity, checked before it runs."""

from __future__ import annotations

from scaling.config import CellConfig
from scaling.configload import ConfigError


def manifest_digests(cell: CellConfig) -> dict[str, str]:
    """``{subset: digest}`` of every manifest the cell reads; a missing one is an error."""
    from subsets.manifest import manifest_digest

    digests, missing = {}, []
    for subset in cell.subsets():
        path = cell.data_config.manifest(subset)
        if not path.exists():
            missing.append(f"{subset} ({path})")
            continue
        digests[subset] = manifest_digest(path)
    if missing:
        raise ConfigError("data.manifest_dir", f"missing manifests: {', '.join(missing)}")
    return digests
