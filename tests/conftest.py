"""Shared fixtures: the embedded demo data set (built once per session) and tiny cells."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

# The tests compare CPU runs to 1e-6 (exact resume, retries): on a machine with a GPU
# they stay on the CPU too. Tests marked ``gpu`` pick CUDA themselves.
os.environ.setdefault("MIMSCALE_DEVICE", "cpu")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo data set (ImageNet-style tree + manifests) in a session temp dir."""
    from subsets.demo import build_demo

    return build_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def tiny_cell(demo_dir: Path):
    """A factory of tiny CPU cells on the demo data; keyword overrides per section."""
    from scaling.config.schema import CellConfig, DataConfig, FinetuneConfig, PretrainConfig

    def make(
        *, model: str = "swinv2-nano", data: str = "demo-25pct", iterations: int = 6, **sections
    ) -> CellConfig:
        data_config = DataConfig(
            manifest_dir=str(demo_dir / "manifests"),
            root=str(demo_dir),
            val="demo-val",
            finetune_train="demo-25pct",
            finetune_val="demo-val",
            num_workers=0,
        )
        pretrain = PretrainConfig(
            batch_size=16,
            image_size=32,
            mask_patch_size=8,
            val_interval=3,
            val_limit=64,
            checkpoint_interval=3,
            log_interval=1,
        )
        finetune = FinetuneConfig(epochs=0.15, batch_size=16, image_size=32, eval_interval=0)
        return CellConfig(
            model=model,
            data=data,
            iterations=iterations,
            data_config=dataclasses.replace(data_config, **sections.get("data_config", {})),
            pretrain=dataclasses.replace(pretrain, **sections.get("pretrain", {})),
            finetune=dataclasses.replace(finetune, **sections.get("finetune", {})),
        )

    return make
