"""Keys, ranks and packed paths: the vectorised code agrees with the reference."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from subsets.keys import path_key, path_keys, rank_keys
from subsets.packed import byte_strings, pack, sort_within_groups


def _random_paths(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcXYZ019_/.-é漢"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 41))) for _ in range(n)]


def test_key_algorithm_is_pinned() -> None:
    # Manifests store keys and downstream code seeds masks from them: values must not drift.
    golden = {
        "": 0x0BD04A9B5578E5AB,
        "a": 0xF48F988E3606AFBC,
        "abcdefgh": 0x72446AC096EDF22E,
        "train/n01440764/n01440764_10026.JPEG": 0x972C70542CEDDB05,
    }
    assert {p: path_key(p) for p in golden} == golden
    assert path_keys(list(golden)).tolist() == list(golden.values())
    key_a = np.array([golden["a"]], dtype=np.uint64)
    assert int(rank_keys(key_a, 0)[0]) == 0x681C4F9B70C5C50E
    assert int(rank_keys(key_a, 1)[0]) == 0x7FC7678E7C7904F4


def test_length_is_part_of_the_key() -> None:
    assert path_key("abcdefgh") != path_key("abcdefgh\x00")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_keys_equal_reference(seed: int) -> None:
    paths = _random_paths(500, seed) + ["x" * n for n in range(0, 33)]
    assert [path_key(p) for p in paths] == path_keys(paths).tolist()


def test_keys_of_arrow_slices_and_chunks() -> None:
    paths = _random_paths(300, 7)
    chunked = pa.chunked_array([pa.array(paths[:100]), pa.array(paths[100:])])
    sliced = pa.array(paths).slice(50, 200)
    assert path_keys(chunked).tolist() == [path_key(p) for p in paths]
    assert path_keys(sliced).tolist() == [path_key(p) for p in paths[50:250]]


def test_rank_keys_depend_on_seed_and_are_bijective() -> None:
    keys = path_keys([f"c/{i}.jpg" for i in range(1000)])
    r0, r1 = rank_keys(keys, 0), rank_keys(keys, 1)
    assert len(set(r0.tolist())) == 1000
    assert not np.array_equal(np.argsort(r0), np.argsort(r1))
    assert np.array_equal(r0, rank_keys(keys, 0))


def test_packed_paths_round_trip_and_sort_in_byte_order() -> None:
    paths = _random_paths(400, 3)
    packed = pack(paths)
    assert [packed[i] for i in range(len(paths))] == paths
    assert packed.to_arrow(chunk_rows=64).to_pylist() == paths
    order = sort_within_groups(packed, np.array([len(paths)]))
    expected = sorted(paths, key=lambda p: p.encode())
    assert [packed[i] for i in range(len(paths))] == expected
    assert [paths[i] for i in order] == expected


def test_packed_in_a_given_order() -> None:
    paths = ["b/2.jpg", "a/1.jpg", "c/333333333.jpg"]
    packed = byte_strings(paths).pack(np.array([2, 0, 1]))
    assert packed.to_arrow().to_pylist() == ["c/333333333.jpg", "b/2.jpg", "a/1.jpg"]


def test_image_suffixes_any_case() -> None:
    names = ["a.jpg", "B.JPEG", "c.PnG", "d.webp", "e.txt", "f.jpgx", "jpg", "long/name.JpEg"]
    kept = byte_strings(names).ends_with_any((b".jpg", b".jpeg", b".png", b".webp"))
    assert kept.tolist() == [True, True, True, True, False, False, False, True]
