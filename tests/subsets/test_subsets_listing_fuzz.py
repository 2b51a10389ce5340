"""Listings the tests never wrote by hand: aliases, NUL bytes, blank lines, encodings, damage.

A listing either builds exactly what a scan of the same tree builds, or fails with a
SubsetError naming the file and line (CLI: exit 2, nothing written), never a traceback.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from subsets_fixtures import imagenet, imagenet_flat_val, listing_text

from scaling.cli import main
from subsets.build import BuildConfig, build_subsets
from subsets.errors import SubsetError
from subsets.listing import read_listing

SUBSETS = ("in1k-20pct", "in1k-100pct")


def _build(out: Path, **kwargs) -> None:
    build_subsets(BuildConfig(out_dir=out, subsets=SUBSETS, **kwargs))


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.parquet"))}


@pytest.fixture
def scanned(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """The demo tree and the manifests a scan of it builds."""
    root = imagenet(tmp_path)
    _build(tmp_path / "scan", train=root / "train")
    return root, _files(tmp_path / "scan")


ALIASES = {
    "find .": lambda p: f"./{p}",
    "double slash": lambda p: p.replace("/", "//", 1),
    "dot part": lambda p: p.replace("/", "/./"),
    "many dots": lambda p: f"././{p.replace('/', '/.//')}",
    "mixed": lambda p: f"./{p}" if hash(p) % 2 else p,
}


@pytest.mark.parametrize("alias", ALIASES)
def test_a_listing_with_aliased_paths_selects_like_a_scan(
    tmp_path: Path, scanned: tuple[Path, dict[str, bytes]], alias: str
) -> None:
    root, expected = scanned
    lines = listing_text(root / "train", "train/", shuffle_seed=3).splitlines()
    spelled = [f"{ALIASES[alias](line.split(' ')[0])} {line.split(' ')[1]}" for line in lines]
    listing = tmp_path / "l.txt"
    listing.write_text("\n".join(spelled) + "\n")
    _build(tmp_path / "l", listing=listing)
    assert _files(tmp_path / "l") == expected
    rows = ["path,wnid"] + [",".join(line.split(" ")) for line in spelled]
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    _build(tmp_path / "c", listing=tmp_path / "l.csv")
    assert _files(tmp_path / "c") == expected


@pytest.mark.parametrize(
    ("second", "line"), [("./n01/a.JPEG", 3), ("n01//a.JPEG", 3), ("n01/./a.JPEG", 3)]
)
def test_two_spellings_of_one_file_are_a_duplicate(tmp_path: Path, second: str, line: int) -> None:
    listing = tmp_path / "l.txt"
    listing.write_text(f"n01/a.JPEG n01\nn01/b.JPEG n01\n{second} n01\n")
    with pytest.raises(
        SubsetError, match=rf"duplicate path 'n01/a.JPEG': .*l\.txt line 1 and .*l\.txt line {line}"
    ):
        build_subsets(BuildConfig(out_dir=tmp_path / "m", listing=listing, source_kind="folder"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("n01/a.JPEG n01\nn01/b.JPEG/ n01\n", r"line 2: path names a folder, not a file: 'n01/b"),
        ("n01/a.JPEG n01\n\nn01/b.JPEG/. n01\n", r"line 3: path names a folder, not a file"),
        ("n01/a.JPEG n01\n./ n01\n", r"line 2: path names a folder, not a file: '\./'"),
        ("n01/a.JPEG n01\nn01/b\0.JPEG n01\n", r"line 2: NUL byte: b'n01/b\\x00\.JPEG n01'"),
        ("n01/a.JPEG n01\nn01/b.JPEG n0\x001\n", r"line 2: NUL byte"),
        ("path,wnid\nn01/a.JPEG,n01\nn01/b\0.JPEG,n01\n", r"line 3: NUL byte in path"),
        ("path,wnid\nn01/a.JPEG,n01\nn01/b.JPEG,n\x0001\n", r"line 3: NUL byte"),
        (
            "path,wnid\nn01/a.JPEG,n01\n.//x/,n01\n",
            r"line 3: path names a folder, not a file: '\.//x/'",
        ),
        ("n01/a.JPEG n01\nn01/b.JPEG n01\nn01/c.JP", r"line 3: expected '<path> <wnid>'"),
        ("n01/a.JPEG n01\n\t\nn01/b.JPEG\tn01\n", r"line 3: expected '<path> <wnid>'"),
    ],
)
def test_listing_lines_that_are_refused(tmp_path: Path, text: str, message: str) -> None:
    listing = tmp_path / ("l.csv" if text.startswith("path,") else "l.txt")
    listing.write_bytes(text.encode())
    with pytest.raises(SubsetError, match=rf"l\.(txt|csv) {message}"):
        read_listing(listing)


def test_whitespace_only_lines_are_blank(tmp_path: Path) -> None:
    lines = ["n01/a.JPEG n01", "n01/b.JPEG n01", "n02/c.JPEG n02"]
    blank = ["", " ", "\t", "  \t ", "\r", "\f\v"]
    listing = tmp_path / "l.txt"
    listing.write_text("\n".join([lines[0], *blank, *lines[1:], " \t"]) + "\n")
    got = read_listing(listing)
    assert [got.paths[i] for i in range(3)] == ["n01/a.JPEG", "n01/b.JPEG", "n02/c.JPEG"]
    csv = tmp_path / "l.csv"
    rows = ["path,wnid", "  ", *[",".join(line.split(" ")) for line in lines], "\t"]
    csv.write_text("\r\n".join(rows))
    got = read_listing(csv)
    assert [got.paths[i] for i in range(3)] == ["n01/a.JPEG", "n01/b.JPEG", "n02/c.JPEG"]
    listing.write_text("n01/a.JPEG n01\n \nn01/b c.JPEG n01\n")  # line numbers skip nothing
    with pytest.raises(SubsetError, match=r"l\.txt line 3: expected '<path> <wnid>'"):
        read_listing(listing)


@pytest.mark.parametrize(
    ("encoding", "line"), [("utf-16", 1), ("latin-1", 2), ("cp1252", 2), ("utf-32", 1)]
)
def test_a_listing_in_another_encoding(tmp_path: Path, encoding: str, line: int) -> None:
    listing = tmp_path / "l.txt"
    listing.write_bytes("n01/a.JPEG n01\nn01/é.JPEG n01\n".encode(encoding))
    with pytest.raises(SubsetError, match=rf"l\.txt line {line}: (not valid UTF-8|NUL byte)"):
        read_listing(listing)


def test_fuzz_flipped_and_truncated_listings(tmp_path: Path) -> None:
    root = imagenet(tmp_path)
    data = listing_text(root / "train", "train/").encode()
    rng = random.Random(1)
    listing = tmp_path / "l.txt"
    outcomes = {"built": 0, "refused": 0}
    cases = [bytes(data[:n]) for n in rng.sample(range(len(data)), 20)]
    for _ in range(60):
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            flipped[rng.randrange(len(data))] = rng.choice(b"\0 \t\r\n/.\xff\xc3aZ")
        cases.append(bytes(flipped))
    for i, case in enumerate(cases):
        listing.write_bytes(case)
        out = tmp_path / f"m{i}"
        try:
            build_subsets(BuildConfig(out_dir=out, listing=listing, source_kind="folder"))
            outcomes["built"] += 1
        except SubsetError as err:
            assert re.search(r"l\.txt|duplicate path|folder-100pct", str(err)), str(err)
            assert not out.exists()
            outcomes["refused"] += 1
    assert outcomes["built"] and outcomes["refused"]


def test_val_csv_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = imagenet_flat_val(tmp_path)
    csv = root / "LOC_val_solution.csv"
    lines = csv.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b" 1 2", b" \xe9 2")
    csv.write_bytes(b"\n".join(lines))
    out = tmp_path / "m"
    argv = ["subsets", "build", "--train", str(root / "train"), "--val", str(root / "val")]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"error: .*LOC_val_solution\.csv line 3: not valid UTF-8: b'ILSVRC", err)
    assert not out.exists()
