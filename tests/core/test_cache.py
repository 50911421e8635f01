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
