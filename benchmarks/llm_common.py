"""The LLM benchmark's workload: the spec every arm gets, the model (SmolLM2-135M, a tiny Llama from a config for
--quick, or SmolLM2-135M's shape from a config on a GPU), the prompt / completion records with a stated length
distribution, the shared LoRA settings, and the model FLOPs an arm's MFU is measured against."""

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
    model: str = "tiny"  # tiny (a Llama from a config), smollm2 (real weights, GGUF) or smollm2-shape (a config)
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
    device: str = "cpu"  # cpu, or cuda (the --gpu workload)
    precision: str = "fp32"  # fp32, or bf16 (fp32 master weights under bf16 autocast, as nb_finetune trains)

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
        if self.model == "smollm2-shape":
            return str(Path(self.work_dir) / "smollm2-shape-lm")
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
        (p0, p1), (c0, c1) = self.prompt_words, self.completion_words
        tail = "" if (p0, p1, c0, c1) == (4, 40, 2, 60) else f"-p{p0}-{p1}-c{c0}-{c1}"
        return Path(self.work_dir) / f"llm-records-{self.n_train}-{self.seed}{tail}.jsonl"


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
    if spec.model == "smollm2-shape" and not (Path(spec.model_dir) / "config.json").is_file():
        _build_smollm2_shape(spec)
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


# SmolLM2-135M's architecture (its config.json on the hub), built with random weights: no download
SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)


def _build_smollm2_shape(spec: LLMSpec) -> None:
    """SmolLM2-135M's shape (random weights, bf16 on disk) with a byte-level BPE tokenizer trained on the
    workload's words: the vocabulary stays SmolLM2's 49,152 rows (embedding and LM head), the tokenizer uses the
    first few hundred."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from nb_finetune.examples import tiny_chat_llama

    d = tiny_chat_llama(spec.model_dir, [" ".join(WORDS)] * 4, num_layers=1)
    tok = AutoTokenizer.from_pretrained(d)
    tok.model_max_length = max(spec.max_length, 2048)
    tok.save_pretrained(d)
    cfg = LlamaConfig(
        **SMOLLM2_135M, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id
    )
    torch.manual_seed(spec.seed)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(d)


def llama_counts(cfg: dict, r: int) -> dict:
    """Parameter counts of a Llama config that set its training FLOPs: `matmul` = the weights of every matrix
    product a token goes through (q, k, v, o, gate, up, down in each block, and the LM head; a tied embedding counted
    once, as the head), `lora` = the adapters of rank r on all those linear layers but the head (PEFT's all-linear)."""
    d, i, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or d // heads
    shapes = [(d, heads * hd), (d, kv * hd), (d, kv * hd), (heads * hd, d), (d, i), (d, i), (i, d)]  # (in, out)
    per_block = sum(a * b for a, b in shapes)
    return {
        "matmul": L * per_block + cfg["vocab_size"] * d,
        "lora": L * r * sum(a + b for a, b in shapes),
        "layers": L,
        "attn_width": heads * hd,
    }


FLOPS_FORMULA = (
    "model FLOPs = T * (4 N_base + 6 N_lora) + 12 L d_attn sum(l_i^2): forward (2 N_base per token) and the gradient "
    "through the frozen base to the activations (2 N_base), every op of the adapters (6 N_lora), and attention "
    "scores + weighted sums within each example of length l_i (4 L d_attn l_i per token forward, x3 with the "
    "backward); T = real tokens, N_base = the matmul weights incl. the LM head, no causal halving, no recompute"
)


def model_flops(cfg: dict, r: int, lengths) -> float:
    """Training FLOPs of one epoch over examples of these token lengths (FLOPS_FORMULA)."""
    c = llama_counts(cfg, r)
    tokens = sum(lengths)
    return tokens * (4.0 * c["matmul"] + 6.0 * c["lora"]) + 12.0 * c["layers"] * c["attn_width"] * sum(
        n * n for n in lengths
    )


def mfu(flops: float, wall_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the device's peak; None where the peak is unknown."""
    if not peak or not wall_s:
        return None
    return flops / wall_s / peak


def example_lengths(spec: LLMSpec) -> list[int]:
    """Token length of every training example as every arm encodes it (prompt + completion, cut at max_length)."""
    from transformers import AutoTokenizer

    from nb_finetune.core.tasks import lm_data as L

    tok = AutoTokenizer.from_pretrained(spec.model_dir, **spec.gguf_kw())
    recs = load_records(spec)
    enc = L.encode_prompt_completion(
        tok, [r["prompt"] for r in recs], [r["completion"] for r in recs], spec.max_length, False
    )
    return [len(x) for x in enc.input_ids]
