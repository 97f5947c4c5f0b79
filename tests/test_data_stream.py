"""The streaming data path: crops from the originals, reproducible batches, honest evaluation sets, bad files."""
from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from graphssl.config import DataConfig
from graphssl.data import BadImage, Data, DatasetMissing, StreamingData
from graphssl.data.decode import decode
from graphssl.data.subsets import stratified_subset
from graphssl.data.views import centre_view, crop_box, cut_views
from graphssl.ops.crops import CropPlan, ViewGroup
from imagegen import make_folder, make_shards

PLAN = CropPlan((ViewGroup(2, 24, (0.4, 1.0), (3 / 4, 4 / 3), 0.5, "bicubic"),
                 ViewGroup(3, 12, (0.05, 0.4), (3 / 4, 4 / 3), 0.5, "bicubic")))


class Spec:
    """The part of a graph spec the data path reads: one augment node on batch.images."""

    def __init__(self, plan: CropPlan = PLAN):
        class Node:
            call, config, inputs = None, object(), {"images": ("batch", "images")}

            class cls:
                @staticmethod
                def plan_crops(config, image_size):
                    return plan
        self.nodes = {"crops": Node()}


def folder_data(root, workers=0, **kw) -> StreamingData:
    cfg = DataConfig(dataset="image_folder", root=str(root), image_size=16, batch_size=4, workers=workers,
                     normalize="imagenet", **kw)
    return Data(cfg, torch.device("cpu"), seed=3, spec=Spec())


def precut(batch) -> list[torch.Tensor]:
    return batch["images"].precut[PLAN]


# ----------------------------------------------------------------------------- crops from the original


@pytest.mark.parametrize("scale", [0.1, 0.5])
def test_crop_at_scale_s_covers_s_of_the_original_area(scale):
    w, h = 300, 200  # not square: the area is the original's, not a squashed copy's
    y, x = np.mgrid[0:h, 0:w]
    pattern = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.zeros_like(x)], -1).astype(np.uint8)
    img = Image.fromarray(pattern)
    plan = CropPlan((ViewGroup(4, 64, (scale, scale), (1.0, 1.0), 0.0, "bilinear"),))
    (views,) = cut_views(img, plan, random.Random(0))
    for view in views.astype(float):
        width = (view[0].max() - view[0].min()) / 255 * w
        height = (view[1].max() - view[1].min()) / 255 * h
        assert width * height / (w * h) == pytest.approx(scale, rel=0.12)
        assert width == pytest.approx(height, rel=0.1)  # ratio 1 in original pixels


def test_crop_box_follows_random_resized_crop_including_the_fallback():
    rng = random.Random(1)
    for _ in range(200):
        top, left, h, w = crop_box(rng, 120, 80, (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top <= 120 - h and 0 <= left <= 80 - w
        assert 0.08 * 9600 * 0.8 <= h * w <= 9600
    # an impossible ratio: the largest centred crop with the ratio clamped
    assert crop_box(random.Random(0), 100, 400, (0.9, 1.0), (1.0, 1.0)) == (0, 150, 100, 100)


def test_eval_view_resizes_the_shorter_side_then_centre_crops():
    img = Image.fromarray(np.tile(np.arange(400, dtype=np.uint8)[None, :, None] // 2, (200, 1, 3)))
    view = centre_view(img, 32, 0.5)  # shorter side -> 64, longer -> 128, centre 32 x 32
    assert view.shape == (3, 32, 32)
    assert 80 < view[0].mean() < 120  # the middle of the gradient, not a squashed whole


# ----------------------------------------------------------------------------- reproducible batches


def test_same_batches_for_zero_one_and_two_workers(tmp_path):
    root = make_folder(tmp_path / "f", classes=3, per_class=6)
    runs = []
    for workers in (0, 1, 2):
        it = folder_data(root, workers).batches(0)
        runs.append([next(it) for _ in range(3)])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            for x, y in zip(precut(a), precut(b)):
                assert torch.equal(x, y)
    first = precut(runs[0][0])
    assert [tuple(t.shape) for t in first] == [(2, 4, 3, 24, 24), (3, 4, 3, 12, 12)]
    assert not torch.equal(precut(runs[0][0])[0], precut(runs[0][1])[0])  # steps differ


def test_resuming_at_a_step_gives_that_steps_batch_with_workers(tmp_path):
    root = make_folder(tmp_path / "f", classes=3, per_class=6)
    data = folder_data(root, 2)
    from_start = data.batches(0)
    expected = [next(from_start) for _ in range(6)]  # crosses an epoch (4 steps of 4 images)
    resumed = folder_data(root, 2).batches(3)
    for step in range(3, 6):
        got = next(resumed)
        for x, y in zip(precut(expected[step]), precut(got)):
            assert torch.equal(x, y)
    assert torch.equal(precut(data.batch(5))[1], precut(expected[5])[1])  # in-process batch(step) agrees


def test_folder_and_shards_give_the_same_images(tmp_path):
    root = make_folder(tmp_path / "f", classes=3, per_class=5)
    train = make_shards(root, tmp_path / "shards", "train", per_shard=4)
    test = make_shards(root, tmp_path / "shards", "test", per_shard=4)
    folder = folder_data(root)
    cfg = DataConfig(dataset="shards", shards=train, test_shards=test, image_size=16, batch_size=4, workers=1,
                     normalize="imagenet")
    shards = Data(cfg, torch.device("cpu"), seed=3, spec=Spec())
    assert shards.train_source.classes == folder.train_source.classes == ["c0", "c1", "c2"]
    for x, y in zip(precut(folder.batch(2)), precut(shards.batch(2))):
        assert torch.equal(x, y)
    a, b = folder.eval_set("test", None), shards.eval_set("test", None)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_memory_grows_with_the_batch_a_dry_run_decodes_only_its_batch(tmp_path, monkeypatch):
    import graphssl.data.stream as stream

    root = make_folder(tmp_path / "f", classes=2, per_class=10)
    calls = []
    original = stream.Decoder.__call__
    monkeypatch.setattr(stream.Decoder, "__call__", lambda self, i: calls.append(i) or original(self, i))
    data = folder_data(root)  # listing only (normalize: imagenet needs no statistics)
    assert calls == []
    data.batch(0)
    assert len(calls) == 4


# ----------------------------------------------------------------------------- evaluation sets


def test_stratified_subsets_hold_every_class():
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([500, 300, 120, 50, 20, 6, 3, 1])])  # class order
    for limit in (8, 20, 100, 500):
        keep = stratified_subset(labels, limit, seed=0)
        assert len(keep) == limit and len(set(keep.tolist())) == limit
        assert set(labels[keep].tolist()) == set(range(8))
    keep = stratified_subset(labels, 500, 0)
    assert (labels[keep] == 0).sum() == pytest.approx(500 * 500 / 1000, abs=5)  # proportional
    assert torch.equal(keep, stratified_subset(labels, 500, 0))  # seeded
    assert len(stratified_subset(labels, None, 0)) == 1000


def test_folder_eval_subsets_span_every_class_and_class_ids_are_by_name(tmp_path):
    root = make_folder(tmp_path / "f", classes=4, per_class=8, test_per_class=4, test_name="val")
    for f in (root / "val" / "c1").iterdir():  # the test split lacks a class: the others keep their ids
        f.unlink()
    (root / "val" / "c1").rmdir()
    data = folder_data(root)
    assert data.test_source.classes == ["c0", "c1", "c2", "c3"]
    assert set(data.test_source.labels.tolist()) == {0, 2, 3}
    assert [p.split("/")[-2] for p in data.test_source.paths[:4]] == ["c0"] * 4
    assert set(data.eval_set("train", 10).labels.tolist()) == {0, 1, 2, 3}
    ev = data.eval_set("test", None)
    assert len(ev) == 12 and ev.images.shape[1:] == (3, 16, 16)
    (root / "val" / "zebra").mkdir()
    Image.new("RGB", (20, 20)).save(root / "val" / "zebra" / "a.jpg")
    with pytest.raises(DatasetMissing, match="class 'zebra' is not among the 4 training classes"):
        folder_data(root)


def test_dataset_statistics_come_from_a_random_subset(tmp_path):
    root = make_folder(tmp_path / "f", classes=2, per_class=6)
    cfg = DataConfig(dataset="image_folder", root=str(root), image_size=16, batch_size=4, workers=0, normalize="dataset")
    data = Data(cfg, torch.device("cpu"))
    every = torch.cat([i for i, _ in data.eval_batches("train", None)]).double() / 255
    assert data.mean == pytest.approx(tuple(every.mean(dim=(0, 2, 3)).tolist()), abs=1e-6)


def test_unlabeled_folder_trains_and_evaluators_skip(tmp_path):
    folder = tmp_path / "unlabeled"
    folder.mkdir()
    for i in range(6):
        Image.new("RGB", (30 + i, 40), (i * 30, 0, 0)).save(folder / f"{i}.png")
    data = folder_data(folder)
    assert not data.labelled and precut(data.batch(0))[0].shape[1] == 4
    from graphssl import registry
    knn = registry.get("eval.knn")
    ev = knn(knn.Config(encoder="x"), None)
    assert ev.evaluate(lambda n: None, data, 10) == {}


# ----------------------------------------------------------------------------- decoding and bad files


def test_16bit_palette_cmyk_and_exif_images_decode_correctly(tmp_path):
    grey16 = Image.fromarray((np.full((8, 8), 40000)).astype(np.uint16))
    grey16.save(tmp_path / "g16.png")
    assert np.asarray(decode(str(tmp_path / "g16.png"), 3))[0, 0].tolist() == [round(40000 / 257)] * 3  # not clipped to 255
    pal = Image.new("RGB", (8, 8), (200, 30, 60)).convert("P", palette=Image.ADAPTIVE, colors=4)
    pal.save(tmp_path / "p.png")
    assert np.abs(np.asarray(decode(str(tmp_path / "p.png"), 3)).astype(int) - [200, 30, 60]).max() < 8
    Image.new("RGB", (8, 8), (200, 30, 60)).convert("CMYK").save(tmp_path / "c.jpg")
    assert np.abs(np.asarray(decode(str(tmp_path / "c.jpg"), 3)).astype(int) - [200, 30, 60]).max() < 12
    wide = Image.new("RGB", (40, 20), (0, 0, 0))
    wide.paste((255, 255, 255), (0, 0, 10, 20))  # white on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    wide.save(buf, "JPEG", exif=exif)
    upright = decode(buf.getvalue(), 3)
    assert upright.size == (20, 40) and np.asarray(upright)[2, 10].mean() > 200  # white now on top
    assert decode(str(tmp_path / "p.png"), 1).mode == "L"


def test_bad_files_are_skipped_by_name_or_stop_the_run_naming_the_file(tmp_path, capsys):
    root = make_folder(tmp_path / "f", classes=2, per_class=6)
    bad = root / "train" / "c0" / "0000.jpg"
    bad.write_bytes(b"not a jpeg at all")
    data = folder_data(root)
    batches = [data.batch(s) for s in range(3)]  # one epoch: every image once
    assert all(precut(b)[0].shape[1] == 4 for b in batches)
    assert data.skip_count == 1 and data.skipped == [str(bad)]
    assert "skipped 1 image file(s)" in capsys.readouterr().err and str(bad) in data.skipped[0]
    strict = folder_data(root, on_bad_image="error")
    with pytest.raises(BadImage, match="0000.jpg"):
        for s in range(3):
            strict.batch(s)
    with pytest.raises(BadImage, match="0000.jpg"):  # through worker processes too
        it = folder_data(root, 1, on_bad_image="error").batches(0)
        for _ in range(3):
            next(it)


def test_loaders_leave_the_global_rng_alone(tmp_path):
    """A resumed run creates its loader at another step: drawing from the global RNG would shift the masks."""
    root = make_folder(tmp_path / "f", classes=2, per_class=6)
    data = folder_data(root, 1)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    next(data.batches(0))
    list(data.eval_batches("test", None))
    assert torch.equal(torch.rand(3), expected)


def test_knn_over_query_chunks_equals_one_pass():
    from graphssl.components.eval.knn import knn_predict

    g = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(500, 16, generator=g), dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(70, 16, generator=g), dim=-1)
    labels = torch.randint(5, (500,), generator=g)
    whole = knn_predict(bank, labels, queries, 5)
    chunked = knn_predict(bank, labels, queries, 5, max_elements=500 * 8)  # 8 queries per chunk
    assert torch.equal(whole, chunked)
