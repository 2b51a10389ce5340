"""``mimscale subsets pack`` and ``pack-verify``: packed shards (see :mod:`subsets.pack`).

Light at import, like :mod:`subsets.cli`: handlers import the heavy modules.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from scaling.argtypes import number_in


def _size(text: str) -> int:
    """``'768M'``, ``'1G'``, ``'64k'`` or a plain number of bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip()
    scale = units.get(text[-1:].lower(), 1)
    try:
        value = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size (bytes, or with k/M/G): {text!r}") from None
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
    if not value <= 1 << 50:  # a petabyte: also inf, which int() cannot take
        raise argparse.ArgumentTypeError(f"must be at most 1P bytes, got {text!r}")
    return int(value)


def register_pack(sub: Any) -> None:
    """Add ``pack`` and ``pack-verify`` to the ``subsets`` sub-verbs."""
    pack = sub.add_parser(
        "pack",
        help="pack the images of manifests into Parquet shards",
        description="Write the images of the manifests (their union, each image once) into "
        "Parquet shards of ~--shard-size with an index.parquet mapping every key and path to "
        "(shard, block, row) and a digest per shard. Nested fractions are prefixes of the "
        "pack: pack in1k-100pct (and in1k-val) once and every in1k-*pct reads from it.",
        epilog="example:\n  mimscale subsets pack manifests/in1k-100pct.parquet "
        "manifests/in1k-val.parquet --root /data/imagenet --out /data/in1k-pack",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pack.add_argument("manifests", nargs="+", type=Path, metavar="MANIFEST")
    pack.add_argument("--root", type=Path, required=True, help="data root of the manifests")
    pack.add_argument("--out", type=Path, required=True, help="pack folder")
    pack.add_argument("--shard-size", type=_size, default="768M", help="default: 768M")
    pack.add_argument(
        "--block-size", type=_size, default="16M", help="bytes per block (one read); 16M"
    )
    pack.add_argument(
        "--block-rows", type=number_in(int, 1), default=4096, help="rows per block at most"
    )
    pack.add_argument(
        "--workers", type=number_in(int, 1, 1024), default=8, help="reading threads (default: 8)"
    )
    pack.add_argument("--force", action="store_true", help="replace a pack in --out")
    pack.add_argument(
        "--pixels",
        action="store_true",
        help="store every image decoded (the pixels each CPU decode mode reads, the same as "
        "from the file; ~9× the bytes of JPEGs): a crop costs a copy and a resize, not a "
        'decode; not for decode = "gpu"',
    )
    pack.set_defaults(func=run_pack)
    check = sub.add_parser(
        "pack-verify", help="check the index (its digest) and recompute the shard digests of a pack"
    )
    check.add_argument("location", metavar="PACK", help="pack folder or URI (s3://…)")
    check.set_defaults(func=run_pack_verify)


def run_pack(args: argparse.Namespace) -> int:
    from subsets.cli import _table
    from subsets.pack import PackConfig, pack_manifests

    result = pack_manifests(
        PackConfig(
            manifests=tuple(args.manifests),
            root=args.root,
            out_dir=args.out,
            shard_bytes=args.shard_size,
            block_bytes=args.block_size,
            block_rows=args.block_rows,
            workers=args.workers,
            force=args.force,
            pixels=args.pixels,
        )
    )
    rows = [["shard", "images", "blocks", "MiB", "digest"]]
    for shard in result.shards:
        mib = f"{shard['bytes'] / 2**20:,.1f}"
        rows.append([shard["file"], f"{shard['rows']:,}", str(shard["blocks"]), mib])
        rows[-1].append(shard["digest"][:16])
    print(_table(rows))
    names = ", ".join(m["name"] for m in result.manifests)
    kind = " decoded" if args.pixels else ""
    print(f"{result.images:,}{kind} images ({result.image_bytes / 2**30:,.2f} GiB) of {names}")
    print(f"pack in {args.out} (index.parquet)")
    return 0


def run_pack_verify(args: argparse.Namespace) -> int:
    from subsets.packlayout import INDEX_NAME
    from subsets.shards import open_pack

    pack = open_pack(args.location)
    problems = pack.verify()
    index = problems.get(INDEX_NAME)
    print(f"{INDEX_NAME}: {'FAILED: ' + index if index else 'OK'}")
    for shard in pack.shards:
        problem = problems.get(shard["file"])
        print(f"{shard['file']}: {'FAILED: ' + problem if problem else 'OK'}")
    return 1 if problems else 0
