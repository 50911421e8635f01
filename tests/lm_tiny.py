"""Test helper: a tiny Llama causal LM saved like a hub checkpoint, with a byte-level BPE tokenizer trained here and
a ChatML chat template (the shape of SmolLM2-Instruct's), and a small instruction set in a visible format."""

from __future__ import annotations

import random
from pathlib import Path

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
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
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    d = Path(d)
    specials = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [m["content"] for r in facts(200, seed=5) for m in r["messages"]]
    corpus += ["user assistant system the a is of and to in what colour ANSWER: " + " ".join(COLORS + THINGS)]
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>",
        model_max_length=128,
    )
    if chat_template:
        fast.chat_template = CHATML
    fast.save_pretrained(d)
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=fast.pad_token_id,
        eos_token_id=fast.eos_token_id,
        bos_token_id=fast.bos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(d)
    return str(d)
