"""Causal LM with LoRA (adapter dropout on), packing and grad_accum 2: stop mid-accumulation, resume in a fresh
process from an adapter-only checkpoint, and the losses that follow equal an uninterrupted run's exactly. Also:
gradient checkpointing with LoRA gives the adapters the same gradients as without it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from fresh_process import run_py
from lm_tiny import build_tiny_llama, facts
from metrics_log import losses_by_step

pytest.importorskip("peft")
ROOT = Path(__file__).resolve().parents[3]


def test_lora_packed_resume_in_fresh_process_matches_uninterrupted(tmp_path):
    """Control: the run is really cut (the stopped run logged fewer steps and its checkpoint has adapters only)."""
    d = build_tiny_llama(tmp_path / "llama")
    data = tmp_path / "chats.jsonl"
    pd.DataFrame(facts(96, seed=2)).to_json(data, orient="records", lines=True)
    cfg = {
        "model": d,
        "data": {"train": str(data), "eval_split": 0.1},
        "lora": {"r": 4, "dropout": 0.1},
        "packing": True,
        "max_length": 64,
        "max_steps": 10,
        "batch_size": 2,
        "grad_accum": 2,
        "lr": 5e-3,
        "precision": "fp32",
        "seed": 5,
        "log_every": 1,
        "save_every": None,
        "eval_every": None,
        "output_dir": str(tmp_path / "runs"),
    }
    env = {"NB_FT_CFG": json.dumps(cfg)}
    run_py(
        """
        import json, os
        from nb_finetune import finetune
        run = finetune(json.loads(os.environ["NB_FT_CFG"]), name="a", wait=True)
        assert run.status == "finished", run.error
    """,
        env,
    )
    run_py(
        """
        import json, os
        from nb_finetune import finetune
        from fresh_process import StopAtForward
        stop = StopAtForward(9)  # mid-accumulation: the 9th micro-batch's gradient is discarded
        run = stop.attach(finetune(json.loads(os.environ["NB_FT_CFG"]), name="b", callbacks=[stop], start=False))
        run.start().wait()
        assert (run.status, run.step) == ("stopped", 4), (run.status, run.step, run.error)
    """,
        env,
    )
    runs = tmp_path / "runs"
    assert max(losses_by_step(runs / "b")) == 4
    from safetensors import safe_open

    with safe_open(str(runs / "b" / "checkpoints" / "step-000004" / "model.safetensors"), "pt") as f:
        assert all("lora_" in k for k in f.keys())
    run_py(
        """
        import json, os
        from nb_finetune import finetune
        run = finetune(json.loads(os.environ["NB_FT_CFG"]), name="b", resume_from="last", wait=True)
        assert run.status == "finished", run.error
    """,
        env,
    )
    a, b = losses_by_step(runs / "a"), losses_by_step(runs / "b")
    assert sorted(a) == sorted(b) == list(range(1, 11))
    assert [b[s] for s in sorted(b)] == [a[s] for s in sorted(a)]  # exactly equal


def test_gradient_checkpointing_with_lora_gives_the_same_gradients(tmp_path):
    """The non-reentrant path with the input-grad hook: adapters inside checkpointed blocks get gradients equal to
    the plain run's (atol 1e-6). Control: every adapter B matrix gets a non-zero gradient (none is silently cut)."""
    from transformers import AutoModelForCausalLM

    from nb_finetune.core.config import LoraSettings
    from nb_finetune.core.lora import add_adapters

    d = build_tiny_llama(tmp_path / "llama")
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_pretrained(d)
        if ckpt:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m = add_adapters(m, LoraSettings(r=4, dropout=0.0), gradient_checkpointing=ckpt)
        for n, p in m.named_parameters():
            if "lora_A" in n:  # B starts at zero: give it a value so A's gradient is not zero either
                p.data.normal_()
            if "lora_B" in n:
                p.data.normal_(std=0.1)
        m.train()
        x = torch.tensor([[5, 9, 17, 33, 41, 12, 7]])
        m(input_ids=x, labels=x).loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad})
    plain, ck = grads
    assert set(plain) == set(ck) and all(v.abs().sum() > 0 for n, v in ck.items() if "lora_B" in n)
    for n in plain:
        torch.testing.assert_close(ck[n], plain[n], atol=1e-6, rtol=1e-5)
