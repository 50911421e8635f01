"""The loop's rooms on their own: schedule and optimizer, what is due, the best metric, the meter's one transfer,
commands and their acknowledgements, attention masks."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import tiny_bert  # noqa: E402

from nb_finetune.core.config import FinetuneConfig  # noqa: E402
from nb_finetune.core.events import ControlApplied, Controls  # noqa: E402
from nb_finetune.core.freezing import apply_freeze, build_layer_map  # noqa: E402
from nb_finetune.core.runs import RunDir, append_command  # noqa: E402
from nb_finetune.core.tasks.text_classification import TextClassification  # noqa: E402
from nb_finetune.core.train.flow import Best, Meter, eval_due  # noqa: E402
from nb_finetune.core.train.live import CommandDesk, Live, apply_set  # noqa: E402
from nb_finetune.core.train.masks import mask_inputs  # noqa: E402
from nb_finetune.core.train.optim import build_optimizer, lr_factor, set_lrs, warmup_steps  # noqa: E402
from nb_finetune.errors import FinetuneError  # noqa: E402


# ------------------------------------------------------------------------------------------------ schedule
def test_lr_factor_warms_up_then_follows_its_shape():
    assert [lr_factor(s, 10, 3, "linear") for s in range(3)] == [0.25, 0.5, 0.75]
    assert lr_factor(3, 10, 3, "linear") == 1.0 and lr_factor(10, 10, 3, "linear") == 0.0
    assert lr_factor(5, 10, 0, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(9, 10, 0, "constant") == 1.0
    assert lr_factor(50, 10, 0, "linear") == 0.0  # past the plan: clamped, never negative


def test_warmup_is_steps_from_one_and_a_share_below():
    assert warmup_steps(7, 100) == 7 and warmup_steps(0.1, 95) == 10 and warmup_steps(0, 100) == 0


def test_optimizer_groups_skip_frozen_parameters_and_decay_only_matrices():
    model = tiny_bert(2)
    lm = build_layer_map(model)
    cfg = FinetuneConfig.from_dict({"model": "x", "freeze": "bottom 1", "layer_lr_decay": 0.5})
    live = Live.from_config(cfg, lm)
    apply_freeze(model, lm, live.frozen)
    opt = build_optimizer(model, lm, live, fused=False)
    groups = {(g["group"], g["decay"]): g for g in opt.param_groups}
    assert {g for g, _ in groups} == {"blocks.1", "head"}  # embeddings and blocks.0 are frozen: no state, no group
    assert all(p.ndim >= 2 for p in groups[("head", True)]["params"])
    assert groups[("head", False)]["weight_decay"] == 0.0
    assert groups[("blocks.1", True)]["lr_mult"] == 0.5 and groups[("head", True)]["lr_mult"] == 1.0
    set_lrs(opt, 1e-3)
    assert groups[("blocks.1", True)]["lr"] == pytest.approx(5e-4)


def test_rebuilt_optimizer_keeps_the_state_of_parameters_that_stay_trainable():
    model = tiny_bert(2)
    lm = build_layer_map(model)
    live = Live.from_config(FinetuneConfig.from_dict({"model": "x"}), lm)
    opt = build_optimizer(model, lm, live, fused=False)
    model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([1])).loss.backward()
    opt.step()
    apply_freeze(model, lm, {"embeddings"})
    new = build_optimizer(model, lm, live, fused=False, old=opt)
    head = model.classifier.weight
    assert new.state[head] is opt.state[head]
    assert model.bert.embeddings.word_embeddings.weight not in new.state


# ------------------------------------------------------------------------------------------------ flow
def test_eval_is_due_on_its_interval_and_at_the_last_step():
    assert eval_due(5, True, 10, False, 1, 100) and not eval_due(5, True, 11, False, 1, 100)
    assert eval_due(50, True, 100, False, 1, 100)  # the last step evaluates whatever the interval
    assert not eval_due(None, True, 100, True, 1, 100) and not eval_due(5, False, 10, True, 1, 100)


class _LowerAccuracy(TextClassification):
    name = "test-lower"
    lower_is_better = frozenset({"accuracy"})


def test_best_direction_comes_from_the_task_unless_early_stopping_says():
    cfg = FinetuneConfig.from_dict({"model": "x", "metric_for_best": "accuracy"})
    best = Best.for_run(cfg, _LowerAccuracy(cfg))
    assert best.metric == "eval_accuracy" and not best.higher_better
    assert best.update({"eval_accuracy": 0.6}, 1) and best.update({"eval_accuracy": 0.4}, 2)
    assert not best.update({"eval_accuracy": 0.5}, 3) and (best.value, best.step, best.bad_evals) == (0.4, 2, 1)
    es = FinetuneConfig.from_dict(
        {"model": "x", "early_stopping": {"metric": "accuracy", "mode": "max", "patience": 2}}
    )
    best = Best.for_run(es, _LowerAccuracy(es))
    assert best.higher_better
    best.update({"eval_accuracy": 0.5}, 1)
    best.update({"eval_accuracy": 0.4}, 2)
    assert not best.stop_early
    best.update({"eval_accuracy": 0.5}, 3)  # not better than 0.5
    assert best.stop_early


def test_meter_reads_a_window_in_one_transfer(monkeypatch):
    meter = Meter(torch.device("cpu"), samples=0, tokens=0)
    for loss, norm in ((1.0, 2.0), (float("inf"), 4.0), (3.0, 6.0)):
        meter.batch(1e9, 100)
        meter.step(torch.tensor(loss), torch.tensor(norm))
    reads = []
    real = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(t.shape) or real(t))
    opt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "group": "head", "lr": 0.1}])
    ev = meter.log(3, 1.0, samples=30, tokens=240, base_lr=0.1, optimizer=opt)
    assert len(reads) == 1
    assert ev.losses == [1.0, math.inf, 3.0] and ev.nonfinite_steps == 1 and ev.grad_norm == 4.0
    assert ev.padding == pytest.approx(0.2) and ev.group_lrs == {"head": 0.1}
    meter.step(torch.tensor(0.5))
    ev2 = meter.log(4, 1.1, samples=40, tokens=300, base_lr=0.1, optimizer=opt)
    assert ev2.losses == [0.5] and ev2.nonfinite_steps == 0 and ev2.grad_norm is None  # a fresh window


# ------------------------------------------------------------------------------------------------ commands
class _Events:
    def __init__(self):
        self.events = []

    def __call__(self, e):
        self.events.append(e)

    def acks(self):
        return [(e.command, e.seq, e.ok) for e in self.events if isinstance(e, ControlApplied)]


def test_commands_are_acknowledged_in_order_and_changes_wait_for_a_step(tmp_path):
    controls, emit = Controls(), _Events()
    desk = CommandDesk(controls, RunDir.create(tmp_path, "r"), emit)
    controls.set(lr=1e-4)
    controls.pause()
    controls.freeze("bottom 1")
    desk.acknowledge(0)  # between micro-batches: only the pause is in effect
    assert emit.acks() == [("pause", 2, True)]
    controls.resume()
    applied = []
    for cmd in desk.due(5):
        applied.append(cmd.kind)
        desk.ack(cmd, 5)
    assert applied == ["set", "freeze"]
    assert emit.acks()[1:] == [("set", 1, True), ("freeze", 3, True), ("resume", 4, True)]
    controls.checkpoint()
    desk.acknowledge(6)
    desk.refuse_pending(6, "not applied: the run stopped first")
    assert emit.acks()[-1] == ("checkpoint", 5, False) and not desk.pending


def test_a_malformed_command_from_the_control_file_is_refused(tmp_path):
    rd = RunDir.create(tmp_path, "r")
    controls, emit = Controls(), _Events()
    desk = CommandDesk(controls, rd, emit)
    append_command(rd.path, "explode")
    append_command(rd.path, "set", lr=1e-4)
    desk.poll_file(3)
    assert emit.acks() == [("explode", 1, False)]
    assert [c.kind for c in desk.due(3)] == ["set"]


def test_set_refuses_fields_that_cannot_change_and_moves_the_plan():
    lm = build_layer_map(tiny_bert(2))
    live = Live.from_config(FinetuneConfig.from_dict({"model": "x", "epochs": 3}), lm)
    opt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "group": "head", "decay": True}], lr=1)
    with pytest.raises(FinetuneError, match="cannot change during a run"):
        apply_set({"batch_size": 4}, live, opt, 5, 10, lm)
    with pytest.raises(FinetuneError, match="would end before the current step"):
        apply_set({"epochs": 1}, live, opt, 15, 10, lm)
    assert apply_set({"epochs": 5, "weight_decay": 0.1}, live, opt, 15, 10, lm) == "epochs=5, weight_decay=0.1"
    assert live.total_steps(10) == 50 and opt.param_groups[0]["weight_decay"] == 0.1


# ------------------------------------------------------------------------------------------------ masks
def test_mask_inputs_drops_a_mask_without_padding_and_never_changes_the_batch():
    full = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long)}
    assert "attention_mask" not in mask_inputs(full, [3, 3], mask_4d=True) and "attention_mask" in full
    padded = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    four = mask_inputs(padded, [3, 2], mask_4d=True)["attention_mask"]
    # additive, in float32 unless the model's dtype is given (a boolean 4D mask is 5.6% slower on CPU: masks.py)
    assert four.shape == (2, 1, 3, 3) and four.dtype == torch.float32
    assert four[1, 0, 0, 2] == torch.finfo(torch.float32).min and four[1, 0, :, :2].eq(0).all() and four[0].eq(0).all()
    assert mask_inputs(padded, [3, 2], mask_4d=torch.bfloat16)["attention_mask"].dtype == torch.bfloat16
    assert padded["attention_mask"].shape == (2, 3)  # what an eval metric reads stays 2D
    assert mask_inputs(padded, [3, 2], mask_4d=False)["attention_mask"].shape == (2, 3)


def test_start_up_probes_take_short_examples_of_two_lengths():
    import numpy as np

    from nb_finetune.core.cache import short_padded_rows

    lengths = np.array([50, 3, 3, 64, 4, 9])
    assert short_padded_rows(lengths, 2) == [1, 4] and short_padded_rows(lengths, 3) == [1, 4, 2]
    assert short_padded_rows(np.array([7, 7, 7]), 2) is None  # no padding to check


def test_the_worker_thread_gets_the_users_thread_count_only_when_it_was_changed(monkeypatch):
    from nb_finetune.core.train import device

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    device.keep_thread_count()
    assert calls == []  # the default stays as it is (MKL keeps choosing fewer threads for small matmuls)
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    device.keep_thread_count()
    assert calls == [3]


_OMP_PROBE = """
import os, threading, torch
from nb_finetune.core.train import release_openmp_threads

torch.set_num_threads(2)
def threads():
    return len(os.listdir("/proc/self/task"))
x = torch.randn(2_000_000)
for _ in range(3):
    torch.nn.functional.gelu(x)  # parallel work on this thread: OpenMP gives it a pool of helper threads
before = threads()
released = release_openmp_threads()
after = threads()
# the worker's pool still forms and works after the release
done = []
t = threading.Thread(target=lambda: done.append(float(torch.nn.functional.gelu(x).sum())))
t.start(); t.join()
print(released, before, after, len(done))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through /proc (Linux)")
def test_release_openmp_threads_frees_the_calling_threads_pool(tmp_path):
    """Control: the count before the release includes the calling thread's OpenMP helper; after it, that helper is
    gone (a no-op release would leave the count equal), and parallel work on another thread still runs."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", _OMP_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    released, before, after, done = out.stdout.split()
    assert released == "True"
    assert int(after) < int(before)
    assert done == "1"


def test_the_additive_4d_mask_gives_the_2d_masks_outputs_and_gradients():
    """What the loop hands an SDPA model instead of its 2D mask. Control: the same model attending to the padding
    (an all-ones mask) gives other logits, so the comparison can tell masks apart."""
    torch.manual_seed(0)
    model = tiny_bert(2).eval()
    ids = torch.randint(5, 100, (3, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    batch = {"input_ids": ids, "attention_mask": mask}

    def run(b):
        model.zero_grad(set_to_none=True)
        hidden = model(**b, output_hidden_states=True).hidden_states[-1]  # the logits of a random head barely move
        (hidden * torch.linspace(-1, 1, hidden.shape[-1])).sum().backward()
        return hidden.detach(), model.bert.embeddings.word_embeddings.weight.grad.clone()

    ref, ref_grad = run(batch)
    four = mask_inputs(batch, [7, 4, 2], mask_4d=torch.float32)
    assert four["attention_mask"].dim() == 4
    out, grad = run(four)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=1e-5)
    leaky, _ = run({"input_ids": ids, "attention_mask": torch.ones_like(mask)})
    assert not torch.allclose(leaky[1:, :2], ref[1:, :2], atol=1e-3)
