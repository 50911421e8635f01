"""batch_size: auto and out-of-memory handling, with fake out-of-memory errors raised from a patched forward at
chosen batch sizes (a CPU raises none of its own). Control cases: the same runs without the fake error (the
probe then takes the target whole; the mid-run run's steps are the reference), and a run without `auto`, whose
out-of-memory is a short error instead of a shrink."""

from __future__ import annotations

import torch
import transformers
import yaml

from nb_finetune import finetune
from nb_finetune.core.batch_size import BatchPlan, estimate_bytes, resolve_batch_size
from nb_finetune.core.config import load_config
from nb_finetune.core.events import CheckpointSaved, ControlApplied, StepEnded
from nb_finetune.core.freezing import resolve_freeze
from nb_finetune.core.tasks.base import resolve_task

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (fake, raised by the test)"


class FakeOOM:
    """Patches BertForSequenceClassification.forward: out of memory for batches above `limit` (training, eval or
    both), from the moment `armed` is set; records every training micro-batch that ran."""

    def __init__(self, monkeypatch, limit: int, *, train: bool = True, eval: bool = False, armed: bool = True):
        self.limit, self.train, self.eval, self.armed = limit, train, eval, armed
        self.raised = 0
        self.micro: list[list[tuple]] = [[]]  # per optimizer step: the examples (token rows) of its micro-batches
        real = transformers.BertForSequenceClassification.forward
        fake = self

        def forward(model, input_ids=None, attention_mask=None, **kw):
            n = input_ids.shape[0]
            if (
                fake.armed
                and n > fake.limit
                and ((model.training and fake.train) or (not model.training and fake.eval))
            ):
                fake.raised += 1
                raise torch.OutOfMemoryError(OOM)
            if model.training:
                pad = model.config.pad_token_id
                fake.micro[-1].extend(tuple(t for t in r.tolist() if t != pad) for r in input_ids)
            return real(model, input_ids=input_ids, attention_mask=attention_mask, **kw)

        monkeypatch.setattr(transformers.BertForSequenceClassification, "forward", forward)

    def on_event(self, e):
        if isinstance(e, StepEnded):
            self.micro.append([])
        elif isinstance(e, ControlApplied) and e.source == "oom":
            self.micro[-1] = []  # the failed cycle is run again from its start

    def steps(self, n: int) -> list[list[tuple]]:
        """The examples of the first n optimizer steps."""
        return [sorted(m) for m in self.micro[:n]]


def _parts(cfg_dict):
    cfg = load_config(cfg_dict)
    task = resolve_task(cfg)
    task.preflight()
    task.cfg = cfg
    model = task.build_model()
    train, _ = task.build_data()
    lm = task.layer_map(model)
    return cfg, task, model, train, lm, resolve_freeze(cfg.freeze, lm)


def test_probe_keeps_batch_times_accumulation(tiny_config, monkeypatch):
    fake = FakeOOM(monkeypatch, limit=8)
    cfg, task, model, train, lm, frozen = _parts({**tiny_config, "batch_size": "auto", "effective_batch": 64})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    choice = resolve_batch_size(cfg, task, model, train, lm, frozen, method="probe", device="cpu")
    assert (choice.batch_size, choice.grad_accum) == (8, 8) and fake.raised == 3  # 64, 32, 16 failed
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    cfg48 = cfg.replace(effective_batch=48)
    choice = resolve_batch_size(cfg48, task, model, train, lm, frozen, method="probe", device="cpu")
    assert choice.batch_size * choice.grad_accum == 48 and choice.batch_size <= 8
    fake.armed = False  # control: nothing fails, the target fits whole
    choice = resolve_batch_size(cfg, task, model, train, lm, frozen, method="probe", device="cpu")
    assert (choice.batch_size, choice.grad_accum) == (64, 1)


def test_cpu_small_max_memory_gives_accumulation(tiny_config):
    cfg, task, model, train, lm, frozen = _parts(tiny_config)
    total = sum(p.numel() for p in model.parameters())
    fits_4 = estimate_bytes(task, cfg, lm, frozen, 4, total, total)
    assert estimate_bytes(task, cfg, lm, frozen, 8, total, total) > fits_4
    budget_gb = (fits_4 + 1) / 2**30
    steps = []

    class Samples:
        def on_event(self, e):
            if isinstance(e, StepEnded):
                steps.append(e.samples)

    run = finetune(
        {**tiny_config, "batch_size": "auto", "effective_batch": 32, "max_memory_gb": budget_gb, "max_steps": 2},
        callbacks=[Samples()],
        wait=True,
    )
    assert run.status == "finished", run.error
    saved = yaml.safe_load((run.dir / "config.yaml").read_text())
    assert (saved["batch_size"], saved["grad_accum"]) == (4, 8)
    assert steps == [32, 64]
    note = [e for e in run.run_dir.read_events() if isinstance(e, ControlApplied) and e.source == "batch_size"]
    assert note[0].args == {"batch_size": 4, "grad_accum": 8} and "max_memory_gb" in note[0].message
    report = finetune(
        {**tiny_config, "batch_size": "auto", "effective_batch": 32, "max_memory_gb": budget_gb}, dry_run=True
    )
    assert "batch_size: auto -> batch_size 4 x grad_accum 8 = 32 per step" in str(report)
    # control: a generous budget takes the effective batch in one micro-batch
    cfg2 = cfg.replace(batch_size_auto=True, effective_batch=32, max_memory_gb=64)
    choice = resolve_batch_size(cfg2, task, model, train, lm, frozen, method="estimate")
    assert (choice.batch_size, choice.grad_accum) == (32, 1)


def test_eval_only_oom_shrinks_only_the_eval_batch(tiny_config, monkeypatch):
    fake = FakeOOM(monkeypatch, limit=8, train=False, eval=True)
    samples = []

    class Samples:
        def on_event(self, e):
            if isinstance(e, StepEnded):
                samples.append(e.samples)

    run = finetune({**tiny_config, "max_steps": 3, "eval_every": 3}, callbacks=[Samples()], wait=True)
    assert run.status == "finished", run.error
    assert fake.raised == 2  # 32 and 16 failed, 8 ran
    assert run.config.eval_batch_size == 8 and run.config.batch_size == 16
    assert samples == [16, 32, 48]
    assert "eval_accuracy" in run.metrics


def _mid_run(tiny_config, monkeypatch, *, auto: bool, oom: bool):
    fake = FakeOOM(monkeypatch, limit=16, armed=False)

    class Arm:
        def on_event(self, e):
            if isinstance(e, StepEnded) and e.step == 2 and oom:
                fake.armed = True

    cfg = {**tiny_config, "max_steps": 5, "eval_every": None, "save_every": None, "name": f"mid-{auto}-{oom}"}
    cfg |= {"batch_size": "auto", "effective_batch": 32, "max_memory_gb": 64} if auto else {"batch_size": 32}
    run = finetune(cfg, callbacks=[fake, Arm()], wait=True)
    return run, fake


def test_mid_run_oom_goes_on_from_the_same_data_position(tiny_config, monkeypatch):
    ref, ref_fake = _mid_run(tiny_config, monkeypatch, auto=True, oom=False)
    assert ref.status == "finished" and ref_fake.raised == 0
    run, fake = _mid_run(tiny_config, monkeypatch, auto=True, oom=True)
    assert run.status == "finished", run.error
    assert fake.raised == 1 and run.step == ref.step == 5
    events = run.run_dir.read_events()
    (ck,) = [e for e in events if isinstance(e, CheckpointSaved) and e.reason == "oom"]
    (note,) = [e for e in events if isinstance(e, ControlApplied) and e.source == "oom"]
    assert ck.step == note.step >= 2 and note.args == {"batch_size": 16, "grad_accum": 2}
    # the same examples make every optimizer step, before and after the shrink
    assert fake.steps(5) == ref_fake.steps(5)
    assert sorted(len(s) for s in fake.steps(5)) == [16, 32, 32, 32, 32]
    st = yaml.safe_load((run.dir / "checkpoints" / f"step-{ck.step:06d}" / "state.json").read_text())
    assert st["batch_plan"] == {"planned": 32, "grad_accum": 1, "split": 1}


def test_mid_run_oom_without_auto_is_a_short_error(tiny_config, monkeypatch):
    run, fake = _mid_run(tiny_config, monkeypatch, auto=False, oom=True)
    assert run.status == "failed" and fake.raised == 1
    assert run.error.startswith("out of memory in training at batch_size 32")
    assert "Lower one of: batch_size (e.g. 16, with grad_accum 2" in run.error and "\n" not in run.error


def test_plan_split_is_a_refinement():
    import numpy as np

    lengths = np.arange(1, 42)
    plan = BatchPlan(8, 1)
    before = plan.batches(lengths, 0, 0, True)
    j = plan.shrink_at(lengths, 0, 0, True, 3)
    after = plan.batches(lengths, 0, 0, True)
    assert sorted(np.concatenate(after[:j]).tolist()) == sorted(np.concatenate(before[:3]).tolist())
    assert plan.micro == 4 and plan.grad_accum == 2
