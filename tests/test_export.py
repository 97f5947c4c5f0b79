"""Trained encoders leave as timm model folders that give graphssl's evaluated features, and come back in."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from mlflow import MlflowClient

from conftest import PIPELINES, trained_modules_file
from graphssl import registry
from graphssl.cli import main
from graphssl.component import BuildContext
from graphssl.export import ExportError, export_payload, read_modules
from graphssl.ops.features import frozen_features
from graphssl.ops.patches import sincos_2d
from graphssl.tracking import Tracker

IMAGE = 16
MEAN, STD = (0.2860, 0.2860, 0.2860), (0.3530, 0.3530, 0.3530)


def trained_encoder(seed=0, **overrides):
    """An encoder.vit whose every weight moved away from its initialisation."""
    cls = registry.get("encoder.vit")
    params = dict(arch="vit_tiny_patch16_224", patch_size=4, depth=2, embed_dim=32, num_heads=2)
    params.update(overrides)
    torch.manual_seed(seed)
    module = cls(cls.Config(**params), BuildContext(image_size=IMAGE, channels=3))
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return module.eval()


def entry(module):
    return {"type": module.type_name, "config": module.config.model_dump(mode="json"), "state_dict": module.state_dict()}


def knn_entry(encoder, feature):
    cls = registry.get("eval.knn")
    return {"type": "eval.knn", "config": cls.Config(encoder=encoder, feature=feature).model_dump(mode="json"), "state_dict": {}}


def payload(nodes):
    return {"nodes": nodes, "pipeline": "test", "image_size": IMAGE, "channels": 3}


def timm_features(folder, x):
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


@pytest.mark.parametrize("feature, overrides", [
    ("mean", dict(pos_embed="sincos", mask_mode="drop")),
    ("cls", dict(layer_scale=0.1, mlp_ratio=2.0)),
])
def test_timm_folder_gives_the_evaluated_feature(tmp_path, feature, overrides):
    encoder = trained_encoder(**overrides)
    done = export_payload(payload({"encoder": entry(encoder), "knn": knn_entry("encoder", feature)}), tmp_path / "out", MEAN, STD)
    assert (done.node, done.feature) == ("encoder", feature)
    x = torch.randn(6, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))
    expected = frozen_features(encoder, x, lambda images: images, feature)
    torch.testing.assert_close(timm_features(tmp_path / "out", x), expected, rtol=0, atol=1e-5)

    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224"
    args = config["model_args"]
    assert (args["depth"], args["embed_dim"], args["num_heads"], args["patch_size"], args["in_chans"]) == (2, 32, 2, 4, 3)
    assert list(args["img_size"]) == [IMAGE, IMAGE] and args["num_classes"] == 0
    assert args["global_pool"] == {"cls": "token", "mean": "avg"}[feature]
    assert args.get("fc_norm") is (False if feature == "mean" else None)
    if "layer_scale" in overrides:
        assert (args["init_values"], args["mlp_ratio"]) == (0.1, 2.0)
    cfg = config["pretrained_cfg"]
    assert list(cfg["input_size"]) == [3, IMAGE, IMAGE] and cfg["crop_pct"] == 1.0
    assert cfg["mean"] == pytest.approx(MEAN) and cfg["std"] == pytest.approx(STD)
    assert config["graphssl"]["node"] == "encoder" and config["graphssl"]["feature"] == feature
    data_cfg = timm.data.resolve_data_config({}, model=timm.create_model(f"local-dir:{tmp_path / 'out'}"))
    assert data_cfg["mean"] == pytest.approx(MEAN)


def test_sincos_positions_come_out_identical(tmp_path):
    encoder = trained_encoder(pos_embed="sincos", mask_mode="drop")
    export_payload(payload({"encoder": entry(encoder), "knn": knn_entry("encoder", "mean")}), tmp_path / "out", MEAN, STD)
    model = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True)
    assert torch.equal(model.pos_embed.data, sincos_2d(32, 4, 4, cls_token=True)[None])


def test_default_node_is_the_evaluated_ema_copy(tmp_path):
    student, teacher_copy = trained_encoder(seed=1), trained_encoder(seed=2)
    nodes = {"student": entry(student),
             "teacher": {"type": "teacher.ema", "config": {"of": ["student"]}, "state_dict": {}},
             "teacher.student": entry(teacher_copy), "knn": knn_entry("teacher.student", "cls")}
    done = export_payload(payload(nodes), tmp_path / "out", MEAN, STD)
    assert done.node == "teacher.student"
    x = torch.randn(2, 3, IMAGE, IMAGE)
    torch.testing.assert_close(timm_features(tmp_path / "out", x), frozen_features(teacher_copy, x, lambda i: i, "cls"),
                               rtol=0, atol=1e-5)
    # --node and --feature choose otherwise
    other = export_payload(payload(nodes), tmp_path / "student", MEAN, STD, node="student", feature="mean")
    assert (other.node, other.feature) == ("student", "mean")


def test_what_cannot_be_exported_says_why(tmp_path):
    nodes = {"encoder": entry(trained_encoder()), "head": {"type": "head.features", "config": {"in_dim": 32, "out_dim": 8},
                                                          "state_dict": {}}}
    with pytest.raises(ExportError, match="no evaluator names an encoder.*--node"):
        export_payload(payload(nodes), tmp_path / "a", MEAN, STD)
    with pytest.raises(ExportError, match="head.features, not an encoder"):
        export_payload(payload(nodes), tmp_path / "b", MEAN, STD, node="head")
    with pytest.raises(ExportError, match='did you mean "encoder"'):
        export_payload(payload(nodes), tmp_path / "c", MEAN, STD, node="encodr")
    (tmp_path / "bad.pt").write_bytes(b"")
    with pytest.raises(ExportError, match="cannot read"):
        read_modules(tmp_path / "bad.pt")


# ----------------------------------------------------------------------------- end to end, through the CLI

# a large lr without warm-up, so that two steps move the k-NN accuracy (40 bank and 40 query images)
TINY_MAE = ["train.steps=2", "train.lr=2.0", "train.warmup=0", "data.limit=64", "data.batch_size=8", "eval.limit=60",
            "nodes.encoder.depth=1", "nodes.decoder.depth=1", "device=cpu"]


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
    """One tiny trained MAE run in its own folder and store: (folder, client, run)."""
    folder = tmp_path_factory.mktemp("mae_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert main(["run", str(PIPELINES / "mae.yaml"), *TINY_MAE, "train.checkpoint_every=1", "--run-name", "source"]) == 0
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("graphssl").experiment_id], "attributes.run_name = 'source'")[0]
    return folder, client, run


@pytest.mark.slow
def test_round_trip_export_then_continue_from_the_folder(mae_run, monkeypatch, capsys):
    folder, client, run = mae_run
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["export", "source", "-o", "encoder_out"]) == 0
    assert "local-dir:encoder_out" in capsys.readouterr().out
    # timm's model from the folder gives graphssl's features of the trained encoder on a fixed batch
    from graphssl.artifacts import load_checkpoint_module

    trained = load_checkpoint_module(trained_modules_file(client, run, folder), "encoder", torch.device("cpu"))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(timm_features(folder / "encoder_out", x), frozen_features(trained, x, lambda i: i, "mean"),
                               rtol=0, atol=1e-5)
    # the folder as the encoder's checkpoint: its k-NN at initialisation is the source's final k-NN
    assert main(["run", str(PIPELINES / "mae.yaml"), *TINY_MAE, "nodes.encoder.checkpoint=encoder_out",
                 "--run-name", "continued"]) == 0
    assert "loaded 18 tensors from encoder_out" in capsys.readouterr().out
    continued = client.search_runs([run.info.experiment_id], "attributes.run_name = 'continued'")[0]
    assert run.data.metrics["knn_top1"] != run.data.metrics["knn_top1_init"]  # training moved it: the check can fail
    assert continued.data.metrics["knn_top1_init"] == run.data.metrics["knn_top1"]


@pytest.mark.slow
def test_export_by_id_prefix_and_checkpoint_folder(mae_run, monkeypatch, tmp_path):
    folder, client, run = mae_run
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["export", run.info.run_id[:10], "-o", str(tmp_path / "by_prefix")]) == 0
    assert main(["export", str(folder / "checkpoints" / run.info.run_id), "-o", str(tmp_path / "by_folder"),
                 "--feature", "cls"]) == 0
    x = torch.randn(2, 3, 32, 32)
    a, b = timm_features(tmp_path / "by_prefix", x), timm_features(tmp_path / "by_folder", x)
    assert a.shape == b.shape and not torch.allclose(a, b)  # mean patch token vs [CLS]
    about = json.loads((tmp_path / "by_folder" / "config.json").read_text())["graphssl"]
    assert about["run_id"] == run.info.run_id and about["stage"] == "mae" and about["feature"] == "cls"


@pytest.mark.slow
def test_export_errors_exit_2_without_a_traceback(mae_run, monkeypatch, capsys, tmp_path):
    folder, client, run = mae_run
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(f"sqlite:///{folder / 'mlflow.db'}", "other")
    empty = tracker.create_run("untrained", {})
    assert main(["export", empty]) == 2
    assert "has no trained encoder" in capsys.readouterr().err
    ids = [tracker.create_run(f"r{i}", {}) for i in range(17)]  # 17 ids: two share their first hex digit
    shared = next(a[0] for i, a in enumerate(ids) for b in ids[i + 1:] if a[0] == b[0])
    assert main(["export", shared]) == 2
    err = capsys.readouterr().err
    assert "is ambiguous" in err and "Traceback" not in err
    assert main(["export", "no-such-run"]) == 2
    assert "no run with id, id prefix or name 'no-such-run'" in capsys.readouterr().err
    assert main(["export", "source", "--stage", "teacher"]) == 2
    assert "has no stage 'teacher'" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert main(["export", "source", "-o", str(tmp_path / "taken")]) == 2
    assert "not an earlier export" in capsys.readouterr().err
