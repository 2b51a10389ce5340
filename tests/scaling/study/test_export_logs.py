"""``mimscale export``: encoders and classifiers load in timm and compute what mimscale's
do; ``mimscale logs``: a stage's or a cell's logs from the store, followed while they grow."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest
import torch

from scaling.cli import main
from scaling.config.load import load_study
from scaling.study.logs import StageLogRef, follow
from scaling.study.more_verbs import study_graph
from scaling.study.store import ResultStore


def _two_sizes(tmp: Path, demo_dir: Path) -> Path:
    """A study of two sizes (SwinV2, ViT) with fine-tuning, its output beside it."""
    from study_helpers import tiny_tables, write_study

    tables = tiny_tables(
        demo_dir,
        tmp / "out",
        grid={"models": ["swinv2-nano", "vit-nano"], "data": ["demo-25pct"], "iterations": [4]},
        finetune={"enabled": True, "image_size": 32, "epochs": 0.1, "batch_size": 8},
    )
    return write_study(tmp / "study.toml", tables)


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    """The two-size study, nothing run."""
    return _two_sizes(tmp_path_factory.mktemp("planned"), demo_dir)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path):
    """The two-size study, pre-trained and fine-tuned stage by stage (about 25 s)."""
    from study_helpers import run_every_stage

    path = _two_sizes(tmp_path_factory.mktemp("finished"), demo_dir)
    return path, *run_every_stage(path)


def _timm_model(folder: Path, *, overlay_all: bool = True):
    import timm

    cfg = json.loads((folder / "config.json").read_text())
    overlay = {**cfg["pretrained_cfg"]} if overlay_all else {}
    overlay["file"] = str(folder / "model.safetensors")
    return timm.create_model(
        cfg["architecture"], pretrained=True, pretrained_cfg_overlay=overlay, **cfg["model_args"]
    ).eval(), cfg


@pytest.mark.slow
def test_exported_encoders_and_classifiers_load_in_timm(finished, tmp_path: Path, capsys) -> None:
    from scaling.model.build import create_classifier, create_encoder, load_encoder_state

    path, _study, _graph, store = finished
    assert main(["export", str(path), "--out", str(tmp_path / "x")]) == 0
    index = json.loads((tmp_path / "x" / "index.json").read_text())
    assert {e["model"] for e in index} == {"swinv2-nano", "vit-nano"}
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for entry in index:
        ckpt = store.read_bytes(f"stages/pretrain/{entry['pretrain_id']}/checkpoint.pt")
        state = torch.load(io.BytesIO(ckpt), weights_only=True)  # no code unpickled
        ours = create_encoder(entry["model"], img_size=32).eval()
        load_encoder_state(ours, state["state"]["encoder"])
        for overlay_all in (True, False):  # the full pretrained_cfg, or only the file
            model, cfg = _timm_model(Path(entry["encoder"]), overlay_all=overlay_all)
            assert cfg["mimscale"]["pretrain_id"] == entry["pretrain_id"]
            with torch.no_grad():
                torch.testing.assert_close(
                    model.forward_features(images), ours.forward_features(images)
                )
                torch.testing.assert_close(model(images), ours(images))
        if entry["model"] == "swinv2-nano":  # a detection / segmentation backbone (README)
            import timm

            folder = Path(entry["encoder"])
            cfg = json.loads((folder / "config.json").read_text())
            overlay = {**cfg["pretrained_cfg"], "file": str(folder / "model.safetensors")}
            backbone = timm.create_model(
                cfg["architecture"],
                pretrained=True,
                pretrained_cfg_overlay=overlay,
                features_only=True,
                out_indices=(0, 1, 2, 3),
                **cfg["model_args"],
            )
            maps = backbone(images)
            assert [m.shape[1:] for m in maps] == [(8, 8, 32), (4, 4, 64), (2, 2, 128), (1, 1, 256)]
            theirs, mine = backbone.state_dict(), ours.state_dict()
            assert theirs and all(
                torch.equal(v, mine[k.replace("layers_", "layers.")]) for k, v in theirs.items()
            )  # the trained weights, under the feature wrapper's flattened names
        # the classifier: the fine-tuned weights, the fine-tuning build
        model, cfg = _timm_model(Path(entry["classifier"]))
        ft = store.read_bytes(f"stages/finetune/{cfg['mimscale']['finetune_id']}/finetune.pt")
        classifier = torch.load(io.BytesIO(ft), weights_only=True)["state"]["classifier"]
        ref = create_classifier(
            entry["model"], num_classes=cfg["num_classes"], img_size=32, pretrain_img_size=32
        ).eval()
        ref.load_state_dict(classifier)
        with torch.no_grad():
            torch.testing.assert_close(model(images), ref(images))
        assert cfg["num_classes"] >= 2 and cfg["mimscale"]["top1"] is not None
    out = capsys.readouterr().out
    assert "2 cells exported" in out


@pytest.mark.slow
def test_export_selects_by_cell_and_by_where(finished, tmp_path: Path) -> None:
    path, _study, graph, _store = finished
    (_, _pid, fid), _ = graph.cells
    assert main(["export", str(path), "--cell", fid[:6], "--out", str(tmp_path / "a")]) == 0
    assert [e["cell_id"] for e in json.loads((tmp_path / "a/index.json").read_text())] == [fid]
    out = tmp_path / "b"
    assert main(["export", str(path), "--where", "model=vit-nano", "--out", str(out)]) == 0
    assert [e["model"] for e in json.loads((out / "index.json").read_text())] == ["vit-nano"]
    out = tmp_path / "c"  # the implicit target is named by its data
    assert main(["export", str(path), "--where", "target=demo-25pct", "--out", str(out)]) == 0
    assert len(json.loads((out / "index.json").read_text())) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cell", "ffffffffff"], "--cell ffffffffff: no cell or stage of the study has that id"),
        (["--where", "size=b"], "--where size=b: unknown key; valid: model, data, iterations"),
        (["--where", "target=inat18"], "the selection names no cell of the study"),
        (["--where", "model"], "--where 'model': expected KEY=VALUE"),
        (["--where", "model=swinv2-b"], "the selection names no cell of the study"),
    ],
)
def test_export_errors_name_the_flag_and_write_nothing(
    planned: Path, tmp_path: Path, capsys, argv: list[str], message: str
) -> None:
    path = planned
    assert main(["export", str(path), *argv, "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_export_into_a_file_is_refused(planned: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "x").write_text("not a folder")
    assert main(["export", str(planned), "--out", str(tmp_path / "x")]) == 2
    assert f"--out {tmp_path / 'x'}: is a file, not a folder" in capsys.readouterr().err


def test_export_under_a_file_is_refused(planned: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "x").write_text("not a folder")
    assert main(["export", str(planned), "--out", str(tmp_path / "x" / "sub")]) == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path / 'x' / 'sub'}: cannot write there ({tmp_path / 'x'} is a file" in err


def test_export_before_anything_finished(planned: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", str(planned), "--out", str(tmp_path / "x")]) == 2
    assert "none of the 2 selected cells has finished pre-training" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_logs_of_a_cell_and_of_a_stage(finished, capsys) -> None:
    path, _study, graph, _store = finished
    (_, pid, fid), _ = graph.cells
    assert main(["logs", str(path), fid]) == 0
    out = capsys.readouterr().out
    assert out.index(f"stages/pretrain/{pid}/log.txt <==") < out.index(
        f"stages/finetune/{fid}/log.txt <=="
    )
    assert f"pretrain stage {pid} done" in out and f"finetune stage {fid} done" in out
    assert main(["logs", str(path), pid[:8]]) == 0
    out = capsys.readouterr().out
    assert f"pretrain stage {pid} done" in out and "finetune stage" not in out
    assert main(["logs", str(path), pid, "--follow"]) == 0  # a finished stage: returns
    assert f"pretrain stage {pid} done" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("ident", "message"),
    [("nope", "'nope': no stage or cell of the study has that id"), ("", "''")],
)
def test_logs_of_an_unknown_id(planned: Path, capsys, ident: str, message: str) -> None:
    assert main(["logs", str(planned), ident]) == 2
    assert message in capsys.readouterr().err


def test_follow_prints_a_growing_log_until_the_result(tmp_path: Path) -> None:
    store = ResultStore(str(tmp_path / "out"))
    ref = StageLogRef("pretrain", "s1")
    chunks: list[str] = []

    def stage() -> None:
        for i in range(3):
            with open(tmp_path / "out/stages/pretrain/s1/log.txt", "a") as f:
                f.write(f"line {i}\n")
            time.sleep(0.15)
        store.write_bytes("stages/pretrain/s1/log.rank1.txt", b"rank 1 crashed\n")
        store.write_bytes("stages/pretrain/s1/result.parquet", b"x")

    (tmp_path / "out/stages/pretrain/s1").mkdir(parents=True)
    writer = threading.Thread(target=stage)
    writer.start()
    follow(store, [ref], chunks.append, poll_s=0.05, timeout_s=30)
    writer.join()
    text = "".join(chunks)
    assert "line 0\nline 1\nline 2\n" in text and len(chunks) > 3  # in pieces, as it grew
    assert text.index("line 2") < text.index("log.rank1.txt <==\nrank 1 crashed")


def test_logs_of_a_stage_that_has_not_run(planned: Path, capsys) -> None:
    graph = study_graph(load_study(planned))
    (_, pid, _), _ = graph.cells
    assert main(["logs", str(planned), pid]) == 0
    out = capsys.readouterr().out
    assert f"==> pretrain stage {pid}: no log yet (" in out
    assert main(["logs", str(planned), pid, "--poll", "0"]) == 2
    assert "--poll: must be in (0, 60] seconds, got 0.0" in capsys.readouterr().err
