"""Packed shards: one copy serves every nested fraction, bytes are deterministic, every
image reads back as its file, digests catch damage, and bad input writes nothing."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from subsets_fixtures import imagenet

from scaling.cli import main
from subsets.build import BuildConfig, build_subsets
from subsets.errors import SubsetError
from subsets.manifest import read_manifest
from subsets.pack import PackConfig, pack_manifests
from subsets.packview import PackView
from subsets.shards import open_pack
from subsets.slowfs import latency_filesystem

FRACTIONS = ("in1k-10pct", "in1k-20pct", "in1k-50pct", "in1k-100pct")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data root, manifests of seed 0, a 50 % manifest of seed 1) over real JPEGs."""
    tmp = tmp_path_factory.mktemp("packdata")
    root = imagenet(tmp, real=True)
    build_subsets(BuildConfig(out_dir=tmp / "m", train=root / "train", val=root / "val"))
    build_subsets(BuildConfig(out_dir=tmp / "s1", train=root / "train", subsets=("in1k-50pct",),
                              seed=1))  # fmt: skip
    return root, tmp / "m", tmp / "s1" / "in1k-50pct.parquet"


def _manifests(folder: Path, names=(*FRACTIONS, "in1k-val")) -> list[Path]:
    return [folder / f"{n}.parquet" for n in names]


def _pack(root: Path, manifests: list[Path], out: Path, **options) -> Path:
    options = {"shard_bytes": 20_000, "block_bytes": 3_000, **options}
    pack_manifests(PackConfig(manifests=tuple(manifests), root=root, out_dir=out, **options))
    return out


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_every_image_reads_back_and_fractions_are_prefixes(data, tmp_path: Path) -> None:
    root, manifests, other = data
    pack = open_pack(_pack(root, [*_manifests(manifests), other], tmp_path / "p"))
    assert len(pack.shards) >= 3 and pack.num_blocks > len(pack.shards)
    sizes = []
    for manifest in [*_manifests(manifests), other]:
        table, info = read_manifest(manifest, columns=["path", "key"])
        rows = pack.rows_of(table.column("key").to_numpy(), info.name)
        images = pack.read_rows(rows)
        paths = table.column("path").to_pylist()
        assert images == [(root / p).read_bytes() for p in paths]
        assert pack.paths.take(rows).to_pylist() == paths
        if manifest != other and info.name in FRACTIONS:  # nested: the first rows of the pack
            assert sorted(rows.tolist()) == list(range(len(rows)))
            sizes.append(len(rows))
    assert sizes == sorted(sizes) and sizes[-1] == 72
    assert len(pack) == 72 + 12  # the train images once, plus val; seed 1's 50 % adds none


def test_shards_are_deterministic_and_independent_of_argument_order(data, tmp_path: Path):
    root, manifests, _ = data
    a = _pack(root, _manifests(manifests), tmp_path / "a")
    b = _pack(root, _manifests(manifests)[::-1], tmp_path / "b", workers=3)
    assert _files(a) == _files(b) and "index.parquet" in _files(a)


def test_shard_and_block_sizes(data, tmp_path: Path) -> None:
    root, manifests, _ = data
    pack = open_pack(_pack(root, _manifests(manifests), tmp_path / "p", block_rows=4))
    images = pack.sizes
    for i, shard in enumerate(pack.shards[:-1]):
        assert 20_000 <= shard["image_bytes"] < 20_000 + 3_000 + images.max() * 4
        assert pq.ParquetFile(tmp_path / "p" / shard["file"]).num_row_groups == shard["blocks"]
        assert i == 0 or shard["rows"] > 0
    per_block = np.diff(pack.block_starts)
    assert per_block.max() <= 4 and per_block.sum() == len(pack)


def test_one_ranged_read_per_block(data, tmp_path: Path) -> None:
    root, manifests, _ = data
    out = _pack(root, _manifests(manifests), tmp_path / "p")
    fs, counts = latency_filesystem(0.0)
    pack = open_pack(str(out), fs)
    opens, reads = counts.opens, counts.reads  # the index
    for block in range(pack.num_blocks):
        data_, starts = pack.block_bytes(block)
        rows = range(pack.block_starts[block], pack.block_starts[block + 1])
        images = [data_[s : s + pack.sizes[r]].tobytes() for s, r in zip(starts, rows, strict=True)]
        assert images == pack.read_block(block).to_pylist()  # what the Parquet reader sees
    parquet_reads = counts.reads - reads - pack.num_blocks
    assert counts.opens - opens == len(pack.shards)  # one handle per shard
    fs2, counts2 = latency_filesystem(0.0)
    pack2 = open_pack(str(out), fs2)
    before = counts2.reads
    for block in range(pack2.num_blocks):
        pack2.block_bytes(block)
    assert counts2.reads - before == pack2.num_blocks and parquet_reads > 0


def test_digests_catch_a_damaged_shard(data, tmp_path: Path, capsys) -> None:
    root, manifests, _ = data
    out = _pack(root, _manifests(manifests)[:1], tmp_path / "p")
    assert open_pack(out).verify() == {}
    assert main(["subsets", "pack-verify", str(out)]) == 0
    shard = out / "shard-00000.parquet"
    data_ = bytearray(shard.read_bytes())
    data_[100] ^= 0xFF
    shard.write_bytes(bytes(data_))
    assert list(open_pack(out).verify()) == ["shard-00000.parquet"]
    capsys.readouterr()
    assert main(["subsets", "pack-verify", str(out)]) == 1
    assert "shard-00000.parquet: FAILED: digest" in capsys.readouterr().out


def test_cli_packs_and_prints_its_shards(data, tmp_path: Path, capsys) -> None:
    root, manifests, _ = data
    argv = ["subsets", "pack", *map(str, _manifests(manifests)), "--root", str(root)]
    assert main([*argv, "--out", str(tmp_path / "p"), "--shard-size", "20k"]) == 0
    out = capsys.readouterr().out
    assert "84 images" in out and "in1k-100pct, in1k-10pct" in out and "shard-00000" in out
    assert "shard-00002" in out  # ~20 kB shards although the default block is 16 MB
    assert main([*argv, "--out", str(tmp_path / "p")]) == 2
    assert "already holds a pack; pass --force" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "p"), "--force"]) == 0
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["index.parquet", "shard-00000.parquet"]


def test_a_missing_image_writes_nothing(data, tmp_path: Path, capsys) -> None:
    root, manifests, _ = data
    table, _ = read_manifest(manifests / "in1k-10pct.parquet", columns=["path"])
    victim = root / table.column("path")[3].as_py()
    saved = victim.read_bytes()
    victim.unlink()
    try:
        argv = ["subsets", "pack", str(manifests / "in1k-100pct.parquet"), "--root", str(root)]
        assert main([*argv, "--out", str(tmp_path / "p"), "--shard-size", "5k"]) == 2
    finally:
        victim.write_bytes(saved)
    err = capsys.readouterr().err
    assert re.search(rf"error: {re.escape(str(victim))}: cannot read image: No such file", err)
    assert list((tmp_path / "p").iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shard-size", "0"], r"--shard-size: must be at least 1 byte, got '0'"),
        (["--block-size", "lots"], r"--block-size: not a size \(bytes, or with k/M/G\): 'lots'"),
        (["--workers", "0"], r"argument --workers: must be in \[1, 1024\], got '0'"),
        (["--block-rows", "nan"], r"argument --block-rows: not int: 'nan'"),
        (["--shard-size", "1e400"], r"argument --shard-size: must be at most 1P bytes"),
        (["--root", "{tmp}/nope"], r"error: --root .*nope: no such folder"),
        (["--root", "{manifest}"], r"error: --root .*in1k-10pct\.parquet: a file, not a folder"),
        (["--out", "{manifest}"], r"error: --out .*in1k-10pct\.parquet: not a folder"),
    ],
)
def test_cli_errors_exit_2(data, tmp_path: Path, capsys, args: list[str], message: str) -> None:
    root, manifests, _ = data
    manifest = manifests / "in1k-10pct.parquet"
    argv = ["subsets", "pack", str(manifest), "--root", str(root), "--out", str(tmp_path / "p")]
    argv += [a.format(tmp=tmp_path, manifest=manifest) for a in args]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "p").exists()


def test_a_manifest_not_in_the_pack(data, tmp_path: Path) -> None:
    root, manifests, other = data
    pack = open_pack(_pack(root, _manifests(manifests, ["in1k-10pct"]), tmp_path / "p"))
    keys = read_manifest(other, columns=["key"])[0].column("key").to_numpy()
    with pytest.raises(SubsetError, match=r"in1k-50pct: \d+ of its 37 images are not in the pack"):
        pack.rows_of(keys, "in1k-50pct")
    with pytest.raises(SubsetError, match=r"pack .*nowhere: no index\.parquet \(not a pack\?\)"):
        open_pack(tmp_path / "nowhere")


def test_a_view_reads_each_block_once_in_an_epoch(data, tmp_path: Path) -> None:
    root, manifests, _ = data
    out = _pack(root, _manifests(manifests), tmp_path / "p", block_rows=5)
    table, _ = read_manifest(manifests / "in1k-50pct.parquet", columns=["path", "key"])
    view = PackView(out, table.column("key").to_numpy(), "in1k-50pct", cache_blocks=3)
    paths = table.column("path").to_pylist()
    order = view.epoch_order(seed=0, epoch=2, window=3)
    assert [view.read(int(j)) for j in order] == [(root / paths[j]).read_bytes() for j in order]
    assert view.block_reads == len(np.unique(view.blocks)) > 3
    assert view.path(4) == paths[4]
    copy = pickle.loads(pickle.dumps(view))  # as a data-loader worker gets it
    assert copy.read(4) == view.read(4) and copy.block_reads == 1
    with pytest.raises(ValueError, match=r"cache_blocks: must be >= 1, got 0"):
        PackView(out, table.column("key").to_numpy(), "x", cache_blocks=0)


def test_a_local_pack_is_memory_mapped_and_reads_as_through_the_file_system(data, tmp_path):
    import pyarrow.fs as pafs

    root, manifests, _ = data
    out = _pack(root, _manifests(manifests), tmp_path / "p")
    mapped, through_fs = open_pack(out), open_pack(str(out), pafs.LocalFileSystem())
    for block in range(mapped.num_blocks):
        a, starts_a = mapped.block_bytes(block)
        b, starts_b = through_fs.block_bytes(block)
        assert a.tobytes() == b.tobytes() and starts_a.tolist() == starts_b.tolist()
    maps = Path("/proc/self/maps").read_text()  # the kernel's own list of this process's maps
    assert all(str(out / s["file"]) in maps for s in mapped.shards)


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_local_shard_names_its_file_and_block(data, tmp_path: Path, damage: str):
    root, manifests, _ = data
    out = _pack(root, _manifests(manifests), tmp_path / "p")
    shard = out / "shard-00001.parquet"
    shard.write_bytes(shard.read_bytes()[: 100 if damage == "truncated" else 0])
    pack = open_pack(out)
    last = int(np.flatnonzero(pack.block_shard == 1)[-1])  # the shard's last block
    group = int(pack.block_group[last])
    message = rf"pack .*p: shard-00001\.parquet block {group}: \d+ of \d+ bytes"
    with pytest.raises(SubsetError, match=message):
        pack.block_bytes(last)


def _edit_index(out: Path) -> None:
    """Rewrite the index with one offset moved, its metadata kept: valid Parquet, page
    checksums and all (as a tool that rewrote it would leave it)."""
    import pyarrow as pa

    index = pq.read_table(out / "index.parquet")
    offsets = index.column("offset").to_numpy().copy()
    offsets[3] += 1
    column = index.schema.get_field_index("offset")
    index = index.set_column(column, "offset", pa.array(offsets))
    pq.write_table(index, out / "index.parquet", write_page_checksum=True)


@pytest.mark.parametrize("damage", ["flipped byte", "edited"])
def test_pack_verify_checks_the_index(data, tmp_path: Path, capsys, damage: str) -> None:
    root, manifests, _ = data
    out = _pack(root, _manifests(manifests)[:1], tmp_path / "p")
    index = out / "index.parquet"
    if damage == "edited":
        _edit_index(out)
    else:
        raw = bytearray(index.read_bytes())
        raw[len(raw) // 4] ^= 0x10  # inside the first column's data page
        index.write_bytes(bytes(raw))
    capsys.readouterr()
    code = main(["subsets", "pack-verify", str(out)])
    captured = capsys.readouterr()
    if damage == "edited":
        assert code == 1
        assert re.search(r"^index\.parquet: FAILED: digest [0-9a-f]{32}, its metadata says",
                         captured.out, re.M)  # fmt: skip
        assert "shard-00000.parquet: OK" in captured.out
    else:
        assert code == 2
        assert re.search(r"error: pack .*p: unreadable index\.parquet: .*CRC", captured.err)


def test_a_manifest_changed_after_it_was_built_is_not_packed(data, tmp_path: Path, capsys):
    import pyarrow as pa

    root, manifests, _ = data
    source = manifests / "in1k-10pct.parquet"
    table = pq.read_table(source)
    keys = table.column("key").to_numpy().copy()
    keys[2] ^= 1
    edited = table.set_column(table.schema.get_field_index("key"), "key", pa.array(keys))
    pq.write_table(edited.replace_schema_metadata(table.schema.metadata), tmp_path / "m.parquet")
    argv = ["subsets", "pack", str(tmp_path / "m.parquet"), "--root", str(root)]
    assert main([*argv, "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"m\.parquet: the rows were changed after the manifest was built \(row 2", err)
    assert not (tmp_path / "p").exists()


def test_closing_a_pack_unmaps_its_shards_and_reading_reopens_them(data, tmp_path: Path):
    root, manifests, _ = data
    out = _pack(root, _manifests(manifests), tmp_path / "p")
    pack = open_pack(out)
    first = pack.block_bytes(0)[0].tobytes()
    shard = str(out / pack.shards[0]["file"])
    assert shard in Path("/proc/self/maps").read_text()
    pack.close()
    assert shard not in Path("/proc/self/maps").read_text()  # its pages can be evicted
    assert pack.block_bytes(0)[0].tobytes() == first
