"""Layer-wise learning rates (layer_lr_decay, group_lr) and gradual unfreezing (unfreeze_every, unfreeze_until):
the pure functions on tiny BERT / Llama layer maps, the config fields, and what real runs on the tiny BERT do
with them (optimizer lrs, requires_grad, untouched frozen weights, events, metrics.jsonl, live changes, resume)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import tiny_bert, tiny_llama  # noqa: E402
from test_host_sync import counter  # noqa: E402, F401 - the sync-counting fixture

from nb_finetune import finetune, get_run  # noqa: E402
from nb_finetune.core.config import FinetuneConfig, parse_interval  # noqa: E402
from nb_finetune.core.events import ControlApplied, Logged, RunStarted, StepEnded  # noqa: E402
from nb_finetune.core.freezing import (  # noqa: E402
    build_layer_map,
    lr_multipliers,
    next_unfreeze,
    resolve_freeze,
)
from nb_finetune.core.train.flow import due  # noqa: E402
from nb_finetune.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def bert_map():
    return build_layer_map(tiny_bert(4))  # embeddings, blocks.0-3, head (pooler + classifier)


@pytest.fixture(scope="module")
def llama_map():
    return build_layer_map(tiny_llama())  # embeddings, blocks.0-2, head (final norm; lm_head is tied)


# ------------------------------------------------------------------------------------------------ lr_multipliers
def test_layer_lr_decay_on_bert(bert_map):
    assert lr_multipliers(bert_map, 0.5) == {
        "embeddings": 0.03125,
        "blocks.0": 0.0625,
        "blocks.1": 0.125,
        "blocks.2": 0.25,
        "blocks.3": 0.5,
        "head": 1.0,
    }


def test_layer_lr_decay_on_llama(llama_map):
    assert llama_map.names == ["embeddings", "blocks.0", "blocks.1", "blocks.2", "head"]
    assert lr_multipliers(llama_map, 0.5) == {
        "embeddings": 0.0625,
        "blocks.0": 0.125,
        "blocks.1": 0.25,
        "blocks.2": 0.5,
        "head": 1.0,
    }


def test_no_decay_and_no_group_lr_is_all_ones(bert_map):
    assert set(lr_multipliers(bert_map).values()) == {1.0}
    assert set(lr_multipliers(bert_map, 1.0).values()) == {1.0}


def test_group_lr_multiplies_on_top_of_the_decay(bert_map):
    got = lr_multipliers(bert_map, 0.5, {"embeddings": 0.1, "blocks.0-1": 2, "head": 3})
    assert got == pytest.approx(
        {
            "embeddings": 0.003125,
            "blocks.0": 0.125,
            "blocks.1": 0.25,
            "blocks.2": 0.25,
            "blocks.3": 0.5,
            "head": 3.0,
        }
    )


def test_group_lr_without_decay_ranges_negative_indices_and_later_keys(llama_map):
    got = lr_multipliers(llama_map, None, {"blocks.0-2": 0.5, "blocks.-1": 4, "Embeddings": 0.2})
    assert got == {"embeddings": 0.2, "blocks.0": 0.5, "blocks.1": 0.5, "blocks.2": 4.0, "head": 1.0}


@pytest.mark.parametrize(
    "group_lr, needle",
    [
        ({"blocks.4": 2}, "groups: embeddings, blocks.0-3, head"),
        ({"blocks.2-9": 2}, "groups: embeddings, blocks.0-3, head"),
        ({"pooler": 2}, "'pooler' is not a layer group"),
        ({"head": 0}, "not a multiplier > 0"),
        ({"head": -1.5}, "not a multiplier > 0"),
    ],
)
def test_bad_group_lr_names_the_groups(bert_map, group_lr, needle):
    with pytest.raises(ConfigError, match="group_lr") as err:
        lr_multipliers(bert_map, 0.9, group_lr)
    assert needle in str(err.value)


def test_group_lr_on_a_model_without_a_head_group():
    import torch.nn as nn

    plain = build_layer_map(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)))
    with pytest.raises(ConfigError, match=r"no 'head' group \(groups: blocks.0-2\)"):
        lr_multipliers(plain, None, {"head": 2})
    assert lr_multipliers(plain, 0.5) == {"blocks.0": 0.125, "blocks.1": 0.25, "blocks.2": 0.5}


@pytest.mark.parametrize("decay", [0, 1.5, -0.5])
def test_layer_lr_decay_out_of_range(bert_map, decay):
    with pytest.raises(ConfigError, match="layer_lr_decay"):
        lr_multipliers(bert_map, decay)


# ------------------------------------------------------------------------------------------------ next_unfreeze
def test_next_unfreeze_goes_from_the_top_block_down_to_the_embeddings(bert_map):
    frozen = resolve_freeze("all_but_head", bert_map)
    opened = []
    while (new := next_unfreeze(bert_map, frozen)) is not None:
        (name,) = frozen - new
        opened.append(name)
        frozen = new
    assert opened == ["blocks.3", "blocks.2", "blocks.1", "blocks.0", "embeddings"]
    assert frozen == set()


def test_next_unfreeze_stops_at_the_floor(bert_map):
    floor = resolve_freeze("bottom 2", bert_map)
    frozen = resolve_freeze("all_but_head", bert_map)
    steps = []
    while (new := next_unfreeze(bert_map, frozen, floor)) is not None:
        steps.append(sorted(new))
        frozen = new
    assert steps == [["blocks.0", "blocks.1", "blocks.2", "embeddings"], ["blocks.0", "blocks.1", "embeddings"]]
    assert next_unfreeze(bert_map, set(), floor) is None


def test_next_unfreeze_opens_a_frozen_head_first_and_handles_gaps(llama_map):
    assert next_unfreeze(llama_map, set(llama_map.names)) == set(llama_map.names) - {"head"}
    assert next_unfreeze(llama_map, {"embeddings", "blocks.1"}) == {"embeddings"}


# ------------------------------------------------------------------------------------------------ config
def test_config_fields_from_a_cell():
    cfg = FinetuneConfig.from_cell(
        "freeze: all_but_head\n"
        "llrd: 0.8\n"
        "group_lr:\n"
        "  embeddings: 0.1\n"
        "  blocks.0-5: 0.5\n"
        "unfreeze_every: 2 epochs\n"
        "unfreeze_until: bottom 2\n"
    )
    assert cfg.layer_lr_decay == 0.8
    assert cfg.group_lr == {"embeddings": 0.1, "blocks.0-5": 0.5}
    assert (cfg.unfreeze_every, cfg.unfreeze_until) == ("2 epochs", "bottom 2")
    assert FinetuneConfig.from_dict(cfg.to_dict()) == cfg
    assert FinetuneConfig.from_dict({"layerwise_lr_decay": 0.9, "gradual_unfreeze": True}).unfreeze_every == "epoch"


@pytest.mark.parametrize(
    "cell, needles",
    [
        ("llrd: 1.5", ["line 2 (layer_lr_decay)", "less than or equal to 1"]),
        ("layer_lr_decay: 0", ["greater than 0"]),
        ("group_lr:\n  encoder: 0.1", ["line 2 (group_lr)", "'encoder' is not a layer group"]),
        ("group_lr:\n  head: fast", ["group_lr", "expected a number"]),
        ("group_lr: 3", ["group_lr", "expected a mapping"]),
        ("unfreeze_every: 30min", ["unfreeze_every", "optimizer steps"]),
        ("unfreeze_every: 0 epochs", ["unfreeze_every", "whole number of epochs"]),
        ("unfreeze_every: 2\nunfreeze_until: bottom 99x", ["unfreeze_until", "not a freeze spec"]),
        ("unfreeze_until: bottom 2", ["unfreeze_until needs unfreeze_every"]),
    ],
)
def test_bad_config_values(cell, needles):
    with pytest.raises(ConfigError) as err:
        FinetuneConfig.from_cell(cell)
    for n in needles:
        assert n in str(err.value)


def test_intervals_in_epochs():
    assert parse_interval("3 epochs") == ("epoch", 3)
    assert parse_interval("every 2 epochs") == ("epoch", 2)
    assert parse_interval("1 epoch") == ("epoch", 1)
    # eval_every / save_every in epochs: due at every 2nd epoch end only
    assert [n for n in range(1, 7) if due("2 epochs", 0, True, None, n)] == [2, 4, 6]
    assert not due("2 epochs", 0, False, None, 2)
    assert [n for n in range(1, 4) if due("epoch", 0, True, None, n)] == [1, 2, 3]


# ------------------------------------------------------------------------------------------------ runs
class Recorder:
    """Runs `hook(event)` on the training thread and keeps the events."""

    def __init__(self, hook=None):
        self.events = []
        self.hook = hook

    def on_event(self, e):
        self.events.append(e)
        if self.hook is not None:
            self.hook(e)

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    def schedule(self):
        return [(e.step, e.args["spec"], e.ok) for e in self.of(ControlApplied) if e.source == "schedule"]


def _group_params(run):
    """{group: [parameter tensors]} of the run's model, by the run's layer map."""
    params = dict(run.model.named_parameters())
    return {g.name: [params[n] for n in g.param_names] for g in run._layer_map.groups}


def test_layer_lr_decay_sets_each_groups_lr_and_update_size(tiny_config):
    """Adam's first update of a weight is lr x g/(|g| + eps): the largest change in each group is that group's lr."""
    lr = 1e-3
    snap, name = {}, "llrd"

    def hook(e):
        if isinstance(e, RunStarted):
            snap["before"] = {g: [p.detach().clone() for p in ps] for g, ps in _group_params(get_run(name)).items()}
        elif isinstance(e, StepEnded) and e.step == 1:
            snap["moved"] = {
                g: max(float((p.detach() - p0).abs().max()) for p, p0 in zip(ps, snap["before"][g]))
                for g, ps in _group_params(get_run(name)).items()
            }

    rec = Recorder(hook)
    cfg = {
        **tiny_config,
        "name": name,
        "lr": lr,
        "max_steps": 3,
        "warmup": 0,
        "scheduler": "constant",
        "weight_decay": 0.0,
        "precision": "fp32",
        "save_every": None,
        "layer_lr_decay": 0.5,
        "group_lr": {"blocks.0": 3},
    }
    run = finetune(cfg, callbacks=[rec])
    run.wait(timeout=120)
    assert run.status == "finished", run.error
    expected = {"embeddings": 0.125, "blocks.0": 0.75, "blocks.1": 0.5, "head": 1.0}
    assert {g: v / lr for g, v in snap["moved"].items()} == pytest.approx(expected, rel=1e-3)
    logged = rec.of(Logged)
    assert [e.step for e in logged] == [1, 2, 3]
    for e in logged:
        assert e.lr == pytest.approx(lr)  # the base lr: a multiplier-1 group's lr
        assert e.group_lrs == pytest.approx({g: lr * m for g, m in expected.items()})
    on_disk = [r for r in run._run_dir.read_metrics() if r.get("event") == "log"]
    assert [r["group_lrs"] for r in on_disk] == [e.group_lrs for e in logged]


def test_gradual_unfreezing_every_2_steps(tiny_config):
    """freeze: all_but_head + unfreeze_every: 2 on a 2-block BERT: blocks.1 at step 2, blocks.0 at 4, the embeddings
    at 6; each group's weights stay bit-identical until it is unfrozen; the optimizer keeps the lr multipliers."""
    lr = 1e-3
    initial, seen, name = {}, {}, "unfreeze2"

    def hook(e):
        run = get_run(name)
        if isinstance(e, RunStarted):
            initial.update({g: [p.detach().clone() for p in ps] for g, ps in _group_params(run).items()})
        elif isinstance(e, StepEnded):
            groups = _group_params(run)
            seen[e.step] = {
                "requires_grad": {g: all(p.requires_grad for p in ps) for g, ps in groups.items()},
                "unchanged": {g: all(torch.equal(p, p0) for p, p0 in zip(ps, initial[g])) for g, ps in groups.items()},
                "layer_map": run.layer_map().set_index("group")["trainable"].to_dict(),
            }

    rec = Recorder(hook)
    cfg = {
        **tiny_config,
        "name": name,
        "lr": lr,
        "max_steps": 8,
        "warmup": 0,
        "scheduler": "constant",
        "save_every": None,
        "freeze": "all_but_head",
        "unfreeze_every": 2,
        "layer_lr_decay": 0.5,
    }
    run = finetune(cfg, callbacks=[rec])
    run.wait(timeout=120)
    assert run.status == "finished", run.error

    assert rec.schedule() == [(2, ["blocks.0", "embeddings"], True), (4, ["embeddings"], True), (6, [], True)]
    msgs = [e.message for e in rec.of(ControlApplied)]
    assert [m.split(" (")[0] for m in msgs] == [
        "gradual unfreezing: blocks.1 trainable",
        "gradual unfreezing: blocks.0 trainable",
        "gradual unfreezing: embeddings trainable",
    ]
    assert all(e.command == "freeze" and e.seq == 0 for e in rec.of(ControlApplied))
    frozen_at = {1: {"embeddings", "blocks.0", "blocks.1"}, 3: {"embeddings", "blocks.0"}, 5: {"embeddings"}, 7: set()}
    for step in range(1, 9):
        frozen = frozen_at[step - (step + 1) % 2]
        want_grad = {g: g not in frozen for g in ("embeddings", "blocks.0", "blocks.1", "head")}
        assert seen[step]["requires_grad"] == want_grad, step
        assert seen[step]["layer_map"] == want_grad, step
        # a group moves from the first step after it was unfrozen; until then it is bit-identical
        assert seen[step]["unchanged"] == {g: frozen_at_or_before(frozen_at, step, g) for g in want_grad}, step
    # the rebuilt optimizers kept the layer-wise multipliers
    lrs = {e.step: e.group_lrs for e in rec.of(Logged)}
    assert lrs[1] == pytest.approx({"head": lr})
    assert lrs[3] == pytest.approx({"blocks.1": lr / 2, "head": lr})
    assert lrs[7] == pytest.approx({"embeddings": lr / 8, "blocks.0": lr / 4, "blocks.1": lr / 2, "head": lr})
    assert run.layer_map()["trainable"].all()
    on_disk = [
        (r["step"], r["args"]["spec"], r["source"], r["ok"])
        for r in run._run_dir.read_metrics()
        if r.get("event") == "ControlApplied"
    ]
    assert on_disk == [(s, spec, "schedule", ok) for s, spec, ok in rec.schedule()]


def frozen_at_or_before(frozen_at: dict, step: int, group: str) -> bool:
    """Whether `group` has been frozen for every optimizer step up to and including `step`."""
    return all(group in frozen_at[s - (s + 1) % 2] for s in range(1, step + 1))


def test_unfreezing_per_epoch_stops_at_the_floor_and_turns_the_cache_off(tiny_config):
    """144 training examples, batch 32: 5 steps an epoch. unfreeze_every: epoch with unfreeze_until: bottom 1 opens
    blocks.1 at step 5 and nothing more (embeddings + blocks.0 are the floor)."""
    rec = Recorder()
    cfg = {
        **tiny_config,
        "batch_size": 32,
        "epochs": 3,
        "save_every": None,
        "eval_every": None,
        "freeze": "all_but_head",
        "unfreeze_every": "epoch",
        "unfreeze_until": "bottom 1",
    }
    run = finetune(cfg, callbacks=[rec], wait=True)
    assert run.status == "finished", run.error
    started = rec.of(RunStarted)[0]
    assert started.steps_per_epoch == 5 and run.step == 15
    assert started.cache.startswith("off (gradual unfreezing")
    assert rec.schedule() == [(5, ["blocks.0", "embeddings"], True)]
    assert run.layer_map().set_index("group")["trainable"].to_dict() == {
        "embeddings": False,
        "blocks.0": False,
        "blocks.1": True,
        "head": True,
    }


def test_live_layer_lr_decay_applies_at_the_next_step_and_bad_values_are_refused(tiny_config):
    """Also: unfreeze_every with nothing frozen warns at start (ControlApplied ok=False) and the run goes on."""
    lr = 1e-3
    refused, name = {}, "liveset"

    def try_set(**values):
        try:
            get_run(name).set(**values)
        except ConfigError as e:
            return str(e)
        return None

    def hook(e):
        if isinstance(e, StepEnded) and e.step == 3:
            refused["decay"] = try_set(layer_lr_decay=2.0)
            refused["group"] = try_set(group_lr={"blocks.7": 2})
            get_run(name).set(layer_lr_decay=0.5)
            get_run(name).controls.set(layer_lr_decay=1.5)  # past the caller's checks: the engine refuses it
            get_run(name).controls.set(group_lr={"blocks.0-7": 2})

    rec = Recorder(hook)
    cfg = {
        **tiny_config,
        "name": name,
        "lr": lr,
        "max_steps": 6,
        "warmup": 0,
        "scheduler": "constant",
        "save_every": None,
        "unfreeze_every": 2,
    }
    run = finetune(cfg, callbacks=[rec])
    run.wait(timeout=120)
    assert run.status == "finished", run.error
    assert "less than or equal to 1" in refused["decay"]
    assert "groups: embeddings, blocks.0-1, head" in refused["group"]
    applied = [(e.step, e.command, e.source, e.ok) for e in rec.of(ControlApplied)]
    assert applied == [
        (0, "freeze", "schedule", False),
        (3, "set", "api", True),
        (3, "set", "api", False),
        (3, "set", "api", False),
    ]
    warn, ok_set, bad_decay, bad_group = rec.of(ControlApplied)
    assert "nothing is frozen" in warn.message and "freeze: all_but_head" in warn.message
    assert ok_set.message == "layer_lr_decay=0.5"
    assert "less than or equal to 1" in bad_decay.message
    assert "groups: embeddings, blocks.0-1, head" in bad_group.message
    lrs = {e.step: e.group_lrs for e in rec.of(Logged)}
    flat = {"embeddings": lr, "blocks.0": lr, "blocks.1": lr, "head": lr}
    decayed = {"embeddings": lr / 8, "blocks.0": lr / 4, "blocks.1": lr / 2, "head": lr}
    assert [lrs[s] == pytest.approx(flat) for s in (1, 2, 3)] == [True] * 3
    assert [lrs[s] == pytest.approx(decayed) for s in (4, 5, 6)] == [True] * 3


def test_live_unfreeze_every_and_a_user_freeze_restart_the_interval(tiny_config):
    """Schedule off at start; `set(unfreeze_every=2)` at step 2 -> first unfreeze at 4. A user freeze at step 5 puts
    blocks.1 back; the schedule goes on from there, a full interval later (step 7)."""
    name = "liveunfreeze"

    def hook(e):
        if isinstance(e, StepEnded) and e.step == 2:
            get_run(name).set(unfreeze_every=2)
        if isinstance(e, StepEnded) and e.step == 5:
            get_run(name).freeze("all_but_head")

    rec = Recorder(hook)
    cfg = {**tiny_config, "name": name, "max_steps": 8, "save_every": None, "freeze": "all_but_head"}
    run = finetune(cfg, callbacks=[rec])
    run.wait(timeout=120)
    assert run.status == "finished", run.error
    applied = [(e.step, e.command, e.source, e.ok) for e in rec.of(ControlApplied)]
    assert applied == [
        (2, "set", "api", True),
        (4, "freeze", "schedule", True),
        (5, "freeze", "api", True),
        (7, "freeze", "schedule", True),
    ]
    assert rec.schedule() == [(4, ["blocks.0", "embeddings"], True), (7, ["blocks.0", "embeddings"], True)]
    assert run.layer_map().set_index("group")["trainable"].to_dict() == {
        "embeddings": False,
        "blocks.0": False,
        "blocks.1": True,
        "head": True,
    }


def test_resume_mid_schedule_continues_it(tiny_config):
    """Stopped right at a scheduled unfreeze (step 3, unfreeze_every: 3) after a live layer_lr_decay change: the
    checkpoint holds the new frozen set, the live values and the schedule's position; the resumed run starts with
    blocks.1 trainable, unfreezes at 6 and 9 only (not again at 3) and keeps the live layer_lr_decay."""
    lr = 1e-3
    name = "sched"

    def hook(e):
        if isinstance(e, StepEnded) and e.step == 2:
            get_run(name).set(layer_lr_decay=0.5)
        if isinstance(e, StepEnded) and e.step == 3:
            get_run(name).stop()

    cfg = {
        **tiny_config,
        "name": name,
        "lr": lr,
        "max_steps": 10,
        "warmup": 0,
        "scheduler": "constant",
        "save_every": None,
        "freeze": "all_but_head",
        "unfreeze_every": 3,
    }
    first = Recorder(hook)
    run = finetune(cfg, callbacks=[first])
    run.wait(timeout=120)
    assert (run.status, run.step) == ("stopped", 3), run.error
    assert first.schedule() == [(3, ["blocks.0", "embeddings"], True)]
    ck = run.checkpoints[-1]
    state = json.loads((ck / "state.json").read_text())
    assert state["frozen"] == ["blocks.0", "embeddings"]
    assert state["live"]["unfreeze_from"] == 3 and state["live"]["layer_lr_decay"] == 0.5

    second = Recorder()
    resumed = finetune({**cfg, "resume_from": "last"}, callbacks=[second], wait=True)
    assert resumed.status == "finished", resumed.error
    started = second.of(RunStarted)[0]
    assert started.start_step == 3
    assert {r["group"]: r["trainable"] for r in started.layers} == {
        "embeddings": False,
        "blocks.0": False,
        "blocks.1": True,
        "head": True,
    }
    assert second.schedule() == [(6, ["embeddings"], True), (9, [], True)]
    lrs = {e.step: e.group_lrs for e in second.of(Logged)}
    assert lrs[4] == pytest.approx({"blocks.1": lr / 2, "head": lr})
    assert lrs[10] == pytest.approx({"embeddings": lr / 8, "blocks.0": lr / 4, "blocks.1": lr / 2, "head": lr})
    # metrics.jsonl of the run directory: both runs' scheduled unfreezes, none twice
    on_disk = [
        r["step"]
        for r in resumed._run_dir.read_metrics()
        if r.get("event") == "ControlApplied" and r["source"] == "schedule"
    ]
    assert on_disk == [3, 6, 9]


def test_no_value_read_between_log_points_with_layer_lrs_and_unfreezing(tiny_config, counter):  # noqa: F811
    """The per-step work these features add (group lrs, the schedule check, unfreezes with optimizer rebuilds)
    reads no device value: the same sync counter as test_host_sync."""
    cfg = {
        **tiny_config,
        "max_steps": 30,
        "log_every": 10,
        "eval_every": None,
        "save_every": None,
        "freeze": "all_but_head",
        "unfreeze_every": 7,
        "layer_lr_decay": 0.8,
        "group_lr": {"head": 2},
    }
    rec = Recorder()
    run = finetune(cfg, callbacks=[counter, rec], wait=True)
    assert run.status == "finished", run.error
    assert [s for s, _, _ in rec.schedule()] == [7, 14, 21]
    assert counter.log_steps >= {10, 20, 30} and counter.reads
    assert counter.per_step_reads() == {}
