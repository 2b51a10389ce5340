"""Exact fractions: the name is a function of the fraction, half-up rounding in integers,
and the standard fractions select exactly as before (manifests and cell ids depend on it)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from subsets_fixtures import imagenet, make_tree

from scaling.cli import main
from subsets.build import BuildConfig, build_subsets
from subsets.errors import SubsetError
from subsets.manifest import read_manifest_info
from subsets.registry import SOURCE_KINDS, fraction_name, resolve_subset
from subsets.select import check_fraction, fraction_counts, percent_text

# Content digests of manifests built before fractions became exact (commit 174db7a^):
# the standard fractions must keep selecting the same rows.
GOLDEN_FIXTURE = {
    "in1k-10pct": "a1795f681110f0ca277afc8d1c701f8a",
    "in1k-20pct": "ae66c7714e11a7017b20550e964195d9",
    "in1k-50pct": "6ec14f09ff205139c86b9cc593f64ded",
    "in1k-100pct": "0476228efd26dc156e8a7cc604730cae",
    "in1k-val": "27fee8cd37112e0d81674ecabe22157b",
}
GOLDEN_WIDE = {
    "in1k-10pct": "64143efbe12cb0e2c33cd4d1d3e41eb8",
    "in1k-20pct": "24b09740b1888d52ff773e8181a88630",
    "in1k-50pct": "3c688c28da1b4ab627b188767293fe79",
    "in1k-100pct": "d91c69a7ad1a177671fa515beddb269e",
}
GOLDEN_DEMO = {
    "demo-100pct": "609210bad7eee808e8f3055f46c11909",
    "demo-25pct": "4b00cf5e71f7f11e6ab3aa0617714937",
    "demo-50pct": "a524c5132609111753848886545ea973",
    "demo-val": "3c2fa0e935bf5a3b8582e3a3df0af384",
}


def _digests(results) -> dict[str, str]:
    return {m.info.name: m.info.digest for m in results}


def test_standard_fractions_select_exactly_as_before(tmp_path: Path, demo_dir: Path) -> None:
    root = imagenet(tmp_path)
    built = build_subsets(
        BuildConfig(out_dir=tmp_path / "a", train=root / "train", val=root / "val")
    )
    assert _digests(built.manifests) == GOLDEN_FIXTURE
    sizes = {f"n{i:08d}": 1 + (i * 7919) % 1300 for i in range(40)}  # every residue of 10
    wide = make_tree(tmp_path / "wide" / "train", sizes)
    assert (
        _digests(build_subsets(BuildConfig(out_dir=tmp_path / "b", train=wide)).manifests)
        == GOLDEN_WIDE
    )
    demo = {
        p.stem: read_manifest_info(p).digest for p in (demo_dir / "manifests").glob("*.parquet")
    }
    # the demo's standard manifests select exactly as before (it has gained smaller ones)
    assert {name: demo[name] for name in GOLDEN_DEMO} == GOLDEN_DEMO


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.25, 0.5, 1.0])
def test_exact_counts_equal_the_float_formula_for_standard_fractions(fraction: float) -> None:
    counts = np.arange(0, 300_001, dtype=np.int64)
    before = np.maximum(np.floor(counts * fraction + 0.5).astype(np.int64), 1)  # earlier code
    assert np.array_equal(fraction_counts(counts, fraction), before)


def test_half_up_rounding_is_exact() -> None:
    assert fraction_counts(np.array([100]), 0.145).tolist() == [15]  # float: 14.499… → 14
    assert fraction_counts(np.array([100]), "0.145").tolist() == [15]
    assert fraction_counts(np.array([10, 30, 50]), Fraction(1, 20)).tolist() == [1, 2, 3]
    huge = Fraction(1, 10**12)  # int64 would overflow in 2·n·p + q: Python integers
    assert fraction_counts(np.array([5 * 10**11, 10**13]), huge).tolist() == [1, 10]


@pytest.mark.parametrize(
    ("fraction", "name"),
    [
        (0.1, "in1k-10pct"),
        ("0.10", "in1k-10pct"),
        (0.125, "in1k-12.5pct"),
        ("0.123456789", "in1k-12.3456789pct"),
        (1e-7, "in1k-0.00001pct"),
        ("1e-7", "in1k-0.00001pct"),
        (Fraction(1, 8), "in1k-12.5pct"),
        (1, "in1k-100pct"),
    ],
)
def test_the_name_is_the_exact_fraction(fraction, name: str) -> None:
    assert fraction_name("in1k", fraction) == name
    spec = resolve_subset(name, SOURCE_KINDS["in1k"], "in1k")
    assert (
        spec.fraction == check_fraction(fraction) and fraction_name("in1k", spec.fraction) == name
    )


def test_percent_text() -> None:
    cases = {Fraction(1): "100", Fraction(1, 4): "25", Fraction(3, 400): "0.75"}
    assert {f: percent_text(f) for f in cases} == cases
    with pytest.raises(ValueError, match="no finite decimal percentage"):
        percent_text(Fraction(1, 3))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1/3", r"--fraction: '1/3' is 33\.33\d+ percent, which a subset name cannot carry"),
        ("1e-20", r"--fraction: '1e-20' is 1e-18 percent.*at most 12 decimals"),
        ("x", r"--fraction: must be a number in \(0, 1\], got 'x'"),
        ("nan", r"--fraction: must be a number in \(0, 1\], got 'nan'"),
        ("0", r"--fraction: must be in \(0, 1\], got '0'"),
    ],
)
def test_fractions_a_name_cannot_carry(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(SubsetError, match=message):
        build_subsets(BuildConfig(out_dir=tmp_path / "m", train=tmp_path, fractions=(value,)))


@pytest.mark.parametrize(
    ("name", "canonical"), [("in1k-10.0pct", "in1k-10pct"), ("in1k-012.50pct", "in1k-12.5pct")]
)
def test_one_name_per_fraction(tmp_path: Path, name: str, canonical: str) -> None:
    with pytest.raises(SubsetError, match=rf"subset {name}: write it as {canonical}"):
        build_subsets(BuildConfig(out_dir=tmp_path / "m", train=tmp_path, subsets=(name,)))


def test_close_fractions_and_tiny_fractions_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = imagenet(tmp_path)
    out = tmp_path / "m"
    argv = ["subsets", "build", "--train", str(root / "train"), "--out", str(out)]
    assert main([*argv, "--fraction", "0.123456789,0.1234567891", "--fraction", "1e-7"]) == 0
    names = sorted(p.stem for p in out.glob("*.parquet"))
    assert names == ["in1k-0.00001pct", "in1k-12.34567891pct", "in1k-12.3456789pct"]
    info = read_manifest_info(out / "in1k-12.3456789pct.parquet")
    assert info.fraction == 0.123456789 and info.num_images == 8  # 1+1+2+4 images (half up)
    assert read_manifest_info(out / "in1k-0.00001pct.parquet").num_images == 4  # one a class
    assert "in1k-0.00001pct" in capsys.readouterr().out
