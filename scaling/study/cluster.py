"""Which Ray cluster ``mimscale run`` joins, and whether it answers, checked before anything
is written (issue 15 item 4). No ray import here: ``grid.connect`` does the joining.

``--address`` (or ``RAY_ADDRESS``) forms and what is tried for each, within ``timeout_s``:

* none, or ``local``: a private local instance (nothing to reach);
* ``auto``: the cluster a ``ray start`` on this machine recorded (Ray's own lookup);
* ``ray://host:port``: Ray Client (the ``ray[client]`` extra), probed like the next;
* ``host:port``: the cluster's GCS, which must accept a TCP connection first — a refused
  connection fails at once, silence fails after ``timeout_s`` (Ray itself would keep
  retrying for many minutes).
"""

from __future__ import annotations

import os
import socket
import time

from scaling.errors import UserError

CONNECT_TIMEOUT_S = 60.0


class ClusterError(UserError):
    """The Ray cluster to join cannot be reached or joined."""


def requested_address(address: str | None) -> tuple[str | None, str]:
    """(address to join or None for a local instance, where it came from)."""
    if address:
        return (None if address == "local" else address), "--address"
    env = os.environ.get("RAY_ADDRESS") or None
    return (None if env == "local" else env), "RAY_ADDRESS"


def _host_port(address: str, origin: str) -> tuple[str, int]:
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(
            f"{origin} {address}: not an address; give host:port (the head node's GCS, "
            "default port 6379), auto, ray://host:port or local"
        )
    return host.strip("[]"), int(port)


def probe(address: str, origin: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse an address whose cluster cannot be reached, saying what was tried."""
    if address == "auto":
        return  # Ray's lookup answers at once either way; grid.connect words its error
    host, port = _host_port(address, origin)  # ray://: the Ray Client server's port
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(left, 0.1)):
                return
        except ConnectionRefusedError:
            why = "connection refused"
        except socket.gaierror as err:
            why = f"unknown host ({err.strerror})"
        except OSError as err:
            why = err.strerror or type(err).__name__
            if (
                deadline - time.monotonic() > 1
            ):  # no answer yet (a firewall drops, a node boots): try again
                time.sleep(1)
                continue
        raise ClusterError(
            f"{origin} {address}: cannot reach a Ray cluster there (tried a TCP connection to "
            f"{host}:{port} for up to {timeout_s:g} s: {why}); start one with `ray start "
            "--head`, check the address, or leave --address out for a local instance"
        )


def join_error(address: str, origin: str, err: BaseException) -> ClusterError:
    """What ``ray.init`` raised, said for a user: the address, what was tried, the fix."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if address == "auto":
        hint = (
            "no Ray cluster was started on this machine (`ray start --head`), and "
            "RAY_ADDRESS is not set"
        )
    elif address.startswith("ray://") and "ray[client]" in text:
        hint = "Ray Client needs the extra: pip install 'ray[client]'"
    else:
        hint = text
    return ClusterError(f"{origin} {address}: could not join the Ray cluster: {hint}")
