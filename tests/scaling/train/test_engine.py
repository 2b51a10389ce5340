"""The shared training loop: the order of its hooks, host reads only when needed, NaN stops."""

from __future__ import annotations

import collections
import itertools
import math
import traceback
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from scaling.model.simmim import build_simmim
from scaling.train.loop import LossWindow, NonFiniteLoss, Phase, make_scaler
from scaling.train.optim import build_pretrain_optimizer

CPU = torch.device("cpu")
# Tensor methods that copy a value to the host: on a GPU each one waits for the queue.
HOST_READS = {"item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy", "cpu"}


class HostReads(TorchFunctionMode):
    """Counts host reads of tensors by (method, file, line) of the caller."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: collections.Counter[tuple[str, str, int]] = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            caller = traceback.extract_stack()[-2]
            where = "/".join(caller.filename.split("/")[-2:])
            self.seen[(name, where, caller.lineno)] += 1
        return func(*args, **(kwargs or {}))


def _phase(events: list[tuple[str, int]], **overrides: Any) -> Phase:
    settings: dict[str, Any] = {
        "iterations": 8,
        "lr_of": lambda s: 1e-3,
        "loss_fn": lambda m, b: m(*b),
        "accum_steps": 2,
        "clip_grad": 5.0,
        "log_interval": 4,
        "eval_interval": 0,
        "checkpoint_interval": 0,
        "evaluate": lambda s, lr: events.append(("eval", s)),
        "log": lambda s, loss, lr: events.append(("log", s)),
        "checkpoint": lambda s, window: events.append(("checkpoint", s)),
    }
    return Phase(**(settings | overrides))


def _simmim() -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(0)
    model = build_simmim("swinv2-nano", img_size=32, drop_path_rate=0.1)
    # fused AdamW (the CUDA default) reads no step counters back; the CPU has it too
    optimizer = build_pretrain_optimizer(model, lr=1e-3, fused=True)
    batch = (torch.randn(4, 3, 32, 32), (torch.rand(4, 8, 8) > 0.4).to(torch.uint8))
    return model, optimizer, itertools.repeat(batch)


def test_steps_read_nothing_back_but_the_loss_window() -> None:
    """8 steps of 2 micro-batches, clipping on, logging every 4: two reads in all."""
    model, optimizer, batches = _simmim()
    events: list[tuple[str, int]] = []
    reads = HostReads()
    with reads:
        _phase(events).run(
            model, optimizer, make_scaler(CPU, None), batches, step=0, device=CPU, dtype=None
        )
    assert events == [("log", 4), ("log", 8)]
    assert sum(reads.seen.values()) == 2, reads.seen
    ((name, where, _),) = reads.seen
    assert (name, where) == ("tolist", "train/loop.py")


def test_hook_order_and_resume_from_a_step() -> None:
    model, optimizer, batches = _simmim()
    events: list[tuple[str, int]] = []
    phase = _phase(events, iterations=6, log_interval=2, eval_interval=3, checkpoint_interval=2)
    phase.after_step = lambda s: events.append(("after", s))
    end = phase.run(
        model, optimizer, make_scaler(CPU, None), batches, step=1, device=CPU, dtype=None
    )
    assert end == 6
    # fmt: off
    expected = [
        ("log", 2), ("after", 2), ("checkpoint", 2),
        ("after", 3),
        ("eval", 3), ("log", 4), ("after", 4), ("checkpoint", 4),  # eval before step 3 trains
        ("after", 5),
        ("log", 6), ("after", 6),  # no checkpoint at the end: the caller writes the result
    ]
    # fmt: on
    assert events == expected


def test_a_nan_loss_stops_the_loop_before_the_next_checkpoint() -> None:
    model, optimizer, _ = _simmim()
    images = torch.randn(4, 3, 32, 32)
    masks = (torch.rand(4, 8, 8) > 0.4).to(torch.uint8)
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    # micro-batches 0..5 fine (steps 0-2), then NaN images from step 3 on
    batches = itertools.chain(itertools.repeat((images, masks), 6), itertools.repeat((bad, masks)))
    events: list[tuple[str, int]] = []
    phase = _phase(events, log_interval=100, checkpoint_interval=2)
    with pytest.raises(NonFiniteLoss) as info:
        phase.run(model, optimizer, make_scaler(CPU, None), batches, step=0, device=CPU, dtype=None)
    assert info.value.step == 3
    assert events == [("checkpoint", 2)], "the checkpoint at step 4 must not be written"


def test_loss_window_means_and_reports_the_first_bad_step() -> None:
    window = LossWindow()
    for step, value in enumerate([1.0, 2.0, 3.0]):
        window.add(step, torch.tensor(value))
    window.read()
    window.add(3, torch.tensor(6.0))
    assert window.mean() == pytest.approx(3.0)
    assert window.mean() == 0.0  # cleared
    window.add(4, torch.tensor(1.0))
    window.add(5, torch.tensor(float("inf")))
    window.add(6, torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLoss, match="non-finite loss inf at step 5"):
        window.read()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_never_synchronizes() -> None:
    """A bf16, channels-last step with fused AdamW and clipping, under CUDA's sync checker."""
    from scaling.cell.pretrain import to_model_input
    from scaling.train.loop import accumulate, optimizer_step

    cuda = torch.device("cuda")
    torch.manual_seed(0)
    model = build_simmim("swinv2-nano", img_size=32).to(cuda)
    model = model.to(memory_format=torch.channels_last)
    optimizer = build_pretrain_optimizer(model, lr=1e-3)
    assert optimizer.defaults["fused"]
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8).pin_memory()
    masks = (torch.rand(8, 8, 8) > 0.4).to(torch.uint8).pin_memory()
    scaler = make_scaler(cuda, torch.bfloat16)

    def loss_fn(m: torch.nn.Module, b: Any) -> torch.Tensor:
        return m(*to_model_input(b, cuda, channels_last=True))

    def step() -> torch.Tensor:
        loss = accumulate(
            model, itertools.repeat((images, masks)), 2, loss_fn, scaler, cuda, torch.bfloat16
        )
        optimizer_step(model, optimizer, scaler, clip_grad=5.0)
        return loss

    step()  # first-call set-up (cuBLAS handles, the cached mean/std) may synchronize
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [step() for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(torch.stack(losses)).tolist())


def test_a_resumed_window_logs_the_same_mean() -> None:
    """A checkpoint between two log steps keeps the open log window: resumed there, the run
    logs exactly the means of the uninterrupted run (branches start at such fork steps)."""
    import copy

    logged: dict[str, list[float]] = {"straight": [], "resumed": []}
    saved: dict[str, Any] = {}
    model, optimizer, batches = _simmim()

    def keep(step: int, window: list[float]) -> None:
        saved.update(
            step=step,
            window=window,
            model=copy.deepcopy(model.state_dict()),
            optimizer=copy.deepcopy(optimizer.state_dict()),
            rng=torch.get_rng_state(),
        )

    settings = {"iterations": 6, "log_interval": 4, "checkpoint_interval": 0}
    phase = _phase(
        [], **settings, save_at=frozenset({3}), checkpoint=keep,
        log=lambda s, loss, lr: logged["straight"].append(loss),
    )  # fmt: skip
    phase.run(model, optimizer, make_scaler(CPU, None), batches, step=0, device=CPU, dtype=None)
    assert saved["step"] == 3 and len(saved["window"]) == 3, "steps 0-2 are in the open window"

    model, optimizer, batches = _simmim()
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    phase = _phase([], **settings, log=lambda s, loss, lr: logged["resumed"].append(loss))
    phase.run(
        model, optimizer, make_scaler(CPU, None), batches, step=3, device=CPU, dtype=None,
        window=saved["window"],
    )  # fmt: skip
    assert logged["resumed"] == logged["straight"]  # bit for bit, both log steps


def test_the_window_mean_gradient_norm_is_logged_without_extra_reads() -> None:
    """The step's gradient norm travels with its loss (one transfer per log) and its window
    mean is handed to ``log_grad_norm`` (the trackers' train/grad_norm)."""
    model, optimizer, batches = _simmim()
    norms: list[tuple[int, float]] = []
    reads = HostReads()
    with reads:
        _phase(
            [], iterations=8, log_interval=4, log_grad_norm=lambda s, n: norms.append((s, n))
        ).run(model, optimizer, make_scaler(CPU, None), batches, step=0, device=CPU, dtype=None)
    assert sum(reads.seen.values()) == 2, reads.seen
    assert [s for s, _ in norms] == [4, 8]
    assert all(math.isfinite(n) and n > 0 for _, n in norms)
