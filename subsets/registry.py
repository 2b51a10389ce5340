"""Named subsets and source kinds: dict registries whose errors list the valid names.

A *source kind* says what a build reads (IN-1K, IN-22K, the demo, any other folder) and
which subsets it writes by default. A *subset* is a :class:`SubsetSpec`: the split,
the fraction of every class kept, and optionally a named class list (``in100``).
Besides the standard names, ``<prefix>-<N>pct`` names any fraction of any source
(``in1k-5pct``, ``in22k-12.5pct``, ``places-10pct`` with ``--name-prefix places``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from subsets.errors import SubsetError
from subsets.select import FractionLike, check_fraction, percent_text

DATA_DIR = Path(__file__).parent / "data"


@dataclass(frozen=True, kw_only=True)
class SourceKind:
    """What a build reads, and what it writes when no subsets are named."""

    name: str
    """Registry name, also the default prefix of subset names."""
    description: str
    """One line for ``mimscale subsets list``."""
    default_fractions: tuple[Fraction, ...] = (Fraction(1),)
    """Fractions of train written by default (as ``<prefix>-<N>pct``)."""
    holdout_per_class: int = 0
    """>0: the val set is held out of train (this many per class, at most half)."""
    full_name: str | None = None
    """Name of the 100% train subset if not ``<prefix>-100pct`` (e.g. 'in22k')."""


@dataclass(frozen=True, kw_only=True)
class SubsetSpec:
    """One subset to build."""

    name: str
    """File stem of the manifest: ``<out>/<name>.parquet``."""
    source: str
    """Source kind it is drawn from."""
    split: str
    """'train' (a fraction of train) or 'val'."""
    fraction: Fraction = Fraction(1)
    """Fraction of every class kept (exact; the manifest records it as a float)."""
    class_subset: str | None = None
    """Named class list (a file ``subsets/data/<name>.txt``) restricting the classes."""


SOURCE_KINDS: dict[str, SourceKind] = {
    k.name: k
    for k in (
        SourceKind(
            name="in1k",
            description="ImageNet-1K (ILSVRC-2012): train tree + val (folders or flat + CSV)",
            default_fractions=(Fraction(1, 10), Fraction(1, 5), Fraction(1, 2), Fraction(1)),
        ),
        SourceKind(
            name="in22k",
            description="ImageNet-22K (fall11): train tree; val = 5 held-out images per class",
            holdout_per_class=5,
            full_name="in22k",
        ),
        SourceKind(
            name="demo",
            description="the embedded demo set (mimscale subsets demo)",
            default_fractions=(Fraction(1), Fraction(1, 2), Fraction(1, 4)),
        ),
        SourceKind(name="folder", description="any ROOT/<class>/<image> tree"),
    )
}

STANDARD_SUBSETS: dict[str, SubsetSpec] = {
    s.name: s
    for s in (
        SubsetSpec(name="in1k-10pct", source="in1k", split="train", fraction=Fraction(1, 10)),
        SubsetSpec(name="in1k-20pct", source="in1k", split="train", fraction=Fraction(1, 5)),
        SubsetSpec(name="in1k-50pct", source="in1k", split="train", fraction=Fraction(1, 2)),
        SubsetSpec(name="in1k-100pct", source="in1k", split="train", fraction=Fraction(1)),
        SubsetSpec(name="in1k-val", source="in1k", split="val"),
        SubsetSpec(name="in100", source="in1k", split="train", class_subset="in100_cmc"),
        SubsetSpec(name="in100-val", source="in1k", split="val", class_subset="in100_cmc"),
        SubsetSpec(name="in22k", source="in22k", split="train"),
        SubsetSpec(name="in22k-val", source="in22k", split="val"),
    )
}

_PCT = re.compile(r"^(?P<prefix>.+)-(?P<pct>\d+(\.\d+)?)pct$")


def source_kind(name: str) -> SourceKind:
    """The registered source kind ``name``, or an error listing the valid ones."""
    if name not in SOURCE_KINDS:
        raise SubsetError(f"unknown source kind {name!r}; valid: {', '.join(SOURCE_KINDS)}")
    return SOURCE_KINDS[name]


def fraction_name(prefix: str, fraction: FractionLike) -> str:
    """``'in1k-5pct'`` for (in1k, 0.05); ``'in1k-12.5pct'`` for 0.125: the exact
    percentage, so the name determines the fraction and the fraction the name."""
    return f"{prefix}-{percent_text(check_fraction(fraction))}pct"


def default_subsets(kind: SourceKind, prefix: str, with_val: bool) -> list[str]:
    """The subsets a build of ``kind`` writes when none are named."""
    names = [
        kind.full_name if (f == 1 and kind.full_name) else fraction_name(prefix, f)
        for f in kind.default_fractions
    ]
    if with_val or kind.holdout_per_class:
        names.append(f"{prefix}-val")
    return names


def resolve_subset(name: str, kind: SourceKind, prefix: str) -> SubsetSpec:
    """The spec of ``name`` for a build of ``kind`` naming its subsets ``<prefix>-…``."""
    spec = STANDARD_SUBSETS.get(name)
    if spec is not None:
        if spec.source != kind.name:
            raise SubsetError(
                f"subset {name} is drawn from source kind {spec.source}, but this build "
                f"reads source kind {kind.name} (pass --source-kind {spec.source})"
            )
        return spec
    if name == f"{prefix}-val":
        return SubsetSpec(name=name, source=kind.name, split="val")
    match = _PCT.match(name)
    if match and match["prefix"] == prefix:
        fraction = check_fraction(Fraction(match["pct"]) / 100, where=f"subset {name}")
        canonical = fraction_name(prefix, fraction)
        if name != canonical:  # one name per fraction: no two files of the same subset
            raise SubsetError(f"subset {name}: write it as {canonical}")
        return SubsetSpec(name=name, source=kind.name, split="train", fraction=fraction)
    valid = [n for n, s in STANDARD_SUBSETS.items() if s.source == kind.name]
    valid += [f"{prefix}-val", f"{prefix}-<N>pct"]
    raise SubsetError(
        f"unknown subset {name!r} (source kind {kind.name}); "
        f"valid: {', '.join(dict.fromkeys(valid))}"
    )


def load_class_list(name: str) -> tuple[str, ...]:
    """A named class list shipped in ``subsets/data/<name>.txt`` ('#' starts a comment)."""
    path = DATA_DIR / f"{name}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in DATA_DIR.glob("*.txt"))
        raise SubsetError(f"unknown class list {name!r}; valid: {', '.join(known)}")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return tuple(line for line in lines if line)


def check_prefix(prefix: str, kind: SourceKind) -> None:
    """Refuse a name prefix that is no file name, or whose names would be taken for
    standard subsets of other contents (``--name-prefix in100``: ``in100-val`` is the
    100 CMC classes, while ``in100-<N>pct`` would span every class)."""
    if not prefix or "/" in prefix or prefix.startswith(".") or "\0" in prefix:
        raise SubsetError(f"--name-prefix: not a usable file name prefix: {prefix!r}")
    if prefix == kind.name:
        return
    taken = [n for n in STANDARD_SUBSETS if n == prefix or n.startswith(f"{prefix}-")]
    if taken:
        raise SubsetError(
            f"--name-prefix {prefix}: its names would clash with the standard subsets "
            f"{', '.join(taken)}; choose another prefix"
        )
