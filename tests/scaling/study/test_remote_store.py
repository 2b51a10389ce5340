"""A study whose ``output_dir`` is an S3 URI, end to end over the S3 protocol.

The bucket is served by moto's S3 server on localhost (pyarrow, Ray and boto3 reach it
through ``AWS_ENDPOINT_URL``, as they would reach MinIO or AWS), so everything a cell
writes — checkpoints, progress, curves, rows, the consolidated tables, Ray's own
experiment state and the report — goes through real S3 requests. A cell that crashes
mid-run resumes from its checkpoint in the bucket; a rerun finds the study complete;
``status`` and ``analyze`` read straight from the bucket.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from study_helpers import mimscale, tiny_tables, write_study

from scaling.study.store import ResultStore

pytestmark = pytest.mark.slow

BUCKET = "mimscale-results"


def test_study_on_s3_resumes_from_the_bucket_and_reports(
    tmp_path: Path, demo_dir: Path, s3_server
) -> None:
    uri = f"{s3_server.bucket(BUCKET)}/studies/tiny"
    tables = tiny_tables(demo_dir, uri, grid={"iterations": [4, 6]})  # type: ignore[arg-type]
    path = write_study(tmp_path / "study.toml", tables)
    marker = tmp_path / "failed-once"

    first = mimscale("run", str(path), env={"MIMSCALE_FAIL_AT": f"5:{marker}"}, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert marker.exists(), "the fault was not injected"
    assert "grid: 2 stages completed, 0 failed, 1 retries" in first.stdout
    assert f"report → {uri}/report/report.html" in first.stdout

    store = ResultStore(uri)
    assert store.fs.__class__.__name__ == "S3FileSystem"
    cells = store.read_table("cells.parquet").to_pandas()
    assert sorted(cells["iterations"]) == [4, 6] and (cells["status"] == "complete").all()
    for stage_id in cells["pretrain_id"]:
        keys = s3_server.keys(BUCKET, f"studies/tiny/stages/pretrain/{stage_id}/")
        names = {k.rsplit("/", 1)[1] for k in keys}
        assert {
            "stage.toml",
            "stage.json",
            "checkpoint.pt",
            "progress.json",
            "curves.parquet",
            "result.parquet",
        } <= names
        assert not any(".tmp" in n for n in names), "a temporary object was left behind"
    # the crashed cell resumed from its checkpoint at step 4: every point once, the curve whole
    curves = store.read_table("curves.parquet").to_pandas()
    long = curves[curves.cell_id == cells.loc[cells.iterations == 6, "cell_id"].item()]
    assert not long.duplicated(["phase", "step", "split", "metric"]).any()
    train_steps = long[(long.split == "train")].step.tolist()
    assert train_steps == [2, 4, 6]
    assert s3_server.keys(BUCKET, "studies/tiny/ray/"), "Ray's experiment state is not there"

    # again: complete, nothing runs
    again = mimscale("run", str(path), "--no-report", timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 complete, 0 to run" in again.stdout

    # pyarrow's Parquet/S3 thread pools used to abort ~1 status in 6 at interpreter exit
    # ("terminate called without an active exception", exit 134): every run exits 0
    for _ in range(12):
        status = mimscale("status", str(path))
        assert status.returncode == 0, status.stderr[-500:]
        assert "2 pretrain stages: 2 done" in status.stdout and "terminate" not in status.stderr

    out = tmp_path / "report"
    analyzed = mimscale("analyze", uri, "-o", str(out))
    assert analyzed.returncode == 0, analyzed.stderr[-3000:]
    assert (out / "report.html").stat().st_size > 10_000
    # the report analyze wrote from the bucket has the fits of the one run wrote into it
    assert json.loads((out / "fits.json").read_text()) == store.read_json("report/fits.json")


def test_a_joined_cluster_gets_the_drivers_storage_settings(
    tmp_path: Path, demo_dir: Path, s3_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers of a cluster joined by address start from their node's environment, not
    the driver's: the driver's ``AWS_*`` (the endpoint and keys its preflight used) reach
    them through the job's runtime_env, so a study on S3 runs there too."""
    from ray.cluster_utils import Cluster

    for key in s3_server.env:  # the node starts without the S3 settings
        monkeypatch.delenv(key)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    try:
        uri = f"{s3_server.bucket(BUCKET)}/studies/joined"
        tables = tiny_tables(demo_dir, uri, grid={"iterations": [4]})  # type: ignore[arg-type]
        path = write_study(tmp_path / "study.toml", tables)
        done = mimscale("run", str(path), "--address", cluster.address, "--no-report",
                        timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        assert "grid: 1 stages completed, 0 failed" in done.stdout
        cells = ResultStore(uri).read_table("cells.parquet").to_pandas()
        assert (cells["status"] == "complete").all()
    finally:
        cluster.shutdown()
