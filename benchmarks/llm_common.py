"""The LLM benchmark's workload: the spec every arm gets, the model (SmolLM2-135M, or a tiny Llama from a config for
--quick), the prompt / completion records with a stated length distribution, and the shared LoRA settings."""

from __future__ import annotations

import json
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .common import ROOT

WORDS = (
    "the a of and to in is it that was for on are with as his they be at one have this from or had by word but what "
    "some we can out other were all there when up use your how said an each she which do their time if will way "
    "about many then them write would like so these her long make thing see him two has look more day could go come"
).split()


@dataclass
class LLMSpec:
    work_dir: str
    model: str = "tiny"  # tiny (a Llama from a config) or smollm2 (real weights, GGUF)
    n_train: int = 256
    max_length: int = 128
    batch_size: int = 8  # padded arm: examples per step
    rows_per_step: int = 2  # packing arms: packed rows per optimizer step
    r: int = 16
    alpha: float = 32
    lr: float = 2e-4
    warmup_steps: int = 5
    seed: int = 0
    threads: int = 0
    # prompt / completion lengths in words: log-uniform between these bounds (a long tail, as in chat data)
    prompt_words: tuple[int, int] = (4, 40)
    completion_words: tuple[int, int] = (2, 60)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LLMSpec:
        d = json.loads(text)
        d["prompt_words"], d["completion_words"] = tuple(d["prompt_words"]), tuple(d["completion_words"])
        return cls(**d)

    @property
    def model_dir(self) -> str:
        if self.model == "smollm2":
            sys.path.insert(0, str(ROOT))
            from nb_finetune.examples import smollm2_gguf

            return smollm2_gguf()[0]
        return str(Path(self.work_dir) / "tiny-llama-lm")

    @property
    def gguf_file(self) -> str | None:
        if self.model == "smollm2":
            from nb_finetune.examples import smollm2_gguf

            return smollm2_gguf()[1]
        return None

    def gguf_kw(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    @property
    def data_file(self) -> Path:
        return Path(self.work_dir) / f"llm-records-{self.n_train}-{self.seed}.jsonl"


def _length(rng: random.Random, lo: int, hi: int) -> int:
    import math

    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def prepare(spec: LLMSpec) -> None:
    """The records file and (for --quick) the tiny model, once."""
    sys.path.insert(0, str(ROOT))
    Path(spec.work_dir).mkdir(parents=True, exist_ok=True)
    if not spec.data_file.is_file():
        rng = random.Random(spec.seed)
        rows = []
        for _ in range(spec.n_train):
            p = " ".join(rng.choice(WORDS) for _ in range(_length(rng, *spec.prompt_words)))
            c = " ".join(rng.choice(WORDS) for _ in range(_length(rng, *spec.completion_words)))
            rows.append({"prompt": p.capitalize() + "?", "completion": " " + c + "."})
        spec.data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if spec.model == "tiny" and not (Path(spec.model_dir) / "config.json").is_file():
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        from nb_finetune.examples import tiny_chat_llama

        d = tiny_chat_llama(spec.model_dir, [" ".join(WORDS)] * 4)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(d)
        cfg = LlamaConfig(  # bigger than the unit tests' model, so the arithmetic is not all overhead
            vocab_size=len(tok),
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=384,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
        )
        torch.manual_seed(spec.seed)
        LlamaForCausalLM(cfg).save_pretrained(d)


def load_records(spec: LLMSpec, frame: bool = False):
    rows = [json.loads(x) for x in spec.data_file.read_text().splitlines() if x.strip()]
    if frame:
        import pandas as pd

        return pd.DataFrame(rows)
    return rows


def lora_config(spec: LLMSpec):
    from peft import LoraConfig

    return LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
