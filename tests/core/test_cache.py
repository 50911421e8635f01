"""Frozen-prefix activation cache: exact (same losses as without it), and the prefix really is skipped."""

from __future__ import annotations

import pytest

from nb_finetune import finetune
from nb_finetune.core.events import RunStarted, StepEnded


class PrefixCounter:
    """Counts real computations of the embeddings and each block, per epoch (hooks on submodules that a
    skipped module never calls)."""

    def __init__(self):
        self.epoch = 0
        self.calls: dict[tuple[int, str], int] = {}
        self.cache_note = None
        self.run = None

    def on_event(self, e):
        if isinstance(e, RunStarted):
            self.cache_note = e.cache
            m = self.run.model
            m.bert.embeddings.word_embeddings.register_forward_hook(self._hook("embeddings"))
            for i, layer in enumerate(m.bert.encoder.layer):
                layer.attention.register_forward_hook(self._hook(f"blocks.{i}"))
        elif isinstance(e, StepEnded):
            self.epoch = int(e.epoch + 1e-9)  # the epoch the next micro-batch belongs to

    def _hook(self, name):
        def hook(module, args, out):
            if module.training or self.run.model.training:
                key = (self.epoch, name)
                self.calls[key] = self.calls.get(key, 0) + 1

        return hook


def _losses(run):
    return run.history["loss"].dropna().tolist()


def _run(tiny_config, cache, extra_callbacks=(), counter=None, **kw):
    counter = counter or PrefixCounter()
    cfg = {
        **tiny_config,
        "freeze": "bottom 1",
        "epochs": 3,
        "eval_every": None,
        "save_every": None,
        "dropout": 0.1,
        "precision": "fp32",
        "cache_frozen": cache,
        "batch_size": 16,
        **kw,
    }
    run = finetune(cfg, callbacks=[counter, *extra_callbacks])
    counter.run = run
    run.wait(timeout=180)
    assert run.status == "finished", run.error
    return run, counter


def test_cache_is_exact_and_skips_the_prefix_after_the_first_epoch(tiny_config):
    ref, ref_count = _run(tiny_config, "off")
    run, count = _run(tiny_config, "on")
    assert ref_count.cache_note.startswith("off") and count.cache_note.startswith("on (depth 1")
    assert _losses(run) == pytest.approx(_losses(ref), rel=1e-5, abs=1e-6)
    n_batches = count.calls[(0, "blocks.1")]
    assert n_batches > 0
    assert count.calls.get((0, "embeddings")) == n_batches  # epoch 1 computes (and stores) the prefix
    for epoch in (1, 2):
        assert count.calls.get((epoch, "embeddings"), 0) == 0, count.calls
        assert count.calls.get((epoch, "blocks.0"), 0) == 0, count.calls
        assert count.calls[(epoch, "blocks.1")] == n_batches  # trainable blocks still run
    assert ref_count.calls[(2, "blocks.0")] == n_batches  # without the cache every epoch pays for the prefix


def test_auto_is_off_for_a_single_epoch_and_for_frozen_mode_train(tiny_config):
    _, one = _run(tiny_config, "auto", epochs=1)
    assert one.cache_note.startswith("off (a single pass")
    _, train_mode = _run(tiny_config, "auto", frozen_mode="train", epochs=2)
    assert train_mode.cache_note.startswith("off (frozen_mode: train")


def test_freezing_deeper_reuses_the_cache(tiny_config):
    counter = PrefixCounter()

    class FreezeMore:
        def on_event(self, e):
            if isinstance(e, StepEnded) and e.epoch == 1.0:
                counter.run.freeze("bottom 2")

    _run(tiny_config, "on", extra_callbacks=[FreezeMore()], counter=counter)
    c = counter.calls
    # epoch 2: level-1 states replayed (embeddings and block 0 skipped), block 1 computed once and captured
    assert c.get((1, "embeddings"), 0) == 0 and c.get((1, "blocks.0"), 0) == 0 and c[(1, "blocks.1")] > 0
    # epoch 3: level-2 states replayed: no block runs at all, only the head trains
    assert c.get((2, "blocks.0"), 0) == 0 and c.get((2, "blocks.1"), 0) == 0


def test_rows_past_the_memory_budget_spill_to_disk_and_replay_exactly(tiny_config, tmp_path):
    """With a memory budget of a few rows, the rest spills to a file under the run directory; replay stays exact
    and the file is gone when the run ends."""
    ref, _ = _run(tiny_config, "off")
    spilled, count = _run(tiny_config, "on", cache_max_gb=2e-6, cache_spill_gb=1.0)
    assert _losses(spilled) == pytest.approx(_losses(ref), rel=1e-5, abs=1e-6)
    assert count.calls.get((2, "blocks.0"), 0) == 0  # every example came back from memory or disk
    assert not (spilled.dir / "cache").exists()


def test_prefix_cache_store_roundtrip_in_bf16(tmp_path):
    import torch

    from nb_finetune.core.cache import PrefixCache

    store = PrefixCache(
        2, torch.bfloat16, torch.device("cpu"), max_bytes=3 * 8 * 2, spill_dir=tmp_path / "cache", spill_bytes=1 << 20
    )
    hidden = torch.randn(3, 5, 8)
    store.put([10, 11, 12], [5, 3, 4], hidden)
    assert len(store.rows) == 1 and len(store.disk_rows) == 2 and store.has([10, 11, 12])
    out = store.get([12, 10], width=6, device=torch.device("cpu"), dtype=torch.float32)
    assert out.shape == (2, 6, 8)
    assert torch.equal(out[0, :4], hidden[2, :4].to(torch.bfloat16).float())
    assert torch.equal(out[1, :5], hidden[0, :5].to(torch.bfloat16).float())
    assert (out[0, 4:] == 0).all()
    assert (tmp_path / "cache").is_dir()
    store.close()
    assert not (tmp_path / "cache").exists()
