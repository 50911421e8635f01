"""Causal LM / instruction tuning on a tiny Llama (ChatML template, byte-level BPE trained here): chat masking token by
token, the errors a user meets before anything loads, LoRA (only adapters train, base bit-identical, adapter-only
checkpoints, save / merged export logits), freezing adapters mid-run, packing exactness, generation."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from lm_tiny import CHATML, build_tiny_llama, facts
from metrics_log import losses_by_step

from nb_finetune import finetune
from nb_finetune.core.events import ControlApplied, StepEnded
from nb_finetune.core.tasks import lm_data as L
from nb_finetune.core.tasks.base import HOST_KEYS
from nb_finetune.core.tasks.causal_lm import CausalLM
from nb_finetune.errors import ConfigError, DataError

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def chats():
    return pd.DataFrame(facts(48, seed=1))


def _cfg(llama_dir, chats, tmp_path, **kw):
    cfg = {
        "model": llama_dir,
        "data": {"train": chats, "eval_split": 0.25},
        "max_steps": 6,
        "batch_size": 8,
        "lr": 1e-2,
        "log_every": 1,
        "eval_every": None,
        "save_every": None,
        "precision": "fp32",
        "output_dir": str(tmp_path / "runs"),
    }
    cfg.update(kw)
    return cfg


def test_chat_labels_token_by_token(llama_dir):
    """Labels are ignored on every system / user / template token and kept on each assistant turn with its end
    mark. Control: `train_on: all` labels every token but the first (the same check then fails)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama_dir)
    conv = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what colour is the sky?"},
        {"role": "assistant", "content": "ANSWER: blue."},
        {"role": "user", "content": "and the snow?"},
        {"role": "assistant", "content": "ANSWER: white."},
    ]
    enc = L.encode_chat(tok, [conv], 128, train_on_all=False)
    ids, labels = enc.input_ids[0], enc.labels[0]
    runs, cur, masked = [], [], []
    for t, lab in zip(ids, labels):  # token by token: each label is the token itself or -100
        assert lab in (t, -100)
        if lab == -100:
            masked.append(t)
            if cur:
                runs.append(tok.decode(cur))
                cur = []
        else:
            cur.append(t)
    if cur:
        runs.append(tok.decode(cur))
    assert runs == ["ANSWER: blue.<|im_end|>\n", "ANSWER: white.<|im_end|>\n"]
    hidden = tok.decode(masked)
    for m in conv[:2] + conv[3:4]:
        assert m["content"] in hidden
    assert ids[-2] == tok.eos_token_id  # the target ends with EOS (ChatML's end of turn), not a second one
    every = L.encode_chat(tok, [conv], 128, train_on_all=True).labels[0]
    assert every[0] == -100 and all(x != -100 for x in every[1:])
    # truncation is counted, and an example with no trained token left is dropped, never silently trained on
    cut = L.encode_chat(tok, [conv, conv], 20, train_on_all=False)
    assert cut.truncated == 2 and cut.empty == [0, 1]


def test_no_chat_template_and_quantization_on_cpu_are_errors(tmp_path, chats, monkeypatch):
    """Chat data with a tokenizer that has no template names `chat_template:`; `quantization: 4bit` on a CPU is an
    error before any weight loads (from_pretrained is booby-trapped). Control: the same data with `chat_template:`
    passes the pre-flight."""
    import transformers

    plain = build_tiny_llama(tmp_path / "plain", chat_template=False)
    cfg = _cfg(plain, chats, tmp_path, task="sft")
    with pytest.raises(ConfigError, match="chat_template:"):
        finetune(cfg, dry_run=True)
    report = finetune({**cfg, "chat_template": CHATML}, dry_run=True)
    assert "chat records" in str(report)

    def boom(*a, **k):
        raise AssertionError("weights loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA"):
        finetune(_cfg(plain, chats, tmp_path, lora={"r": 4}, quantization="4bit"))


def test_auto_detection_and_dry_run(llama_dir, chats, tmp_path):
    """`task: auto` picks causal-lm for messages, prompt/completion and a lone text column; the dry run reports the
    trainable share and the LoRA memory estimate. Control: a text + label frame stays text classification."""
    from nb_finetune.core.config import FinetuneConfig
    from nb_finetune.core.tasks.base import resolve_task

    for df in (
        chats,
        pd.DataFrame({"prompt": ["a b", "c d"] * 4, "completion": [" e", " f"] * 4}),
        pd.DataFrame({"text": ["the sky is blue"] * 8}),
    ):
        assert resolve_task(FinetuneConfig.from_dict({"model": llama_dir, "data": {"train": df}})).name == "causal-lm"
    # controls: a lone column of strings not named `text` is no sign of continued pre-training
    with pytest.raises(DataError, match="name it with `task:`"):
        resolve_task(
            FinetuneConfig.from_dict({"model": llama_dir, "data": {"train": pd.DataFrame({"a": ["x y"] * 8})}})
        )
    labelled = pd.DataFrame({"text": ["a", "b"] * 4, "label": ["x", "y"] * 4})
    assert (
        resolve_task(FinetuneConfig.from_dict({"model": llama_dir, "data": {"train": labelled}})).name != "causal-lm"
    )
    rep = finetune(_cfg(llama_dir, chats, tmp_path, lora={"r": 4}, freeze="bottom 1"), dry_run=True)
    text = str(rep)
    assert "trainable:" in text and "memory estimate: base weights" in text and "adapters" in text
    assert 0 < rep.params_trainable < rep.params_total / 5


def _adapters(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_lora_trains_adapters_only_and_exports(llama_dir, chats, tmp_path):
    """Only adapter parameters change; the base weights are bit-identical after training; checkpoints hold adapters
    only; saved adapters reload to the same logits (exactly) and the merged export loads without peft to the
    adapter model's logits within 1e-5. Control: the adapters did change (so the comparisons are not vacuous)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    before = {n: p.detach().clone() for n, p in AutoModelForCausalLM.from_pretrained(llama_dir).named_parameters()}
    run = finetune(_cfg(llama_dir, chats, tmp_path, lora={"r": 4, "dropout": 0.0}), name="lora", wait=True)
    assert run.status == "finished", run.error
    model = run.model
    base_now = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in model.named_parameters()}
    for n, p in before.items():
        assert torch.equal(base_now[n], p), n  # bit-identical
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # control: B starts at zero, so training moved it
    from safetensors import safe_open

    ck = run.checkpoints[-1] / "model.safetensors"
    with safe_open(str(ck), "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k for k in keys)
    # the layer map: blocks with base and adapter counts
    rows = run.layer_map().to_dict("records")
    blocks = [r for r in rows if r["kind"] == "block"]
    assert len(blocks) == 3 and all(r["params"] > 0 and r["base_params"] > r["params"] for r in blocks)

    x = torch.tensor([[5, 9, 17, 33, 41, 12]])
    model.eval()
    with torch.no_grad():
        ref = model(input_ids=x).logits
    adapters = run.save(tmp_path / "adapters")
    assert (adapters / "adapter_config.json").exists() and (adapters / "tokenizer_config.json").exists()
    assert "im_start" in (adapters / "chat_template.jinja").read_text() or "im_start" in json.dumps(
        json.loads((adapters / "tokenizer_config.json").read_text())
    )
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir), adapters).eval()
    with torch.no_grad():
        assert torch.equal(again(input_ids=x).logits, ref)
    merged = run.save(tmp_path / "merged", merged=True)
    assert not (merged / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    assert not any("lora" in n for n, _ in plain.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=x).logits, ref, atol=1e-5, rtol=1e-5)
    assert any(not torch.equal(p, before[n]) for n, p in plain.named_parameters())  # control: merged != base


def test_freezing_bottom_blocks_freezes_their_adapters_mid_run(llama_dir, chats, tmp_path):
    """`freeze bottom 2` at step 3: blocks 0-1's adapters stop changing, block 2's go on, and block 2's optimizer
    state is kept (its AdamW step count is the run's, not the steps since the change). Control: before the change
    every block's adapters moved."""
    snaps, holder = {}, {}

    class Hook:
        def on_event(self, e):
            if isinstance(e, StepEnded) and e.step == 1:
                snaps[1] = _adapters(holder["run"].model)
            if isinstance(e, StepEnded) and e.step == 3:
                holder["run"].freeze("bottom 2")
            if isinstance(e, ControlApplied) and e.command == "freeze" and e.ok:
                snaps["at"] = (e.step, _adapters(holder["run"].model))

    run = finetune(
        _cfg(llama_dir, chats, tmp_path, lora={"r": 4}, max_steps=8, save_every=None),
        name="freeze",
        callbacks=[Hook()],
        start=False,
    )
    holder["run"] = run
    run.start().wait()
    assert run.status == "finished", run.error
    step_at, at = snaps["at"]
    assert step_at == 3
    end = _adapters(run.model)
    for n in at:
        moved_before = not torch.equal(snaps[1][n], at[n])
        if "lora_B" in n:
            assert moved_before, n  # control
        if ".layers.0." in n or ".layers.1." in n:
            assert torch.equal(at[n], end[n]), n
        elif ".layers.2." in n:
            assert not torch.equal(at[n], end[n]), n
    from safetensors.torch import load_file

    opt = load_file(str(run.checkpoints[-1] / "optimizer.safetensors"))
    steps = {k: float(v) for k, v in opt.items() if k.endswith("::step")}
    assert steps and all(".layers.2." in k for k in steps)  # frozen adapters hold no optimizer state
    assert all(v == 8 for v in steps.values())


def _tiny_lm(arch: str, attn: str):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "llama":
        conf = LlamaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=64,
            vocab_size=100,
            max_position_embeddings=128,
        )
        cls = LlamaForCausalLM
    else:  # learned absolute positions: a position id that does not restart changes the result
        conf = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=128)
        cls = GPT2LMHeadModel
    conf._attn_implementation = attn
    return cls(conf).eval()


@pytest.mark.parametrize(("arch", "attn"), [("llama", "sdpa"), ("llama", "eager"), ("gpt2", "sdpa")])
def test_packed_losses_equal_unpacked(arch, attn):
    """Per-example losses of a packed row equal the same examples run alone (atol 1e-5), with sdpa and eager
    attention. Controls: without the block-diagonal mask (plain causal attention across examples) the losses differ
    (> 1e-3); with position ids that do not restart per example they differ too on a model with absolute positions
    (GPT-2; rotary positions are relative, so there the mask alone decides)."""
    model = _tiny_lm(arch, attn)
    g = torch.Generator().manual_seed(1)
    exs = [torch.randint(3, 100, (n,), generator=g).tolist() for n in (7, 12, 5, 9)]
    labels = [[-100, *e[1:]] for e in exs]
    ids, labs, pos, segs, rows = L.pack(exs, labels, 40)
    assert len(ids) == 1 and sorted(segs[0]) == sorted(len(e) for e in exs)
    items = [{"input_ids": ids[0], "labels": labs[0], "position_ids": pos[0], "segments": segs[0], "idx": 0}]
    batch = L.PackedCollator(0)(items)
    for k in HOST_KEYS:
        batch.pop(k, None)
    task = CausalLM.__new__(CausalLM)
    task.attn = attn
    order = rows[0]

    def per_example(logits):
        out, start = [], 0
        for i in order:
            n = len(exs[i])
            out.append(torch.nn.functional.cross_entropy(logits[0, start : start + n - 1], torch.tensor(exs[i][1:])))
            start += n
        return [x.item() for x in out]

    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([e])).logits for e in exs]
        expect = [torch.nn.functional.cross_entropy(alone[i][0, :-1], torch.tensor(exs[i][1:])).item() for i in order]
        loss, out = task.forward(model, dict(batch))
        assert per_example(out.logits) == pytest.approx(expect, abs=1e-5)
        # the model's own loss over the packed row is the token-weighted mean of the examples' losses
        n_tok = [len(exs[i]) - 1 for i in order]
        assert loss.item() == pytest.approx(sum(a * b for a, b in zip(expect, n_tok)) / sum(n_tok), abs=1e-5)
        open_attn = {k: v for k, v in batch.items() if k != "packed_mask"}
        leaky = per_example(model(**open_attn).logits)
        assert max(abs(a - b) for a, b in zip(leaky, expect)) > 1e-3
        if arch == "gpt2":
            wrong = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1])[None])
            shifted = per_example(task.forward(model, wrong)[1].logits)
            assert max(abs(a - b) for a, b in zip(shifted, expect)) > 1e-3


def test_generate_live_and_eval_prompts(llama_dir, chats, tmp_path):
    """`run.generate` while the run trains is served at a step boundary under a forked RNG: the losses equal those
    of the same run without it (adapter dropout on, so the RNG matters). `eval_prompts` are generated at each
    evaluation and recorded in metrics.jsonl. Control: the generation happened (a string came back mid-run)."""
    prompts = ["what colour is the sky?"]
    base = _cfg(llama_dir, chats, tmp_path, lora={"r": 4, "dropout": 0.2}, max_steps=6, seed=3)
    a = finetune(base, name="plain", wait=True)
    got, holder = {}, {}

    class Hook:
        def on_event(self, e):
            if isinstance(e, StepEnded) and e.step == 2 and "t" not in holder:
                import threading

                def ask():
                    got["text"] = holder["run"].generate("what colour is the snow?", max_new_tokens=5, do_sample=True)
                    got["step"] = holder["run"].step

                holder["t"] = threading.Thread(target=ask)
                holder["t"].start()

    b = finetune({**base, "eval_every": 3, "eval_prompts": prompts}, name="gen", callbacks=[Hook()], start=False)
    holder["run"] = b
    b.start().wait()
    holder["t"].join(30)
    assert a.status == b.status == "finished", (a.error, b.error)
    assert isinstance(got.get("text"), str) and got["step"] < 6
    la, lb = losses_by_step(a.dir), losses_by_step(b.dir)
    assert [la[s] for s in sorted(la)] == [lb[s] for s in sorted(lb)]
    evals = [json.loads(x) for x in (b.dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r.get("event") == "eval"]
    assert len(evals) == 2 and all("eval_perplexity" in r for r in evals)
    table = evals[-1]["extras"]["generations"]
    assert table["kind"] == "table" and table["rows"][0][0] == prompts[0] and isinstance(table["rows"][0][2], str)
    assert isinstance(b.generate(prompts[0], max_new_tokens=4), str)  # after the run


def test_packing_is_refused_where_it_cannot_be_exact():
    """An attention kernel that takes no block-diagonal mask is refused with the fix. Control: sdpa passes."""
    task = CausalLM.__new__(CausalLM)
    model = _tiny_lm("llama", "sdpa")
    task.attn = "sdpa"
    task._check_packing(model)
    task.attn = "flex_attention"
    with pytest.raises(ConfigError, match="packing: .*sdpa or eager.*packing: false"):
        task._check_packing(model)
