"""Damaged and hand-edited manifests: verify names each as broken (exit 2) and goes on."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from subsets_fixtures import imagenet

from scaling.cli import main
from subsets.build import BuildConfig, build_subsets
from subsets.errors import SubsetError
from subsets.manifest import METADATA_KEY, read_manifest
from subsets.verify import verify_manifest


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Path]:
    root = imagenet(tmp_path)
    build_subsets(
        BuildConfig(out_dir=tmp_path / "m", train=root / "train", subsets=("in1k-50pct",))
    )
    return root, tmp_path / "m" / "in1k-50pct.parquet"


def _rewrite(manifest: Path, table: pa.Table, target: Path | None = None) -> Path:
    """Write ``table`` with the manifest's own metadata (a hand edit)."""
    meta = pq.read_schema(manifest).metadata
    target = target or manifest
    pq.write_table(table.replace_schema_metadata(meta), target)
    return target


def _invalid_utf8_paths(paths: list[str], row: int) -> pa.Array:
    data = [p.encode() for p in paths]
    data[row] = data[row][:-5] + b"\xff\xfe.JPG"
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in data])]).astype(np.int32)
    return pa.Array.from_buffers(
        pa.string(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))]
    )


def _damage(manifest: Path, how: str) -> Path:
    table = pq.read_table(manifest)
    target = manifest.with_name(f"{how}.parquet")
    if how == "dropped":
        return _rewrite(manifest, table.drop_columns(["key"]), target)
    if how == "null-label":
        labels = table.column("label").to_pylist()
        labels[3] = None
        return _rewrite(
            manifest, table.set_column(1, "label", pa.array(labels, pa.int32())), target
        )
    if how == "int64-label":
        return _rewrite(
            manifest, table.set_column(1, "label", table.column("label").cast("int64")), target
        )
    if how == "bad-utf8":
        paths = _invalid_utf8_paths(table.column("path").to_pylist(), 2)
        return _rewrite(manifest, table.set_column(0, "path", paths), target)
    raise AssertionError(how)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("dropped", r"dropped\.parquet: column 'key' is missing \(a manifest has path, label"),
        ("null-label", r"null-label\.parquet: column 'label' has 1 null values \(first at row 3\)"),
        ("int64-label", r"int64-label\.parquet: column 'label' is int64, expected int32"),
        ("bad-utf8", r"bad-utf8\.parquet: column 'path' row 2: not valid UTF-8"),
    ],
)
def test_a_hand_edited_manifest_is_a_located_error(
    built: tuple[Path, Path], how: str, message: str
) -> None:
    root, manifest = built
    broken = _damage(manifest, how)
    with pytest.raises(SubsetError, match=message):
        verify_manifest(broken, root)
    with pytest.raises(SubsetError, match=message):
        read_manifest(broken)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: [f], r"expected a JSON object, got list"),
        (lambda f: {**f, "classes": 5}, r"field 'classes' has the wrong type: 5"),
        (lambda f: {k: v for k, v in f.items() if k != "seed"}, r"field 'seed' is missing"),
        (lambda f: {**f, "colour": 1}, r"unknown fields \['colour'\]"),
        (lambda f: {**f, "num_images": True}, r"field 'num_images' has the wrong type: True"),
    ],
)
def test_hand_edited_metadata(built: tuple[Path, Path], edit, message: str) -> None:
    root, manifest = built
    table = pq.read_table(manifest)
    fields = json.loads(table.schema.metadata[METADATA_KEY])
    raw = json.dumps(edit(fields)).encode()
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: raw}), manifest)
    with pytest.raises(
        SubsetError, match=rf"in1k-50pct\.parquet: unreadable manifest metadata: {message}"
    ):
        verify_manifest(manifest, root)


def test_verify_reports_every_broken_manifest_and_goes_on(
    built: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    root, manifest = built
    broken = [_damage(manifest, how) for how in ("dropped", "null-label", "bad-utf8")]
    truncated = manifest.with_name("truncated.parquet")
    truncated.write_bytes(manifest.read_bytes()[:-100])
    argv = ["subsets", "verify", *map(str, [broken[0], manifest, *broken[1:], truncated])]
    assert main([*argv, "--root", str(root)]) == 2
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split(": ")[1] for line in lines] == ["BROKEN", "OK", "BROKEN", "BROKEN", "BROKEN"]
    assert "column 'key' is missing" in lines[0] and "truncated.parquet: not a Parquet" in lines[4]
    assert captured.err.count("error: ") == 4 and "Traceback" not in captured.err


def _verify_outcome(path: Path, root: Path) -> str:
    """'ok', 'problems' or 'broken': never an exception other than SubsetError."""
    try:
        report = verify_manifest(path, root)
    except SubsetError as err:
        assert str(path) in str(err)
        return "broken"
    return "ok" if report.ok else "problems"


def test_fuzz_flipped_bytes_and_truncations(built: tuple[Path, Path]) -> None:
    root, manifest = built
    data = manifest.read_bytes()
    rng = random.Random(0)
    footer = range(max(0, len(data) - 400), len(data))  # metadata, schema, row-group offsets
    positions = sorted(set(rng.sample(range(len(data)), 150)) | set(footer[::3]))
    outcomes: dict[str, int] = {}
    damaged = manifest.with_name("damaged.parquet")
    for position in positions:
        flipped = bytearray(data)
        flipped[position] ^= 1 << rng.randrange(8)
        damaged.write_bytes(bytes(flipped))
        outcome = _verify_outcome(damaged, root)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    for length in [0, 4, 8, 100, len(data) // 2, len(data) - 8, len(data) - 1]:
        damaged.write_bytes(data[:length])
        assert _verify_outcome(damaged, root) == "broken"
    assert outcomes.get("broken", 0) > 0 and outcomes.get("problems", 0) > 0
    assert sum(outcomes.values()) == len(positions)


def test_verify_with_a_bad_root_stops_at_once(
    built: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    root, manifest = built
    assert main(["subsets", "verify", str(manifest), "--root", str(root / "nope")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"error: root .*nope: no such folder", err)
