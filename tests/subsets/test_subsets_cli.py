"""The subsets verbs: light imports, help, build's table, list and info."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from subsets_fixtures import imagenet

from scaling.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_cli_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, subsets.cli, scaling.cli; scaling.cli.build_parser(); "
        "print(sorted(m for m in ('numpy', 'pyarrow', 'pandas', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_help_lists_the_sub_verbs(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["subsets", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(verb in out for verb in ("build", "verify", "demo", "list", "info"))


def test_build_prints_a_table_per_manifest(tmp_path: Path, capsys: pytest.CaptureFixture):
    root = imagenet(tmp_path)
    argv = ["subsets", "build", "--train", str(root / "train"), "--val", str(root / "val")]
    assert main([*argv, "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert f"data root: {root}" in out
    assert "train: 72 images in 4 classes" in out
    header, *rows = out.split("manifest ", 1)[1].splitlines()[:6]
    assert header.split() == [
        "split",
        "classes",
        "images",
        "min",
        "median",
        "max",
        "digest",
        "status",
    ]
    assert rows[0].split()[:7] == ["in1k-10pct", "train", "4", "7", "1", "1.5", "3"]
    assert rows[4].split()[:7] == ["in1k-val", "val", "4", "12", "3", "3", "3"]
    assert all(row.split()[-1] == "written" for row in rows[:5])
    assert main([*argv, "--out", str(tmp_path / "m"), "--fraction", "0.05"]) == 0
    assert "in1k-5pct" in capsys.readouterr().out


def test_list_and_info(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["subsets", "list"]) == 0
    out = capsys.readouterr().out
    assert "in22k-val" in out and "in100_cmc" in out and "<prefix>-<N>pct" in out
    root = imagenet(tmp_path)
    train = str(root / "train")
    out_dir = str(tmp_path / "m")
    assert main(["subsets", "build", "--train", train, "--out", out_dir, "--fraction", ".5"]) == 0
    capsys.readouterr()
    assert main(["subsets", "info", str(tmp_path / "m" / "in1k-50pct.parquet")]) == 0
    out = capsys.readouterr().out
    assert "num_images: 37" in out and "fraction: 0.5" in out and "n01440764" in out
