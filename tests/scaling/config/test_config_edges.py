"""Study files as editors save them (found by an adversarial pass over the CLI's inputs):
a UTF-8 byte-order mark made ``mimscale plan`` fail with ``invalid TOML: Invalid statement
(at line 1, column 1)``; a UTF-16 file was "not UTF-8 (byte 0xff)" with no word of why."""

from __future__ import annotations

from pathlib import Path

import pytest
from study_helpers import study_text, tiny_tables

from scaling.config.identity import study_hash
from scaling.config.load import load_study
from scaling.config.parse import ConfigError


def _text(tmp_path: Path) -> str:
    return study_text(tiny_tables(tmp_path / "data", tmp_path / "out"))


def test_a_utf8_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    plain, marked = tmp_path / "plain.toml", tmp_path / "marked.toml"
    plain.write_text(_text(tmp_path), encoding="utf-8")
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert study_hash(load_study(marked)) == study_hash(load_study(plain))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_utf16_is_named(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "study.toml"
    text = _text(tmp_path)
    path.write_bytes(("\ufeff" + text if encoding == "utf-16-be" else text).encode(encoding))
    with pytest.raises(ConfigError, match=rf"^{path}: UTF-16 text \(a UTF-16 byte-order mark\)"):
        load_study(path)


@pytest.mark.parametrize("crop", ["[0.9, 0.1]", "[0.0, 1.0]", "[0.5, 1.5]", "[-0.2, 0.5]"])
def test_crop_scale_out_of_order_or_range_is_refused(tmp_path: Path, crop: str) -> None:
    """``[0.9, 0.1]`` was accepted (torchvision only warns and crops anyway)."""
    path = tmp_path / "study.toml"
    path.write_text(_text(tmp_path), encoding="utf-8")
    message = r"pretrain\.crop_scale: must be \[min, max\] with 0 < min <= max <= 1, got \["
    with pytest.raises(ConfigError, match=rf"^{path} \(--set\): {message}"):
        load_study(path, [f"pretrain.crop_scale={crop}"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("pretrain.batch_size=99999999999999999999999", "pretrain.batch_size"),
        ("pretrain.batch_size=1e23", "pretrain.batch_size"),
        ("grid.iterations=[10000000000000000000000]", r"grid.iterations\[0\]"),
    ],
)
def test_an_integer_beyond_64_bits_is_refused(tmp_path: Path, override: str, key: str) -> None:
    """Such a batch size or length was accepted: ``plan`` printed 1e23-image batches, and a
    run would overflow the int64 of a Parquet column or a torch step counter."""
    path = tmp_path / "study.toml"
    path.write_text(_text(tmp_path), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{key}: must fit in 64 bits \(at most 9,223,"):
        load_study(path, [override])
    with pytest.raises(ConfigError, match=r"grid\.seeds\[0\]: must fit in 64 bits"):
        load_study(path, ["grid.seeds=[-99999999999999999999]"])


def test_a_bad_list_element_from_set_says_set(tmp_path: Path) -> None:
    """``--set grid.iterations=[0]`` named only the file's line (where the list holds good
    values): the element's key ``grid.iterations[0]`` did not match the override's."""
    tables = tiny_tables(tmp_path / "data", tmp_path / "out")
    path = tmp_path / "study.toml"
    path.write_text(study_text(tables), encoding="utf-8")
    line = next(
        i for i, t in enumerate(path.read_text().splitlines(), 1) if t.startswith("iterations")
    )
    with pytest.raises(ConfigError, match=rf"^{path}:{line} \(--set\): grid\.iterations\[0\]: "):
        load_study(path, ["grid.iterations=[0]"])
    path.write_text(path.read_text().replace("iterations = [", "iterations = [0, "))
    with pytest.raises(ConfigError, match=rf"^{path}:{line}: grid\.iterations\[0\]: must be > 0"):
        load_study(path)  # the file's own bad value: no "(--set)"
