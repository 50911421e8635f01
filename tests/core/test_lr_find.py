"""LR range test: on a least-squares problem whose stable SGD range is known (the loss Hessian is ~2 I, so plain
SGD diverges above lr ~ 1) the suggestions land inside it and the sweep stops at the divergence; the model,
optimizer state and RNG are bit-identical afterwards; `lr: find` on the tiny BERT writes its choice into
config.yaml and trains with it. Control cases: without restoring, the weights do change; a sweep that ends below
the divergence reports `end`."""

from __future__ import annotations

import random

import pytest
import torch

from nb_finetune import finetune
from nb_finetune.core.lr_find import LRFindResult, range_test


def least_squares(n=512, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, 1, generator=g) + 0.01 * torch.randn(n, 1, generator=g)
    return [(x[i : i + 64], y[i : i + 64]) for i in range(0, n, 64)]


def mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def test_suggestion_inside_the_known_stable_range():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = range_test(model, opt, least_squares(), mse, start_lr=1e-5, end_lr=100.0, num_steps=120)
    assert res.stopped == "diverged" and res.lrs[-1] < 20, (res.stopped, res.lrs[-1])
    assert 1e-2 <= res.suggestion <= 1.0, res
    assert 1e-2 <= res.steepest <= 1.0, res
    assert min(res.smoothed) < 0.1 * res.smoothed[0]
    # control: a sweep that stops below the divergence ends normally
    low = range_test(model, opt, least_squares(), mse, start_lr=1e-5, end_lr=1e-2, num_steps=30)
    assert low.stopped == "end" and len(low.lrs) == 30


def test_weights_optimizer_and_rng_bit_identical():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.1), torch.nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for b in least_squares()[:3]:  # optimizer state that is not empty
        opt.zero_grad()
        mse(model, b).backward()
        opt.step()
    model.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = {
        id_: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
        for id_, s in opt.state_dict()["state"].items()
    }
    lrs = [g["lr"] for g in opt.param_groups]
    grads = [p.grad.clone() for p in model.parameters()]
    random.seed(7)
    torch.manual_seed(7)
    expect_rand, expect_py = torch.rand(3), random.random()
    random.seed(7)
    torch.manual_seed(7)

    res = range_test(model, opt, least_squares(), mse, num_steps=40)
    assert len(res.lrs) > 10
    assert torch.equal(torch.rand(3), expect_rand) and random.random() == expect_py
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    for id_, s in opt.state_dict()["state"].items():
        for k, v in s.items():
            assert torch.equal(v, opt_state[id_][k]) if torch.is_tensor(v) else v == opt_state[id_][k]
    assert [g["lr"] for g in opt.param_groups] == lrs
    assert not model.training and all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))

    # control: without restoring, the sweep changes the weights
    range_test(model, opt, least_squares(), mse, num_steps=20, restore_state=False)
    assert any(not torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_lr_find_key_writes_the_choice_into_the_run(tiny_config):
    run = finetune({**tiny_config, "lr": "find", "max_steps": 3}, wait=True)
    assert run.status == "finished", run.error
    res = run.lr_find_result
    assert isinstance(res, LRFindResult) and res.suggestion is not None
    import yaml

    saved = yaml.safe_load((run.dir / "config.yaml").read_text())
    assert saved["lr"] == pytest.approx(res.suggestion) and saved["lr_find"] is False
    assert run.config.lr == pytest.approx(res.suggestion)
    assert LRFindResult.load(run.dir / "lr_find.json").suggestion == pytest.approx(res.suggestion)
    from nb_finetune.core.events import ControlApplied

    (note,) = [e for e in run.run_dir.read_events() if isinstance(e, ControlApplied) and e.source == "lr_find"]
    assert note.args == {"lr": pytest.approx(res.suggestion)} and note.step == 0
    assert run.history["lr"].dropna().max() <= res.suggestion * 1.0001
