"""Reaching a Ray cluster (issue 15 item 4): refused, silent and malformed addresses fail fast
with what was tried; ``ray.init``'s own errors are worded for a user."""

from __future__ import annotations

import socket
import time

import pytest

from scaling.study.cluster import ClusterError, join_error, probe, requested_address


def test_a_refused_port_fails_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(
        ClusterError,
        match=r"^--address 127\.0\.0\.1:1: cannot reach a Ray cluster there \(tried a TCP "
        r"connection to 127\.0\.0\.1:1 for up to 60 s: connection refused\); start one with "
        r"`ray start --head`",
    ):
        probe("127.0.0.1:1", "--address")
    assert time.monotonic() - started < 5


def test_silence_fails_after_the_timeout() -> None:
    """A port whose accept queue is full drops new connections: no answer, no refusal."""
    with socket.create_server(("127.0.0.1", 0), backlog=0) as server:
        port = server.getsockname()[1]
        queued = socket.create_connection(("127.0.0.1", port))  # fills the queue
        started = time.monotonic()
        with pytest.raises(
            ClusterError, match=rf"127\.0\.0\.1:{port} for up to 3 s: (timed out|\w+)"
        ):
            probe(f"127.0.0.1:{port}", "RAY_ADDRESS", timeout_s=3)
        queued.close()
    assert 2.5 < time.monotonic() - started < 10


def test_a_listening_port_passes() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        probe(f"127.0.0.1:{server.getsockname()[1]}", "--address", timeout_s=5)


@pytest.mark.parametrize("address", ["head-node", "head:port", "ray://", "h:0", ":6379"])
def test_a_malformed_address_is_named(address: str) -> None:
    with pytest.raises(ClusterError, match=rf"^--address {address}: not an address; give"):
        probe(address, "--address")


def test_unknown_hosts_are_named() -> None:
    with pytest.raises(ClusterError, match=r"no-such-host\.invalid:6379 .*: unknown host"):
        probe("no-such-host.invalid:6379", "--address", timeout_s=2)


def test_ray_errors_are_worded_for_a_user() -> None:
    err = ConnectionError("Could not find any running Ray instance. Please specify ...")
    assert str(join_error("auto", "--address", err)) == (
        "--address auto: could not join the Ray cluster: no Ray cluster was started on this "
        "machine (`ray start --head`), and RAY_ADDRESS is not set"
    )
    err = ValueError("Ray Client requires pip package `ray[client]`. If you installed ...")
    assert str(join_error("ray://h:10001", "RAY_ADDRESS", err)) == (
        "RAY_ADDRESS ray://h:10001: could not join the Ray cluster: Ray Client needs the "
        "extra: pip install 'ray[client]'"
    )


def test_where_the_address_comes_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert requested_address(None) == (None, "RAY_ADDRESS")
    assert requested_address("local") == (None, "--address")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert requested_address(None) == ("10.0.0.5:6379", "RAY_ADDRESS")
    assert requested_address("auto") == ("auto", "--address")


def test_a_joined_cluster_gets_storage_and_tracker_settings_only() -> None:
    from scaling.study.grid import forwarded_env

    driver = {
        "AWS_ENDPOINT_URL": "http://minio:9000", "AWS_SECRET_ACCESS_KEY": "s",
        "WANDB_API_KEY": "k", "MLFLOW_TRACKING_URI": "http://mlflow", "AZURE_STORAGE_KEY": "a",
        "GOOGLE_APPLICATION_CREDENTIALS": "/c.json", "PATH": "/bin", "HOME": "/root",
        "TORCH_HOME": "/t", "MIMSCALE_FAIL_AT": "3:/x", "RAY_ADDRESS": "auto", "XAWS_": "no",
    }  # fmt: skip
    assert forwarded_env(driver) == {
        k: driver[k]
        for k in ("AWS_ENDPOINT_URL", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY",
                  "MLFLOW_TRACKING_URI", "AZURE_STORAGE_KEY", "GOOGLE_APPLICATION_CREDENTIALS")
    }  # fmt: skip
