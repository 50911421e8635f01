"""Image classification on the task seam: metrics against hand-computed values, every data source, unreadable files
skipped and counted (or an error naming the file), augmentation on training items only, channel adaptation, the
layer map and BatchNorm of frozen blocks, predict's shape, and whole runs through `finetune()` (loss goes down; a
stopped run resumed in a fresh process repeats an uninterrupted one exactly)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fresh_process import run_py
from media_fixtures import colour_images, image_folder, small_cnn, tiny_convnext_dir, tiny_vit_dir
from metrics_log import losses_by_step

from nb_finetune import finetune
from nb_finetune.core.config import FinetuneConfig
from nb_finetune.core.events import RunStarted
from nb_finetune.core.tasks.augment import parse_augment
from nb_finetune.core.tasks.base import resolve_task
from nb_finetune.core.tasks.image_classification import ImageClassificationMetric, topk_accuracy
from nb_finetune.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    return tiny_vit_dir(tmp_path_factory.mktemp("vit"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return image_folder(tmp_path_factory.mktemp("imgs") / "train", n_per_class=8)


def img_task(model, train, **over):
    cfg = FinetuneConfig.from_dict({"model": model, "data": {"train": train, "eval_split": 0.25}, **over})
    task = resolve_task(cfg)
    task.preflight()
    return task


def base_cfg(model, train, tmp_path, **over):
    return {
        "model": model,
        "data": {"train": train, "eval_split": 0.25},
        "epochs": 3,
        "batch_size": 8,
        "lr": 2e-3,
        "log_every": 1,
        "precision": "fp32",
        "output_dir": str(tmp_path / "runs"),
        **over,
    }


# --------------------------------------------------------------------------------------------- metrics
def test_topk_accuracy_on_a_fixed_logit_set():
    logits = np.array(
        [
            [9, 8, 7, 6, 5, 4, 3],  # label 4 is 5th: a top-5 hit, not a top-1 hit
            [9, 8, 7, 6, 5, 4, 3],  # label 5 is 6th: a miss (control)
            [0, 0, 0, 0, 0, 0, 1],  # label 6 first: a hit either way
            [1, 2, 3, 4, 5, 6, 7],  # label 0 last: a miss
        ],
        dtype=float,
    )
    labels = np.array([4, 5, 6, 0])
    assert topk_accuracy(logits, labels, 5) == pytest.approx(0.5)
    assert topk_accuracy(logits, labels, 1) == pytest.approx(0.25)


def test_metric_streams_top5_accuracy_f1_and_the_confusion_matrix():
    names = [f"c{i}" for i in range(7)]
    m = ImageClassificationMetric(names)
    logits = torch.tensor([[9, 8, 7, 6, 5, 4, 3], [9, 8, 7, 6, 5, 4, 3], [0, 0, 0, 0, 0, 0, 1.0]])
    out = type("O", (), {"logits": logits})()
    m.update(out, {"labels": torch.tensor([4, 5, 6])}, {})
    m.update(type("O", (), {"logits": logits[:1]})(), {"labels": torch.tensor([0])}, {})
    s = m.compute()
    assert s["accuracy"] == pytest.approx(0.5)  # rows 3 and 4 right
    assert s["top5_accuracy"] == pytest.approx(0.75)  # rows 1, 3, 4
    # predictions 0, 0, 6, 0 vs labels 4, 5, 6, 0: F1 of class 0 = 2/(2+2+0), class 6 = 1, classes 4 and 5 = 0
    assert s["f1"] == pytest.approx(np.mean([0.5, 0.0, 0.0, 1.0]))
    conf = m.extras()["confusion"]["values"]
    assert conf[4][0] == 1 and conf[6][6] == 1 and sum(map(sum, conf)) == 4
    few = ImageClassificationMetric(["a", "b", "c"])  # 5 classes or fewer: no top-5 (it would always be 1)
    few.update(type("O", (), {"logits": torch.eye(3)})(), {"labels": torch.tensor([0, 1, 1])}, {})
    assert "top5_accuracy" not in few.compute()


# --------------------------------------------------------------------------------------------- data
def test_every_source_gives_the_same_labels(vit_dir, folder, tmp_path):
    import datasets
    import pandas as pd
    from PIL import Image

    x, y = colour_images(4, seed=1)
    files = []
    for i, a in enumerate(x):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
        files.append(f"{i}.png")  # relative to the CSV's folder
    pd.DataFrame({"file": files, "colour": y}).to_csv(tmp_path / "imgs.csv", index=False)
    sources = {
        "folder": (str(folder), {}),
        "arrays": ((x, y), {}),
        "csv": (str(tmp_path / "imgs.csv"), {}),
        "dataset": (
            datasets.Dataset.from_dict(
                {"img": [Image.fromarray(a) for a in x], "y": y},
                features=datasets.Features({"img": datasets.Image(), "y": datasets.Value("string")}),
            ),
            {},
        ),
        "pil list": ([{"image": Image.fromarray(a), "label": lab} for a, lab in zip(x, y)], {}),
    }
    for what, (src, over) in sources.items():
        task = img_task(vit_dir, src, **over)
        assert task.name == "image-classification", what
        assert task.label_names == ["blue", "green", "red"], what
        train, ev = task.build_data()
        item = train[0]
        assert tuple(item["pixel_values"].shape) == (3, 24, 24), what
        assert len(train) + len(ev) == len(task._full_train), what


def test_unreadable_files_are_counted_and_skipped_or_an_error_naming_the_file(vit_dir, tmp_path):
    root = image_folder(tmp_path / "train", n_per_class=6)
    (root / "red" / "broken.png").write_bytes(b"this is not a png")
    good = next((root / "green").glob("*.png")).read_bytes()
    (root / "green" / "truncated.png").write_bytes(good[: len(good) // 2])
    task = img_task(vit_dir, str(root), data={"train": str(root), "eval_split": 0})
    assert task.num_train == 18  # 20 files, 2 unreadable (control: the 18 good ones all load)
    line = next(x for x in task.describe() if x.startswith("skipped"))
    assert "skipped 2 unreadable image file(s)" in line and "broken.png" in line and "truncated.png" in line
    with pytest.raises(DataError, match=r"row \d+ \((broken|truncated).png\) cannot be read.*on_bad_example: skip"):
        img_task(vit_dir, str(root), data={"train": str(root), "eval_split": 0}, on_bad_example="error")
    run = finetune(base_cfg(vit_dir, str(root), tmp_path, max_steps=1, data={"train": str(root)}), wait=True)
    assert run.status == "finished", run.error
    assert "skipped 2 unreadable image file(s)" in (run.run_dir.path / "run.log").read_text()


def test_preflight_reads_headers_only_and_images_are_decoded_when_read(vit_dir, tmp_path, monkeypatch):
    from PIL import ImageFile

    from nb_finetune.core.tasks import vision_data

    root = image_folder(tmp_path / "train", n_per_class=4)
    calls = {"load": 0, "decode": 0}
    load, decode = ImageFile.ImageFile.load, vision_data.decode_image

    def counting_load(self):
        calls["load"] += 1
        return load(self)

    def counting_decode(*a, **k):
        calls["decode"] += 1
        return decode(*a, **k)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    monkeypatch.setattr(vision_data, "decode_image", counting_decode)
    task = img_task(vit_dir, str(root))
    train, ev = task.build_data()
    assert calls == {"load": 0, "decode": 0}  # 12 files checked and verified, not one decoded
    assert task.num_train + task.num_eval == 12
    x = train[0]["pixel_values"]
    assert calls["decode"] == 1 and calls["load"] >= 1  # control: reading an example decodes its file
    assert torch.equal(x, decode(task.train[0]["image"], 24, 3))  # the same pixels as a direct decode


def _truncated_folder(root: Path) -> Path:
    image_folder(root, n_per_class=6)
    good = (root / "green" / "006.png").read_bytes()
    (root / "green" / "truncated.png").write_bytes(good[: len(good) // 2])  # its header still reads
    return root


def test_a_file_that_fails_only_when_decoded_is_left_out_and_counted_once(vit_dir, tmp_path, monkeypatch):
    from nb_finetune.core.tasks import vision_data

    root = _truncated_folder(tmp_path / "train")
    cfg = {"data": {"train": str(root), "eval_split": 0}}
    assert img_task(vit_dir, str(root), **cfg).num_train == 18  # control: in the verified sample pre-flight finds it
    monkeypatch.setattr(vision_data, "VERIFY_SAMPLE", 0)  # headers only: it passes pre-flight
    task = img_task(vit_dir, str(root), **cfg)
    assert task.num_train == 19
    bad = next(i for i, p in enumerate(task.train["image"]) if p.endswith("truncated.png"))
    train, _ = task.build_data()
    item = train[bad]
    assert item["unreadable"] and train.num_unreadable == 1
    collate = task.collator()
    assert collate([train[bad - 1], item])["idx"] == [bad - 1]  # left out of its batch
    alone = collate([item])  # a batch with no readable image takes the next readable one
    assert alone["idx"] == [(bad + 1) % 19] and alone["pixel_values"].shape == (1, 3, 24, 24)
    assert "skipped 1 more unreadable image file(s) while reading" in task.describe()[-1]

    # a whole run, the file read in a DataLoader worker process at each of 2 epochs: logged once, counted once
    over = dict(epochs=2, batch_size=4, num_workers=1, save_every=None, data={"train": str(root)})
    run = finetune(base_cfg(vit_dir, str(root), tmp_path, **over), wait=True)
    assert run.status == "finished", run.error
    log = (run.run_dir.path / "run.log").read_text()
    assert log.count("(truncated.png) while reading") == 1, log
    assert "1 unreadable image file(s) found while reading so far" in log
    assert any("skipped 1 more unreadable image file(s) while reading" in x for x in run.task.describe())
    errors = {}
    for workers in (0, 1):  # the same message from a DataLoader worker process (control: torch's "Caught DataError")
        over["num_workers"] = workers
        run = finetune(base_cfg(vit_dir, str(root), tmp_path, **over, on_bad_example="error"), wait=True)
        assert run.status == "failed"
        errors[workers] = run.error
    assert re.fullmatch(r"data.train: row \d+ \(truncated.png\) cannot be read: .*on_bad_example: skip.*", errors[0])
    assert errors[1] == errors[0], errors


def test_columns_are_named_or_found(vit_dir, tmp_path):
    import pandas as pd

    x, y = colour_images(3)
    from PIL import Image

    paths = []
    for i, a in enumerate(x):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    df = pd.DataFrame({"a": paths, "b": paths, "kind": y})
    with pytest.raises(DataError, match="data.image: cannot tell"):
        img_task(vit_dir, df, task="image", data={"train": df, "label": "kind"})
    task = img_task(vit_dir, df, task="image", data={"train": df, "image": "b", "label": "kind"})
    assert task.image_col == "b" and task.label_col == "kind"
    with pytest.raises(DataError, match="data.image: column 'bb' is not in data.train.*Did you mean 'b'"):
        img_task(vit_dir, df, task="image", data={"train": df, "image": "bb", "label": "kind"})


# --------------------------------------------------------------------------------------------- augmentation
def test_augmentation_changes_training_items_only_and_turns_the_cache_claim_off(vit_dir, folder):
    with pytest.raises(ConfigError, match="Did you mean 'rotate'"):
        parse_augment(["rotat"])
    with pytest.raises(ConfigError, match="rotate has no parameter 'angle'"):
        parse_augment([{"rotate": {"angle": 3}}])
    plain = img_task(vit_dir, str(folder))
    assert not plain.augment
    aug = img_task(
        vit_dir, str(folder), augment=[{"random_resized_crop": {"scale": [0.3, 0.6]}}, "hflip", {"rotate": 30}]
    )
    assert not aug.capabilities.prefix_cache
    train, ev = aug.build_data()
    torch.manual_seed(0)
    a, b = train[0]["pixel_values"], train[0]["pixel_values"]
    assert a.shape == b.shape == (3, 24, 24) and not torch.equal(a, b)  # two reads, two augmentations
    assert torch.equal(ev[0]["pixel_values"], ev[0]["pixel_values"])  # evaluation never augments (control)
    p_train, _ = plain.build_data()
    assert torch.equal(p_train[0]["pixel_values"], p_train[0]["pixel_values"])


# --------------------------------------------------------------------------------------------- models
def test_a_plain_module_gets_its_head_replaced_and_frozen_batchnorm_keeps_its_statistics(folder, tmp_path):
    net = small_cnn(num_classes=1000)
    before = {n: b.clone() for n, b in net.named_buffers() if "running_mean" in n}
    cfg = base_cfg(net, str(folder), tmp_path, freeze=["embeddings", "blocks.0", "blocks.1"], image_size=16, epochs=2)
    run = finetune(cfg, wait=True)
    assert run.status == "finished", run.error
    assert run.model.net is net and net._fc.out_features == 3  # the user's module, its head replaced
    detail = "\n".join(run.task.describe())
    assert "'_fc' Linear(16 -> 1000) replaced by Linear(16 -> 3)" in detail
    lm = run.task.layer_map(run.model)
    assert [g.name for g in lm.groups] == ["embeddings", "blocks.0", "blocks.1", "blocks.2", "head"]
    after = dict(net.named_buffers())
    for name in ("_bn0.running_mean", "_blocks.0.bn.running_mean", "_blocks.1.bn.running_mean"):
        assert torch.equal(before[name], after[name]), name  # frozen: eval mode, statistics fixed
    assert not torch.equal(before["_blocks.2.bn.running_mean"], after["_blocks.2.bn.running_mean"])  # control
    preds = run.predict([np.zeros((16, 16, 3), np.uint8)] * 2, top_k=2)
    assert len(preds) == 2 and [len(p) for p in preds] == [2, 2] and set(preds[0][0]) == {"label", "score"}


def test_head_names_the_classifier_or_says_what_is_there(folder):
    net = small_cnn()
    with pytest.raises(ConfigError, match="head: the model has no module 'fc'.*_fc"):
        img_task(net, str(folder), head="fc")
    task = img_task(net, str(folder), head="_fc")
    model = task.build_model()
    assert model.net._fc.out_features == 3


def test_a_one_channel_input_trains_on_a_three_channel_pretrained_model(vit_dir, tmp_path):
    x, y = colour_images(8, size=24)
    gray = (
        (x.mean(-1) * 0.3 + np.array([0, 80, 160])[[("red", "green", "blue").index(v) for v in y]][:, None, None])
        .clip(0, 255)
        .astype(np.uint8)
    )  # gray levels that still tell the classes apart
    run = finetune(base_cfg(vit_dir, (gray, y), tmp_path, channels=1, epochs=6, lr=3e-3), wait=True)
    assert run.status == "finished", run.error
    conv = run.model.vit.embeddings.patch_embeddings.projection
    assert conv.in_channels == 1 and run.model.config.num_channels == 1
    assert any("adapted 3 -> 1 input channels (weights averaged" in line for line in run.task.describe())
    losses = losses_by_step(run.run_dir.path)
    assert np.mean([losses[s] for s in sorted(losses)[-3:]]) < np.mean([losses[s] for s in sorted(losses)[:3]])
    # the adapted weights are the pretrained ones averaged x3: a gray image gives what its RGB copy gave before
    from transformers import ViTForImageClassification

    orig = ViTForImageClassification.from_pretrained(vit_dir).vit.embeddings.patch_embeddings.projection
    task = img_task(vit_dir, (gray, y), channels=1)
    adapted = first_conv_of(task.build_model())
    g = torch.rand(1, 1, 24, 24)
    torch.testing.assert_close(adapted(g), orig(g.expand(1, 3, 24, 24)), rtol=1e-4, atol=1e-5)


def first_conv_of(model):
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_layer_maps_of_cnn_stages_and_vit_layers(tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    from nb_finetune.core.tasks.vision_models import image_layer_map

    conv = tiny_convnext_dir(tmp_path / "convnext")
    from transformers import ConvNextForImageClassification

    lm = image_layer_map(ConvNextForImageClassification.from_pretrained(conv))
    # the 2 stages, not the 2 layers inside the second stage (a map of the wrong list would also have 2 blocks)
    assert lm.blocks_path == "convnext.encoder.stages" and lm.num_blocks == 2
    assert lm.names[0] == "embeddings" and lm.names[-1] == "head"
    res = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16], depths=[1, 1, 2]))
    lm = image_layer_map(res)
    assert lm.blocks_path == "resnet.encoder.stages" and lm.num_blocks == 3
    vit = tiny_vit_dir(tmp_path / "vit")
    from transformers import ViTForImageClassification

    lm = image_layer_map(ViTForImageClassification.from_pretrained(vit))
    assert lm.blocks_path.startswith("vit.") and lm.blocks_path.endswith(("layer", "layers")) and lm.num_blocks == 2


def test_named_zoo_models_need_their_package(folder):
    pytest.importorskip("transformers")
    try:
        import timm  # noqa: F401

        pytest.skip("timm is installed here")
    except Exception:  # noqa: BLE001
        pass
    task = img_task("timm:resnet18", str(folder), task="image")
    from nb_finetune.errors import ModelError

    with pytest.raises(ModelError, match="needs the timm package"):
        task.build_model()


# --------------------------------------------------------------------------------------------- runs
def test_training_lowers_the_loss_and_predict_returns_top_k(vit_dir, folder, tmp_path):
    run = finetune(base_cfg(vit_dir, str(folder), tmp_path, epochs=4), wait=True)
    assert run.status == "finished", run.error
    losses = losses_by_step(run.run_dir.path)
    assert np.mean([losses[s] for s in sorted(losses)[-3:]]) < np.mean([losses[s] for s in sorted(losses)[:3]])
    assert {"eval_accuracy", "eval_f1", "eval_loss"} <= set(run.metrics)
    one = run.predict(str(next((folder / "red").glob("*.png"))), top_k=3)
    assert [set(d) for d in one] == [{"label", "score"}] * 3
    assert one[0]["score"] >= one[1]["score"] >= one[2]["score"]
    assert {d["label"] for d in one} == {"red", "green", "blue"}
    report = finetune(base_cfg(vit_dir, str(folder), tmp_path), dry_run=True)
    assert "head: new 3-way classifier" in str(report) and "blocks" in report.layer_map_text


def _heap_bytes() -> int | None:
    """Bytes glibc's malloc has handed out and not taken back (mallinfo2: heap chunks in use + mmapped chunks), or
    None without glibc. torch's CPU allocator takes every tensor from malloc, so this sees what a forward keeps."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (n, ctypes.c_size_t)
            for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
        ] + [("keepcost", ctypes.c_size_t)]

    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = MallInfo2
    m = fn()
    return m.uordblks + m.hblkhd


def test_the_dry_run_counts_image_activations_by_size_batch_and_freezing(vit_dir, folder, tmp_path):
    def activations(model, **over):
        report = finetune(base_cfg(model, str(folder), tmp_path, save_every=None, **over), dry_run=True)
        return report.memory_bytes["activations"], str(report)

    act, text = activations(small_cnn(), image_size=32, batch_size=8)
    assert act > 0 and "activations ~" in text
    assert activations(small_cnn(), image_size=64, batch_size=8)[0] == pytest.approx(4 * act, rel=0.05)  # pixels
    assert activations(small_cnn(), image_size=32, batch_size=16)[0] == pytest.approx(2 * act, abs=2)
    frozen = ["embeddings", "blocks.0", "blocks.1"]
    assert activations(small_cnn(), image_size=32, batch_size=8, freeze=frozen)[0] < 0.6 * act  # keep nothing
    vit, _ = activations(vit_dir, batch_size=8)
    assert 0 < activations(vit_dir, batch_size=8, freeze=["embeddings", "blocks.0"])[0] < vit
    assert activations(vit_dir, batch_size=8, precision="bf16")[0] == pytest.approx(vit / 2, abs=2)


@pytest.mark.skipif(_heap_bytes() is None, reason="measures with glibc's mallinfo2")
def test_the_activation_estimate_is_within_2x_of_what_a_forward_keeps_for_backward(folder):
    """Measured: the bytes malloc holds after a training forward minus before it (saved activations, the logits and
    the loss), after a warm-up step so that gradients and library scratch space are already allocated."""
    from nb_finetune.core.freezing import apply_freeze, set_frozen_eval
    from nb_finetune.core.tasks.base import HOST_KEYS

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for frozen in (set(), {"embeddings", "blocks.0"}):
            task = img_task(small_cnn(), str(folder), image_size=64)
            model = task.build_model()
            lm = task.layer_map(model)
            apply_freeze(model, lm, frozen)
            est = task.activation_bytes(model, lm, frozen, 12, "fp32")
            train, _ = task.build_data()
            batch = task.collator()([train[i] for i in range(12)])
            for k in HOST_KEYS:
                batch.pop(k)
            model.train()
            set_frozen_eval(model, lm, frozen)
            model(**batch).loss.backward()  # warm-up: gradients allocated, kept (zeroed, not freed)
            model.zero_grad(set_to_none=False)
            before = _heap_bytes()
            out = model(**batch)
            kept = _heap_bytes() - before
            out.loss.backward()
            assert kept > 2**20, kept  # control: the measurement sees megabytes, far above its noise
            assert 0.5 < est / kept < 2, (frozen, est, kept)
    finally:
        torch.set_num_threads(threads)


def test_stop_and_resume_in_a_fresh_process_repeats_an_uninterrupted_run(vit_dir, tmp_path):
    root = image_folder(tmp_path / "train", n_per_class=7)  # 21 images: 16 train, 5 held out
    cfg = base_cfg(vit_dir, str(root), tmp_path, epochs=3, batch_size=4, grad_accum=2, seed=5, save_every=None)
    cfg["data"]["eval_split"] = 0.25
    env = {"NB_FT_CFG": json.dumps(cfg)}
    run_py(
        """
        import json, os
        from fresh_process import StopAtForward
        from nb_finetune import finetune
        cfg = json.loads(os.environ["NB_FT_CFG"])
        run = finetune(cfg, name="a", wait=True)
        assert run.status == "finished" and run.task.name == "image-classification", (run.status, run.error)
        stop = StopAtForward(7)
        run = stop.attach(finetune(cfg, name="b", callbacks=[stop], start=False)).start()
        run.wait()
        assert (run.status, run.reason) == ("stopped", "user"), (run.status, run.error)
        assert run.step == 3, run.step  # the 7th micro-batch's gradient is discarded
        """,
        env,
    )
    run_py(
        """
        import json, os
        from nb_finetune import finetune
        run = finetune(json.loads(os.environ["NB_FT_CFG"]), name="b", resume_from="last", wait=True)
        assert run.status == "finished", run.error
        """,
        env,
    )
    runs = tmp_path / "runs"
    a, b = losses_by_step(runs / "a"), losses_by_step(runs / "b")
    assert len(a) == 6 and sorted(a) == sorted(b)
    assert [b[s] for s in sorted(b)] == [a[s] for s in sorted(a)]  # exactly equal, not approximately


# --------------------------------------------------------------------------------------------- the other doors
@pytest.fixture()
def ip():
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "nb_finetune")
    shell.run_line_magic("config", "FinetuneMagic.renderer = 'text'")
    yield shell
    from nb_finetune import api

    for r in api.active_runs():
        r.abort()
        r.wait(timeout=60)


def test_magic_trains_an_nn_module_from_the_notebook_with_its_head_replaced(folder, ip, tmp_path):
    net = small_cnn(num_classes=1000)
    ip.user_ns["net"] = net
    cell = (
        "%%finetune magic_net --wait\nmodel: {{net}}\nhead: _fc\nimage_size: 16\n"
        f"data:\n  train: {folder}\n  eval_split: 0.25\nmax_steps: 3\nbatch_size: 8\nsave_every: null\n"
        f"output_dir: {tmp_path / 'runs'}\n"
    )
    res = ip.run_cell(cell)
    assert res.success, res.error_in_exec
    run = ip.user_ns["magic_net"]
    assert run.status == "finished", run.error
    assert run.task.name == "image-classification" and run.model.net is net and net._fc.out_features == 3
    assert "eval_accuracy" in run.metrics


def test_cli_runs_image_classification(vit_dir, folder, tmp_path):
    import yaml

    cfg = base_cfg(vit_dir, str(folder), tmp_path, max_steps=2, eval_every=2, save_every=None)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        [sys.executable, "-m", "nb_finetune.cli", "run", str(tmp_path / "cfg.yaml"), "--name", "cli"],
        env={**os.environ, "PYTHONPATH": str(ROOT), "NB_FINETUNE_INDEX_DIR": str(tmp_path / "index")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "task: image-classification (auto: images in 'image')" in out.stdout, out.stdout
    assert " accuracy " in out.stdout and "images/s" in out.stdout, out.stdout


def test_the_frozen_prefix_cache_is_on_without_augmentation_and_exact(vit_dir, folder, tmp_path):
    notes = {}

    def run_with(name, **over):
        class Keep:
            def on_event(self, e):
                if isinstance(e, RunStarted):
                    notes[name] = e.cache

        over = {"model": vit_dir, "freeze": ["embeddings", "blocks.0"], **over}
        cfg = base_cfg(over.pop("model"), str(folder), tmp_path, save_every=None, **over)
        run = finetune(cfg, name=name, wait=True, callbacks=[Keep()])
        assert run.status == "finished", run.error
        return losses_by_step(run.run_dir.path)

    cached, plain = run_with("cached"), run_with("plain", cache_frozen="off")
    assert notes["cached"].startswith("on (depth 1") and notes["plain"].startswith("off")
    np.testing.assert_allclose([cached[s] for s in sorted(cached)], [plain[s] for s in sorted(plain)], rtol=1e-5)
    run_with("augmented", augment=["hflip"])
    assert notes["augmented"].startswith("off (task image-classification")  # augmented pixels change every pass
    # a plain CNN: its stem (conv + BatchNorm, an activation between them and the blocks) runs; block 0 replays
    net_cfg = dict(freeze=["embeddings", "blocks.0", "blocks.1"], image_size=16)
    cnn_cached = run_with("cnn-cached", **net_cfg, model=small_cnn())
    cnn_plain = run_with("cnn-plain", **net_cfg, model=small_cnn(), cache_frozen="off")
    assert notes["cnn-cached"].startswith("on (depth 2")
    np.testing.assert_allclose(
        [cnn_cached[s] for s in sorted(cnn_cached)], [cnn_plain[s] for s in sorted(cnn_plain)], rtol=1e-5
    )


def test_evaluate_on_other_images_and_save(vit_dir, folder, tmp_path):
    run = finetune(base_cfg(vit_dir, str(folder), tmp_path, max_steps=2, save_every=None), wait=True)
    assert run.status == "finished", run.error
    x, y = colour_images(3, seed=7)
    metrics = run.evaluate(data=(x, y))
    assert {"eval_accuracy", "eval_f1", "eval_loss"} <= set(metrics)
    run.save(tmp_path / "saved")
    from transformers import AutoModelForImageClassification

    again = AutoModelForImageClassification.from_pretrained(tmp_path / "saved")
    assert again.config.id2label == {0: "blue", 1: "green", 2: "red"}


def test_a_network_without_a_block_list_maps_its_children_to_stem_stages_and_head(folder):
    import torch.nn as nn

    class ResNetLike(nn.Module):  # torchvision's layout: conv1, bn1, layer1..N (Sequentials), fc
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.layer2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.fc = nn.Linear(16, 1000)

        def forward(self, x):
            x = self.layer2(self.layer1(torch.relu(self.bn1(self.conv1(x)))))
            return self.fc(x.mean((2, 3)))

    task = img_task(ResNetLike(), str(folder), image_size=16)
    model = task.build_model()
    lm = task.layer_map(model)
    assert [(g.name, g.module_names) for g in lm.groups] == [
        ("embeddings", ["net.conv1", "net.bn1"]),
        ("blocks.0", ["net.layer1"]),
        ("blocks.1", ["net.layer2"]),
        ("head", ["net.fc"]),
    ]
    assert sum(g.num_params for g in lm.groups) == sum(p.numel() for p in model.parameters())


def test_a_transformers_model_object_gets_a_head_for_the_labels(vit_dir, folder, tmp_path):
    from transformers import ViTForImageClassification

    obj = ViTForImageClassification.from_pretrained(vit_dir)  # 2 labels; the data has 3
    run = finetune(base_cfg(obj, str(folder), tmp_path, max_steps=2, save_every=None), wait=True)
    assert run.status == "finished", run.error
    assert run.model is obj and obj.classifier.out_features == 3 and obj.config.id2label[2] == "red"
