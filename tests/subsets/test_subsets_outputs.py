"""Outputs and inputs that cannot be used: exit 2 naming the path, before anything is written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from subsets_fixtures import imagenet, run_cli_obeying_permissions

from scaling.cli import main
from subsets.build import BuildConfig, build_subsets
from subsets.errors import SubsetError


def _argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["subsets", "build", "--train", str(root / "train"), "--out", str(out), *extra]


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_out_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = imagenet(tmp_path)
    out = tmp_path / "out.txt"
    out.write_text("x")
    assert main(_argv(root, out)) == 2
    assert re.search(rf"error: --out {re.escape(str(out))}: not a folder", capsys.readouterr().err)
    assert out.read_text() == "x"


def test_out_whose_parent_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = imagenet(tmp_path)
    parent = tmp_path / "file"
    parent.write_text("x")
    assert main(_argv(root, parent / "deeper" / "m")) == 2
    err = capsys.readouterr().err
    assert re.search(rf"--out .*/file/deeper/m: {re.escape(str(parent))} is a file, not a", err)
    assert parent.read_text() == "x"


def test_out_that_is_not_writable(tmp_path: Path) -> None:
    root = imagenet(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        done = run_cli_obeying_permissions(_argv(root, locked / "m"))
        assert done.returncode == 2, done.stderr
        assert re.search(r"error: --out .*/locked/m: folder cannot be created: .*/locked is not "
                         r"writable", done.stderr)  # fmt: skip
        done = run_cli_obeying_permissions(_argv(root, locked))
        assert done.returncode == 2 and "locked: folder is not writable" in done.stderr
        assert "Traceback" not in done.stderr and not list(locked.iterdir())
    finally:
        locked.chmod(0o755)


def test_a_class_folder_that_cannot_be_read(tmp_path: Path) -> None:
    root = imagenet(tmp_path)
    folder = root / "train" / "n01443537"
    folder.chmod(0o000)
    try:
        done = run_cli_obeying_permissions(_argv(root, tmp_path / "m"))
    finally:
        folder.chmod(0o755)
    assert done.returncode == 2, done.stderr
    assert re.search(r"error: cannot read class folder .*/train/n01443537: Permission denied",
                     done.stderr)  # fmt: skip
    assert "Traceback" not in done.stderr and not (tmp_path / "m").exists()


def test_force_checks_every_target_before_the_first_write(tmp_path: Path) -> None:
    root = imagenet(tmp_path)
    out = tmp_path / "m"
    names = ("in1k-10pct", "in1k-20pct", "in1k-50pct")
    build_subsets(BuildConfig(out_dir=out, train=root / "train", subsets=names[:2]))
    (out / "in1k-50pct.parquet").mkdir()
    before = _tree_bytes(out)
    with pytest.raises(
        SubsetError, match=r"--out .*/m: in1k-50pct\.parquet exists and is not a file; remove it"
    ):
        build_subsets(
            BuildConfig(out_dir=out, train=root / "train", subsets=names, seed=7, force=True)
        )
    assert _tree_bytes(out) == before and (out / "in1k-50pct.parquet").is_dir()


@pytest.mark.parametrize(
    ("prefix", "kind", "message"),
    [
        ("in100", "in1k", r"--name-prefix in100: its names would clash with the standard "
                          r"subsets in100, in100-val; choose another prefix"),
        ("in1k", "folder", r"--name-prefix in1k: .*in1k-10pct, in1k-20pct"),
        ("in22k", "in1k", r"--name-prefix in22k: .*standard subsets in22k, in22k-val"),
        ("", "in1k", r"--name-prefix: not a usable file name prefix: ''"),
    ],
)  # fmt: skip
def test_a_name_prefix_that_clashes_with_standard_subsets(
    tmp_path: Path, prefix: str, kind: str, message: str
) -> None:
    root = imagenet(tmp_path)
    config = BuildConfig(
        out_dir=tmp_path / "m", train=root / "train", source_kind=kind, name_prefix=prefix
    )
    with pytest.raises(SubsetError, match=message):
        build_subsets(config)
    assert not (tmp_path / "m").exists()
