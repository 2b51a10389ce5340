"""``mimscale subsets build|verify|demo|list|info``: the subset builder's verbs.

Imports nothing heavy at module level (``mimscale --help`` stays fast); each handler
imports what it needs. Handlers return an exit code; bad input raises SubsetError
(exit 2), ``verify`` returns 1 when it finds problems.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from scaling.argtypes import number_in


def _csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _fractions(text: str) -> list[str]:
    """The fractions as written: the build reads them exactly (0.1 is 1/10, not a float)."""
    return _csv_list(text)


def register(subparsers: Any) -> None:
    """Add the ``subsets`` verb and its sub-verbs to the top-level CLI."""
    parser = subparsers.add_parser(
        "subsets",
        help="build, verify and list deterministic ImageNet subset manifests",
        description="Deterministic, class-balanced, nested subsets of image trees, "
        "written as Parquet manifests.",
    )
    sub = parser.add_subparsers(dest="subsets_verb", metavar="SUBVERB")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    build = sub.add_parser(
        "build",
        help="scan sources and write manifests",
        description="Read a train source (and a val source) and write one manifest per "
        "subset. Paths in the manifests are relative to the data root (--root).",
        epilog="examples:\n"
        "  mimscale subsets build --train /data/imagenet/train --val /data/imagenet/val "
        "--out manifests/\n"
        "      in1k-{10,20,50,100}pct + in1k-val; paths like train/n01440764/x.JPEG under "
        "/data/imagenet\n"
        "  mimscale subsets build --train /data/imagenet/train --val /data/imagenet/val "
        "--subsets in100,in100-val --out manifests/\n"
        "  mimscale subsets build --train /data/imagenet/train --fraction 0.05 --out manifests/\n"
        "  mimscale subsets build --listing in22k.txt --source-kind in22k --out manifests/\n"
        "      in22k + in22k-val (5 held-out images per class); listing lines "
        "'n01234567/n01234567_1.JPEG n01234567'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = build.add_argument_group("sources")
    src.add_argument("--train", type=Path, help="train tree ROOT/<wnid>/<image>")
    src.add_argument(
        "--listing",
        type=Path,
        help="listing file of train: 'path wnid' lines or a path,wnid CSV, "
        "paths relative to the data root",
    )
    src.add_argument("--val", type=Path, help="val: class folders, or flat + LOC_val_solution.csv")
    src.add_argument(
        "--val-csv", type=Path, help="LOC_val_solution.csv (default: found beside --val)"
    )
    src.add_argument("--val-listing", type=Path, help="listing file of val")
    src.add_argument(
        "--root",
        type=Path,
        help="data root the paths are relative to (default: the common parent of --train/--val)",
    )
    src.add_argument(
        "--source-kind",
        default="in1k",
        help="in1k, in22k, demo or folder (see 'mimscale subsets list'; default: in1k)",
    )
    out = build.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, help="manifest directory")
    out.add_argument(
        "--subsets",
        type=_csv_list,
        default=[],
        help="comma-separated names "
        "(default: all of the source kind, e.g. in1k-{10,20,50,100}pct + in1k-val)",
    )
    out.add_argument(
        "--fraction",
        type=_fractions,
        action="extend",
        default=[],
        help="fraction(s) in (0, 1] to build, e.g. 0.05 -> in1k-5pct (without --subsets: "
        "only these)",
    )
    out.add_argument("--name-prefix", help="prefix of generated names (default: source kind)")
    out.add_argument(
        "--seed", type=number_in(int, 0, 2**63 - 1), default=0, help="selection seed (default: 0)"
    )
    out.add_argument(
        "--holdout-per-class",
        type=number_in(int, 1),
        default=None,
        help="in22k-val: held-out images per class (default: 5)",
    )
    out.add_argument(
        "--force", action="store_true", help="overwrite manifests built from another source or seed"
    )
    build.add_argument(
        "--workers", type=number_in(int, 1, 1024), default=8, help="scanning threads (default: 8)"
    )
    build.set_defaults(func=run_build)

    verify = sub.add_parser(
        "verify",
        help="check manifests against the images on disk",
        description="Check every manifest (metadata, labels, keys, digest, files). Exit "
        "code: 0 all good, 1 problems found, 2 a manifest could not be read (each is "
        "reported; the others are still checked).",
    )
    verify.add_argument("manifests", nargs="+", type=Path, metavar="MANIFEST")
    verify.add_argument("--root", type=Path, required=True, help="data root")
    verify.add_argument("--decode", action="store_true", help="also decode every image")
    verify.add_argument(
        "--workers", type=number_in(int, 1, 1024), default=8, help="threads (default: 8)"
    )
    verify.add_argument(
        "--limit", type=number_in(int, 0), default=10, help="offenders shown per problem"
    )
    verify.set_defaults(func=run_verify)

    from subsets.packcli import register_pack  # light: the handlers import what they need

    register_pack(sub)

    demo = sub.add_parser("demo", help="write the embedded demo data set and its manifests")
    demo.add_argument("out", type=Path, metavar="OUT")
    demo.add_argument("--no-manifests", action="store_true", help="write only the images")
    demo.set_defaults(func=run_demo)

    lister = sub.add_parser("list", help="list source kinds and standard subsets")
    lister.set_defaults(func=run_list)

    info = sub.add_parser("info", help="print a manifest's metadata")
    info.add_argument("manifests", nargs="+", type=Path, metavar="MANIFEST")
    info.set_defaults(func=run_info)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def run_build(args: argparse.Namespace) -> int:
    from subsets.build import BuildConfig, build_subsets
    from subsets.memory import keep_freed_memory
    from subsets.scan import format_skipped

    keep_freed_memory()  # this process only builds: page faults cost more than RSS

    result = build_subsets(
        BuildConfig(
            out_dir=args.out,
            source_kind=args.source_kind,
            train=args.train,
            listing=args.listing,
            val=args.val,
            val_csv=args.val_csv,
            val_listing=args.val_listing,
            data_root=args.root,
            subsets=tuple(args.subsets),
            fractions=tuple(args.fraction),
            name_prefix=args.name_prefix,
            seed=args.seed,
            holdout_per_class=args.holdout_per_class,
            force=args.force,
            workers=args.workers,
        )
    )
    if result.data_root is not None:
        print(f"data root: {result.data_root}")
    for source in result.sources:
        n_classes = int((source.counts > 0).sum())
        line = (
            f"{source.input}: {len(source.labels):,} images in {n_classes:,} classes "
            f"from {source.listing.origin}"
        )
        if source.listing.skipped:
            line += f"; skipped {format_skipped(source.listing.skipped)}"
        if source.listing.empty_classes:
            empty = source.listing.empty_classes
            line += f"; {len(empty)} empty class folders left out: {', '.join(empty[:10])}"
        print(line)
    rows = [["manifest", "split", "classes", "images", "min", "median", "max", "digest", "status"]]
    for m in result.manifests:
        rows.append(
            [
                m.info.name,
                m.info.split,
                f"{m.info.num_classes:,}",
                f"{m.info.num_images:,}",
                f"{m.per_class_min:,}",
                _number(m.per_class_median),
                f"{m.per_class_max:,}",
                m.info.digest[:16],
                m.status,
            ]
        )
    print(_table(rows))
    print(f"manifests in {args.out}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Verify every manifest; one that cannot be read is reported and the others go on.

    Exit code: 2 if a manifest was unreadable, else 1 if problems were found, else 0.
    """
    from subsets.errors import SubsetError
    from subsets.scan import check_root
    from subsets.verify import verify_manifest

    check_root(args.root, "root")
    failed = broken = 0
    checks = "paths, labels, keys, digest" + (", decode" if args.decode else "")
    for manifest in args.manifests:
        try:
            report = verify_manifest(
                manifest, args.root, decode=args.decode, workers=args.workers, limit=args.limit
            )
        except SubsetError as err:
            broken += 1
            print(f"{manifest}: BROKEN: {err}")
            print(f"error: {err}", file=sys.stderr)
            continue
        if report.ok:
            print(f"{manifest}: OK: {report.checked:,} images ({checks})")
            continue
        failed += 1
        summary = ", ".join(f"{n:,} {kind}" for kind, n in report.problems.items())
        print(f"{manifest}: FAILED: {report.checked:,} images checked ({checks}): {summary}")
        for kind, examples in report.examples.items():
            for example in examples:
                print(f"  {kind}: {example}")
    return 2 if broken else (1 if failed else 0)


def run_demo(args: argparse.Namespace) -> int:
    from subsets.demo import build_demo

    out = build_demo(args.out, manifests=not args.no_manifests)
    if not args.no_manifests:
        from subsets.manifest import read_manifest_info

        rows = [["manifest", "split", "classes", "images", "digest"]]
        for path in sorted((out / "manifests").glob("*.parquet")):
            info = read_manifest_info(path)
            row = [info.name, info.split, str(info.num_classes), f"{info.num_images:,}"]
            rows.append([*row, info.digest[:16]])
        print(_table(rows))
    print(
        f"demo data set in {out} (data root); train/, val/, LOC_val_solution.csv"
        + ("" if args.no_manifests else f"; manifests in {out / 'manifests'}")
    )
    return 0


def run_list(args: argparse.Namespace) -> int:
    from subsets.registry import SOURCE_KINDS, STANDARD_SUBSETS, default_subsets

    rows = [["source kind", "default subsets", "description"]]
    for kind in SOURCE_KINDS.values():
        names = ",".join(default_subsets(kind, kind.name, with_val=True))
        rows.append([kind.name, names, kind.description])
    print(_table(rows))
    print()
    rows = [["subset", "source", "split", "fraction", "classes"]]
    for spec in STANDARD_SUBSETS.values():
        rows.append(
            [
                spec.name,
                spec.source,
                spec.split,
                f"{float(spec.fraction):g}",
                spec.class_subset or "all",
            ]
        )
    print(_table(rows))
    print("\nany fraction: <prefix>-<N>pct (e.g. in1k-5pct, or --fraction 0.05)")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from subsets.manifest import read_manifest_info

    for manifest in args.manifests:
        info = read_manifest_info(manifest)
        print(f"{manifest}:")
        for key, value in info.__dict__.items():
            if key == "classes":
                value = f"{len(value)}: {', '.join(value[:5])}{' …' if len(value) > 5 else ''}"
            print(f"  {key}: {value}")
    return 0
