"""manifest_digest: computed from the rows, so a manifest whose rows changed is never trusted.

Issue 15 item 5: replacing a manifest's rows while keeping its metadata kept the same cell
ids. The digest stays the one recorded at build time (plan reads only the footer; cell ids
do not move), but every row is checked against it before a cell trusts it: any changed
value is refused, naming the file and the first offending row.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from subsets_fixtures import imagenet

from subsets.build import BuildConfig, build_subsets
from subsets.errors import SubsetError
from subsets.keys import path_keys
from subsets.manifest import manifest_digest, read_manifest_info


@pytest.fixture
def built(tmp_path: Path) -> Path:
    root = imagenet(tmp_path)
    build_subsets(
        BuildConfig(
            out_dir=tmp_path / "m", train=root / "train", subsets=("in1k-50pct", "in1k-100pct")
        )
    )
    return tmp_path / "m"


def _rewrite(manifest: Path, table: pa.Table, **options) -> None:
    """Write ``table`` under the manifest's own metadata (a hand edit; mtime moves on)."""
    meta = pq.read_schema(manifest).metadata
    before = manifest.stat().st_mtime_ns
    pq.write_table(table.replace_schema_metadata(meta), manifest, **options)
    os.utime(manifest, ns=(before + 10**9, before + 10**9))


def test_the_digest_is_the_recorded_one_once_the_rows_check(built: Path) -> None:
    """Cell ids do not change: the digest is the footer's, checked against every row."""
    half, full = built / "in1k-50pct.parquet", built / "in1k-100pct.parquet"
    assert manifest_digest(half) == read_manifest_info(half).digest
    assert manifest_digest(half) != manifest_digest(full)


def test_row_chunking_and_encoding_do_not_matter(built: Path) -> None:
    manifest = built / "in1k-100pct.parquet"
    before = manifest_digest(manifest)
    table = pq.read_table(manifest)
    plain_wnid = table.set_column(2, "wnid", table.column("wnid").cast(pa.string()))
    _rewrite(manifest, plain_wnid, row_group_size=7, use_dictionary=False)
    assert pq.ParquetFile(manifest).metadata.num_row_groups > 1
    assert manifest_digest(manifest) == before


def test_rows_replaced_under_kept_metadata_are_refused(built: Path) -> None:
    half, full = built / "in1k-50pct.parquet", built / "in1k-100pct.parquet"
    manifest_digest(half)  # cached: the rewrite must still be seen
    _rewrite(half, pq.read_table(full))
    with pytest.raises(
        SubsetError,
        match=rf"{half}: the rows were changed after the manifest was built \(it has \d+ rows, "
        r"its metadata says \d+\); rebuild it with `mimscale subsets build`",
    ):
        manifest_digest(half)


def _edit_key(table: pa.Table) -> pa.Table:
    keys = table.column("key").to_numpy().copy()
    keys[0] ^= 1
    return table.set_column(4, "key", pa.array(keys, pa.uint64()))


def _edit_path(table: pa.Table) -> pa.Table:
    paths = table.column("path").to_pylist()
    paths[1] = f"{paths[1]}.bak"
    return table.set_column(0, "path", pa.array(paths, pa.string()))


def _edit_path_and_key(table: pa.Table) -> pa.Table:
    table = _edit_path(table)
    return table.set_column(4, "key", pa.array(path_keys(table.column("path")), pa.uint64()))


def _edit_label_and_wnid(table: pa.Table) -> pa.Table:
    """Row 0 moved to the last class, consistently: only the recorded digest can tell."""
    labels = table.column("label").to_numpy().copy()
    labels[0] = labels[-1]
    wnids = table.column("wnid").cast(pa.string()).to_pylist()
    wnids[0] = wnids[-1]
    table = table.set_column(1, "label", pa.array(labels, pa.int32()))
    return table.set_column(2, "wnid", pa.array(wnids).dictionary_encode())


def _edit_wnid(table: pa.Table) -> pa.Table:
    wnids = table.column("wnid").cast(pa.string()).to_pylist()
    wnids[-1] = "n99999999"
    return table.set_column(2, "wnid", pa.array(wnids).dictionary_encode())


def _edit_split(table: pa.Table) -> pa.Table:
    split = pc.if_else(pa.array(np.arange(table.num_rows) == 2), "val", table.column("split"))
    return table.set_column(3, "split", split)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (_edit_key, r"row 0: its key is not the hash of its path"),
        (_edit_path, r"row 1: its key is not the hash of its path"),
        (_edit_path_and_key, r"its labels and keys do not match the digest [0-9a-f]{16}… in its"),
        (_edit_label_and_wnid, r"its labels and keys do not match the digest"),
        (_edit_wnid, r"row \d+: its wnid is not classes\[label\]"),
        (_edit_split, r"row 2: its split is not 'train'"),
    ],
)
def test_any_changed_value_is_refused(built: Path, edit, problem: str) -> None:
    manifest = built / "in1k-50pct.parquet"
    manifest_digest(manifest)
    _rewrite(manifest, edit(pq.read_table(manifest)))
    with pytest.raises(SubsetError, match=rf"{manifest}: the rows were changed .*\({problem}"):
        manifest_digest(manifest)


def test_a_missing_or_damaged_manifest_is_named(built: Path) -> None:
    with pytest.raises(SubsetError, match=rf"manifest {built}/nope\.parquet: no such file"):
        manifest_digest(built / "nope.parquet")
    manifest = built / "in1k-50pct.parquet"
    data = manifest.read_bytes()
    manifest.write_bytes(data[:100] + bytes(64) + data[164:])
    with pytest.raises(SubsetError, match=rf"{manifest}: unreadable Parquet data"):
        manifest_digest(manifest)


def test_trial_refuses_a_changed_manifest_before_writing(
    tmp_path: Path, demo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the CLI: exit 2, the file named, nothing written."""
    from study_helpers import tiny_tables, write_study

    from scaling.cli import main
    from scaling.config.load import dump_toml, load_study
    from scaling.config.parse import to_dict

    data = tmp_path / "data"
    shutil.copytree(demo_dir / "manifests", data / "manifests")
    (data / "train").symlink_to(demo_dir / "train")
    manifest = data / "manifests" / "demo-25pct.parquet"
    _rewrite(manifest, _edit_path(pq.read_table(manifest)))
    study = load_study(write_study(tmp_path / "s.toml", tiny_tables(data, tmp_path / "study")))
    cell_file = tmp_path / "cell.toml"
    cell_file.write_text(dump_toml(to_dict(study.cells()[0])))
    out = tmp_path / "out"
    assert main(["trial", str(cell_file), "-o", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: {manifest}: the rows were changed after the manifest was built (row 1: its "
        "key is not the hash of its path); rebuild it with `mimscale subsets build`\n"
    )
    assert not out.exists()
