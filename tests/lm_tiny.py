"""Test helper: a tiny Llama causal LM saved like a hub checkpoint, with a byte-level BPE tokenizer trained here and
a ChatML chat template (the shape of SmolLM2-Instruct's), and a small instruction set in a visible format."""

from __future__ import annotations

import random

from nb_finetune.examples import CHATML, tiny_chat_llama

__all__ = ["CHATML", "build_tiny_llama", "facts"]
COLORS = "red blue green black white pink gold grey".split()
THINGS = "apple sky leaf coal snow rose coin stone cloud river lamp door".split()


def facts(n: int, seed: int = 0) -> list[dict]:
    """Chat records: 'what colour is the X?' -> 'ANSWER: X is C.' (C fixed per X)."""
    rng = random.Random(seed)
    colour = {t: COLORS[i % len(COLORS)] for i, t in enumerate(THINGS)}
    out = []
    for _ in range(n):
        t = rng.choice(THINGS)
        out.append(
            {
                "messages": [
                    {"role": "user", "content": f"what colour is the {t}?"},
                    {"role": "assistant", "content": f"ANSWER: the {t} is {colour[t]}."},
                ]
            }
        )
    return out


def build_tiny_llama(d, num_layers: int = 3, chat_template: bool = True) -> str:
    corpus = [m["content"] for r in facts(200, seed=5) for m in r["messages"]]
    corpus += ["colour ANSWER: " + " ".join(COLORS + THINGS)]
    return tiny_chat_llama(d, corpus, num_layers=num_layers, chat_template=chat_template)
