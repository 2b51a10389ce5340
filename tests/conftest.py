"""Shared fixtures: the embedded demo data set (built once per session), tiny cells, and a
local S3 server."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@dataclasses.dataclass(frozen=True)
class S3Server:
    """A local S3 server (moto) on 127.0.0.1, reached over HTTP as MinIO or AWS would be."""

    endpoint: str
    """``http://127.0.0.1:<port>``."""
    env: dict[str, str]
    """``AWS_*`` variables that reach it (the ``s3_server`` fixture sets them for the test, so
    pyarrow, boto3, Ray and child processes find it)."""

    def client(self) -> Any:
        """A boto3 S3 client of this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def bucket(self, name: str) -> str:
        """Make an empty bucket ``name``; returns its URI ``s3://<name>``."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """The object keys in ``bucket`` under ``prefix``, sorted."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        found = (o["Key"] for page in pages for o in page.get("Contents", []))
        return sorted(k for k in found if k.startswith(prefix))


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A fresh local S3 server with no buckets (make them with ``.bucket(name)``); the
    environment of the test reaches it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        yield S3Server(endpoint=endpoint, env=env)
    finally:
        server.stop()
