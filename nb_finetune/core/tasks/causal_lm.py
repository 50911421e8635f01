"""Causal LM and instruction tuning (SFT): chat records, prompt / completion pairs or plain text; full fine-tuning or
LoRA / QLoRA adapters through PEFT; packing without cross-example attention; generation and export.

Metrics: eval `loss` (per example, the loop's) and `perplexity` = exp(mean NLL per trained token). With
`eval_prompts`, every evaluation also generates greedily from each prompt: the generations are the task's extras
(a table in the panel, a record in metrics.jsonl).
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
from pathlib import Path
from typing import Any

from ...errors import ConfigError, DataError, ModelError
from ..events import StepEnded
from . import common as C
from . import lm_data as L
from .base import Capabilities, Examples, Task, register

__all__ = ["CausalLM", "LMMetric"]

log = logging.getLogger("nb_finetune")

CHAT_COLUMNS = ("messages", "conversations", "conversation", "chat")


@register
class CausalLM(Task):
    name = "causal-lm"
    aliases = ("sft", "instruction", "causal-language-modeling", "clm", "lm")
    title = "causal LM"
    # a frozen prefix could be cached, but adapters and packed rows change what the prefix sees: off
    capabilities = Capabilities(prefix_cache=False, length_grouping=True, throughput_unit="tokens", mask_4d=False)
    lower_is_better = frozenset({"perplexity"})
    default_metric = "eval_loss"
    metric_keys = ("perplexity", "token_loss")

    def __init__(self, cfg, **kw):
        super().__init__(cfg, **kw)
        self.model_obj = None
        self.kind = ""  # chat | prompt | text
        self.columns: tuple[str, ...] = ()
        self.encoded: dict[str, L.Encoded] = {}
        self.packed: dict[str, Any] | None = None
        self.attn = "sdpa"
        self._model = None  # the model being trained (for live generation and eval prompts)
        self._requests: queue.Queue = queue.Queue()
        self._gen_lock = threading.Lock()
        self.first_generations: list[str] | None = None
        self.generations: list[dict[str, Any]] = []  # every eval's generations: step -> texts

    # ------------------------------------------------------------ detection
    @classmethod
    def detect(cls, ds, cfg) -> str | None:
        cols = list(getattr(ds, "column_names", []) or [])
        lower = {c.lower(): c for c in cols}
        if cfg.data.messages is not None or any(c in lower for c in CHAT_COLUMNS):
            return (
                "chat records in '" + (cfg.data.messages or next(lower[c] for c in CHAT_COLUMNS if c in lower)) + "'"
            )
        if (cfg.data.prompt or "prompt") in lower and (cfg.data.completion or "completion") in lower:
            return "prompt / completion columns"
        if cfg.data.prompt is not None and cfg.data.completion is not None:
            return "prompt / completion columns"
        # a lone column of strings named `text` (or named by `data.text`): continued pre-training. Any other lone
        # column is no sign of it (a text column whose label column is missing must not turn into a causal LM run)
        if len(cols) == 1:
            named = cols[0] == cfg.data.text if cfg.data.text is not None else cols[0].lower() == "text"
            # ... and only for a model that generates text: a lone text column on a BERT is a missing label column
            if named and _holds_strings(ds, cols[0]) and _generates_text(cfg):
                return f"a lone text column '{cols[0]}' and a causal LM"
        return None

    # ------------------------------------------------------------ calling thread
    def preflight(self) -> None:
        cfg = self.cfg
        self._check_quantization()
        C.require_model_and_data(cfg)
        self.model_obj, self.hf_config, self.model_id = C.resolve_model(
            cfg, head_suffix="ForCausalLM", task_title=self.title
        )
        if self.model_obj is None:
            from transformers import AutoModelForCausalLM

            C.check_head(AutoModelForCausalLM, self.model_id, self.hf_config)
        if cfg.lora is not None:
            from ..lora import peft_available

            if not peft_available():
                raise ConfigError("lora: needs the `peft` package: pip install peft (or pip install nb-finetune[llm])")
        if cfg.gguf_file and cfg.tokenizer is None and self.model_obj is None:
            self.tokenizer = _gguf_tokenizer(cfg, self.model_id)  # the tokenizer is inside the GGUF file too
        else:
            self.tokenizer = C.resolve_tokenizer(cfg, self.model_obj, self.model_id)
        if cfg.chat_template:
            self.tokenizer.chat_template = cfg.chat_template
        train, eval_ = C.load_splits(cfg, self._train_source)
        self.kind, self.columns = self._columns(train)
        if eval_ is not None:
            missing = [c for c in self.columns if c not in eval_.column_names]
            if missing:
                raise DataError(
                    f"data.eval lacks column(s) {missing} that data.train has "
                    f"(data.eval columns: {', '.join(eval_.column_names)})"
                )
        self.train, self.eval = C.holdout(cfg, train, eval_)
        self.max_length = C.resolve_max_length(cfg, self.tokenizer, self.hf_config)
        self.encoded["train"] = self._encode(self.train, "train")
        if not self.encoded["train"].input_ids:
            raise DataError(
                f"data.train: no example has a trained token left after truncation at max_length {self.max_length}; "
                "raise max_length or use `train_on: all`"
            )
        if self.eval is not None:
            self.encoded["eval"] = self._encode(self.eval, "eval")
        tr = self.encoded["train"]
        if tr.truncated:
            log.warning(
                "causal-lm: %d of %d training examples cut at max_length %d",
                tr.truncated,
                len(self.train),
                self.max_length,
            )
        if cfg.packing:
            ids, labels, pos, segs, rows = L.pack(tr.input_ids, tr.labels, self.max_length, cfg.seed)
            self.packed = {"input_ids": ids, "labels": labels, "position_ids": pos, "segments": segs, "rows": rows}
        for p in cfg.eval_prompts or []:
            self._prompt_ids(p)  # a malformed prompt is an error in the cell

    def _check_quantization(self) -> None:
        q = self.cfg.quantization.value
        if q == "none":
            return
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"quantization: {q} loads the base weights through bitsandbytes, which needs a CUDA GPU; this "
                "machine has none. Remove `quantization:` (LoRA alone trains on the CPU)"
            )
        if self.cfg.lora is None:
            raise ConfigError(
                f"Invalid finetune config: quantization: {q} needs `lora:` (quantized base weights cannot train; "
                "the adapters do): add `lora: {r: 16}`"
            )
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(f"quantization: {q} needs the `bitsandbytes` package: pip install bitsandbytes")

    def _columns(self, ds) -> tuple[str, tuple[str, ...]]:
        cfg, cols = self.cfg, list(ds.column_names)
        lower = {c.lower(): c for c in cols}

        def need(key: str, col: str) -> str:
            if col not in cols:
                from ..data import suggest

                raise DataError(
                    f"data.{key}: column '{col}' is not in data.train (columns: {', '.join(cols)}).{suggest(col, cols)}"
                )
            return col

        if cfg.data.messages is not None:
            return "chat", (need("messages", cfg.data.messages),)
        if cfg.data.prompt is not None or cfg.data.completion is not None:
            return "prompt", (
                need("prompt", cfg.data.prompt or "prompt"),
                need("completion", cfg.data.completion or "completion"),
            )
        if cfg.data.text is not None:
            return "text", (need("text", cfg.data.text),)
        for c in CHAT_COLUMNS:
            if c in lower:
                return "chat", (lower[c],)
        if "prompt" in lower and "completion" in lower:
            return "prompt", (lower["prompt"], lower["completion"])
        for c in ("text", "content", "document"):
            if c in lower:
                return "text", (lower[c],)
        if len(cols) == 1:
            return "text", (cols[0],)
        raise DataError(
            f"causal-lm: data.train has no `messages`, `prompt` + `completion` or `text` column (columns: "
            f"{', '.join(cols)}); name yours with data.messages / data.prompt + data.completion / data.text"
        )

    def _encode(self, ds, role: str) -> L.Encoded:
        all_ = self.cfg.train_on.value == "all"
        if self.kind == "chat":
            return L.encode_chat(self.tokenizer, ds[self.columns[0]], self.max_length, all_, role)
        if self.kind == "prompt":
            return L.encode_prompt_completion(
                self.tokenizer, ds[self.columns[0]], ds[self.columns[1]], self.max_length, all_
            )
        return L.encode_text(self.tokenizer, ds[self.columns[0]], self.max_length)

    def describe(self) -> list[str]:
        lines = super().describe()
        cfg = self.cfg
        what = {"chat": "chat records", "prompt": "prompt / completion pairs", "text": "plain text"}.get(
            self.kind, "?"
        )
        on = (
            "all tokens"
            if cfg.train_on.value == "all" or self.kind == "text"
            else ("assistant turns" if self.kind == "chat" else "completions")
        )
        lines.append(f"data: {what} ({', '.join(self.columns)}), loss on {on}, max_length {self.max_length}")
        lines.append("head: the model's own language-modelling head (next-token cross-entropy)")
        tr = self.encoded.get("train")
        if tr is not None:
            lines.append(
                f"truncated: {tr.truncated} of {len(self.train)} training examples cut at max_length"
                + (f"; {len(tr.empty)} dropped (no trained token left)" if tr.empty else "")
            )
        if self.packed is not None and tr is not None:
            real = sum(len(x) for x in tr.input_ids)
            rows = len(self.packed["input_ids"])
            lines.append(
                f"packing: {len(tr.input_ids)} examples in {rows} rows of <= {self.max_length} tokens "
                f"({100 * real / max(1, rows * self.max_length):.0f}% filled), attention within each example"
            )
        if cfg.lora is not None:
            lo = cfg.lora
            extra = (", DoRA" if lo.use_dora else "") + (", rsLoRA" if lo.rslora else "")
            lines.append(
                f"LoRA: r {lo.r}, alpha {lo.alpha:g}, dropout {lo.dropout:g}, targets {lo.target_modules}{extra}"
                + (f", base in {cfg.quantization.value} (bitsandbytes)" if cfg.quantization.value != "none" else "")
            )
        lines += self._memory_lines()
        return lines

    def _memory_lines(self) -> list[str]:
        """LoRA / QLoRA memory estimate: base weights in their dtype, adapters, optimizer, activations."""
        counts = getattr(self, "_counts", None)
        if counts is None:
            return []
        base, adapters = counts
        cfg, hc = self.cfg, self.hf_config
        q = cfg.quantization.value
        base_bytes = base * {"none": 4, "4bit": 0.55, "8bit": 1.05}[q]  # NF4: half a byte + block scales
        trainable = adapters if cfg.lora is not None else base
        hidden = getattr(hc, "hidden_size", 0) or 0
        layers = getattr(hc, "num_hidden_layers", 0) or 0
        seq = self.max_length or 0
        act = 2 if q != "none" else 4
        rows = cfg.batch_size
        # per block and token ~34 hidden-sized values saved for backward (attention + MLP); with checkpointing only
        # each block's input is kept, plus one block's worth while it is recomputed
        full = rows * seq * hidden * 34 * act * layers
        ckpt = rows * seq * hidden * act * (layers + 34)
        logits = rows * seq * (getattr(hc, "vocab_size", 0) or 0) * 4 * 2
        gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
        share = 100 * trainable / max(1, base + (adapters if cfg.lora is not None else 0))
        return [
            f"trainable: {trainable:,} of {base + (adapters if cfg.lora is not None else 0):,} parameters ({share:.2f}%)",
            f"memory estimate: base weights {gib(base_bytes)}, adapters + grads + AdamW {gib(trainable * 16)}, "
            f"activations {gib(full + logits)} ({gib(ckpt + logits)} with gradient_checkpointing"
            + (", on" if cfg.gradient_checkpointing else "")
            + ")",
        ]

    # ------------------------------------------------------------ worker
    def build_model(self, *, meta: bool = False):
        import torch
        from transformers import AutoModelForCausalLM

        cfg = self.cfg
        if self.model_obj is not None:
            model = self.model_obj
        elif meta:
            model = C.from_pretrained(AutoModelForCausalLM, cfg, self.model_id, self.hf_config, meta=True)
        else:
            kw: dict[str, Any] = {}
            if cfg.quantization.value != "none":
                from transformers import BitsAndBytesConfig

                if cfg.quantization.value == "4bit":
                    kw["quantization_config"] = BitsAndBytesConfig(
                        load_in_4bit=True,
                        bnb_4bit_quant_type="nf4",
                        bnb_4bit_use_double_quant=True,
                        bnb_4bit_compute_dtype=torch.bfloat16,
                    )
                else:
                    kw["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
                kw["device_map"] = {"": torch.cuda.current_device()}
                kw["dtype"] = torch.bfloat16
            else:
                kw["dtype"] = torch.float32  # master weights in fp32; the loop autocasts where the device allows
            model = _load_causal_lm(cfg, self.model_id, **kw)
        self.base_dtype = getattr(self.hf_config, "dtype", None) or getattr(self.hf_config, "torch_dtype", None)
        if not meta:
            model = C.finish_model(cfg, model, self.tokenizer)
            self.attn = getattr(model.config, "_attn_implementation", None) or "eager"
            if cfg.packing:
                self._check_packing(model)
            if cfg.quantization.value != "none":
                from peft import prepare_model_for_kbit_training

                model = prepare_model_for_kbit_training(
                    model,
                    use_gradient_checkpointing=cfg.gradient_checkpointing,
                    gradient_checkpointing_kwargs={"use_reentrant": False},
                )
            elif cfg.gradient_checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                model.config.use_cache = False
        base = sum(p.numel() for p in model.parameters())
        if cfg.lora is not None:
            from ..lora import add_adapters

            model = add_adapters(model, cfg.lora, gradient_checkpointing=cfg.gradient_checkpointing)
        self._counts = (base, sum(p.numel() for p in model.parameters()) - base)
        if not meta:
            self._model = model
        return model

    def _check_packing(self, model) -> None:
        import inspect

        if self.attn not in ("sdpa", "eager"):
            raise ConfigError(
                f"packing: this model runs attention as {self.attn!r}, where a block-diagonal mask cannot be "
                "passed exactly; load it with attn_implementation sdpa or eager, or set `packing: false`"
            )
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if "position_ids" not in inspect.signature(base.forward).parameters:
            raise ConfigError(
                f"packing: {type(base).__name__} takes no position ids, so positions cannot restart per example; "
                "set `packing: false`"
            )

    def layer_map(self, model):
        from ..freezing import build_layer_map
        from ..lora import adapter_layer_map, is_adapter_model

        return adapter_layer_map(model) if is_adapter_model(model) else build_layer_map(model)

    def build_data(self) -> tuple[Examples, Examples | None]:
        tr = self.encoded["train"]
        if self.packed is not None:
            p = self.packed
            train = Examples(
                {"input_ids": p["input_ids"], "position_ids": p["position_ids"], "segments": p["segments"]},
                labels=p["labels"],
            )
        else:
            train = Examples({"input_ids": tr.input_ids}, labels=tr.labels)
        ev = self.encoded.get("eval")
        evex = Examples({"input_ids": ev.input_ids}, labels=ev.labels) if ev is not None and ev.input_ids else None
        return train, evex

    def encode(self, ds, *, role: str = "eval") -> Examples:
        enc = self._encode(ds, role)
        return Examples({"input_ids": enc.input_ids}, labels=enc.labels)

    def load_eval(self, src):
        ds = super().load_eval(src)
        missing = [c for c in self.columns if c not in ds.column_names]
        if missing:
            raise DataError(f"evaluate: the data lacks column(s) {missing} (columns: {', '.join(ds.column_names)})")
        return ds

    def collator(self):
        pad = self.tokenizer.pad_token_id
        return L.PackedCollator(pad) if self.packed is not None else L.LMCollator(pad)

    def forward(self, model, batch: dict[str, Any]):
        if "packed_mask" in batch:
            batch = dict(batch)
            mask = batch.pop("packed_mask")
            if self.attn == "eager":  # eager attention adds the mask to the scores
                import torch

                dtype = next(model.parameters()).dtype
                dtype = dtype if dtype.is_floating_point else torch.float32
                mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                    ~mask, torch.finfo(dtype).min
                )
            batch["attention_mask"] = mask
        out = model(**batch)
        return out.loss, out

    def metric(self, data: Examples):
        return LMMetric(self)

    # ------------------------------------------------------------ generation
    def _prompt_ids(self, prompt) -> list[int]:
        tok = self.tokenizer
        if isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt):
            msgs = [{"role": str(m.get("role", "user")), "content": str(m.get("content", ""))} for m in prompt]
            text = L.render(tok, msgs, add_generation_prompt=True)
            return list(tok(text, add_special_tokens=False)["input_ids"])
        if not isinstance(prompt, str):
            raise ConfigError(
                f"generate: a prompt is a string or a list of {{role, content}} messages, not {type(prompt).__name__}"
            )
        if self.kind == "chat" and getattr(tok, "chat_template", None):
            text = L.render(tok, [{"role": "user", "content": prompt}], add_generation_prompt=True)
            return list(tok(text, add_special_tokens=False)["input_ids"])
        return list(tok(prompt, add_special_tokens=True)["input_ids"])

    def generate(self, model, prompt, max_new_tokens: int = 64, **kwargs):
        """Text generated after `prompt` (a string, a message list, or a list of those: then a list of texts)."""
        import torch

        many = isinstance(prompt, (list, tuple)) and not all(isinstance(m, dict) for m in prompt)
        prompts = list(prompt) if many else [prompt]
        ids = [self._prompt_ids(p) for p in prompts]
        tok = self.tokenizer
        kwargs.setdefault("do_sample", False)
        kwargs.setdefault("pad_token_id", tok.pad_token_id)
        kwargs.setdefault("eos_token_id", tok.eos_token_id)
        device = C.model_device(model)
        states = [(m, m.training) for m in model.modules()]
        outs = []
        with self._gen_lock, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            model.eval()
            try:
                with torch.inference_mode():
                    for seq in ids:
                        x = torch.tensor([seq], device=device)
                        y = model.generate(
                            input_ids=x,
                            attention_mask=torch.ones_like(x),
                            max_new_tokens=max_new_tokens,
                            use_cache=True,
                            **kwargs,
                        )
                        outs.append(tok.decode(y[0, len(seq) :], skip_special_tokens=True).strip())
            finally:
                for m, was in states:  # back to exactly the modes training had (frozen blocks in eval mode)
                    m.training = was
        return outs if many else outs[0]

    def generate_live(self, prompt, max_new_tokens: int, is_done, is_paused, **kwargs):
        """Generate with the model a run is training: served on the worker thread right after an optimizer step."""
        if is_paused():  # the worker waits in pause: the weights do not move
            return self.generate(self._model, prompt, max_new_tokens, **kwargs)
        box: dict[str, Any] = {}
        ready = threading.Event()
        self._requests.put((prompt, max_new_tokens, kwargs, box, ready))
        while not ready.wait(0.05):
            if (is_done() or is_paused()) and not ready.is_set():
                ready.set()  # withdrawn: the worker skips it
                return self.generate(self._model, prompt, max_new_tokens, **kwargs)
        if "error" in box:
            raise box["error"]
        return box["out"]

    def on_event(self, e) -> None:
        """Subscriber on the worker thread: serve queued `generate` requests at a step boundary."""
        if not isinstance(e, StepEnded) or self._model is None:
            return
        while True:
            try:
                prompt, n, kw, box, ready = self._requests.get_nowait()
            except queue.Empty:
                return
            if ready.is_set():
                continue
            try:
                box["out"] = self.generate(self._model, prompt, n, **kw)
            except Exception as err:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = err
            ready.set()

    def eval_generations(self) -> list[str]:
        prompts = self.cfg.eval_prompts or []
        if not prompts or self._model is None:
            return []
        return [self.generate(self._model, p, self.cfg.max_new_tokens) for p in prompts]

    # ------------------------------------------------------------ export
    def predict(self, model, prompt, max_new_tokens: int = 64, **kwargs):
        return self.generate(model, prompt, max_new_tokens, **kwargs)

    def save(self, model, path, merged: bool = False) -> None:
        """Adapters (adapter_model.safetensors + adapter_config.json) or, `merged=True`, plain weights that
        `AutoModelForCausalLM.from_pretrained(path)` loads without peft, in the base model's dtype; the tokenizer
        (with its chat template) beside them."""
        import copy

        import torch

        from ..lora import is_adapter_model

        if merged and is_adapter_model(model):
            if self.cfg.quantization.value != "none":
                raise ConfigError(
                    "save(merged=True): the base is quantized; merge onto the full-precision base "
                    "by loading it and the saved adapters, or save the adapters only"
                )
            plain = copy.deepcopy(model).merge_and_unload()
            dtype = self.base_dtype
            if isinstance(dtype, str):
                dtype = getattr(torch, dtype, None)
            if isinstance(dtype, torch.dtype):
                plain = plain.to(dtype)
            plain.save_pretrained(path, safe_serialization=True)
        else:
            model.save_pretrained(path, safe_serialization=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)


def _gguf_tokenizer(cfg, model_id: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_id, gguf_file=cfg.gguf_file)
    except Exception as e:  # noqa: BLE001
        raise C.hub_error("model (the tokenizer in its gguf_file)", model_id, e) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


@contextlib.contextmanager
def _no_gguf_progress_bar():
    """transformers' GGUF loader draws a bare tqdm bar, which the library's own switch does not reach; the worker
    thread never prints into the user's cell."""
    try:
        from transformers import modeling_gguf_pytorch_utils as g
    except ImportError:
        yield
        return
    saved = getattr(g, "tqdm", None)
    g.tqdm = lambda it, *a, **k: it
    try:
        yield
    finally:
        g.tqdm = saved


def _load_causal_lm(cfg, model_id: str, **kw):
    from transformers import AutoModelForCausalLM

    quiet = contextlib.nullcontext()
    if cfg.gguf_file:
        kw["gguf_file"] = cfg.gguf_file
        quiet = _no_gguf_progress_bar()
    try:
        with quiet:
            return AutoModelForCausalLM.from_pretrained(model_id, trust_remote_code=cfg.trust_remote_code, **kw)
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise ModelError(
                f"model: {model_id!r} is not a causal LM (transformers has no ForCausalLM head for it)"
            ) from None
        raise C.hub_error("model", model_id, e) from None
    except Exception as e:  # noqa: BLE001
        raise C.hub_error("model", model_id, e) from None


class LMMetric:
    """Perplexity over trained tokens (one 2-value transfer per eval batch) and the eval prompts' generations."""

    def __init__(self, task: CausalLM):
        self.task = task
        self.nll = 0.0
        self.tokens = 0

    def update(self, outputs, batch, host) -> None:
        import torch
        import torch.nn.functional as F

        logits = outputs.logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        both = torch.stack([nll, (labels != -100).sum().float()]).cpu().tolist()
        self.nll += both[0]
        self.tokens += int(both[1])

    def compute(self) -> dict[str, float]:
        mean = self.nll / max(1, self.tokens)
        return {"perplexity": float(math.exp(min(mean, 50.0))), "token_loss": float(mean)}

    def extras(self) -> dict[str, Any]:
        texts = self.task.eval_generations()
        if not texts:
            return {}
        t = self.task
        if t.first_generations is None:
            t.first_generations = list(texts)
        prompts = [p if isinstance(p, str) else str(p[-1].get("content", p)) for p in t.cfg.eval_prompts]
        return {
            "generations": {
                "kind": "table",
                "title": "Generations (greedy) at the first and the latest evaluation",
                "columns": ["prompt", "first", "latest"],
                "rows": [[p, a, b] for p, a, b in zip(prompts, t.first_generations, texts)],
            }
        }


def _holds_strings(ds, col: str) -> bool:
    """Whether `col` of a datasets.Dataset (or a mapping of lists) holds strings."""
    feature = getattr(ds, "features", {}).get(col) if hasattr(ds, "features") else None
    if feature is not None:
        return getattr(feature, "dtype", None) in ("string", "large_string")
    try:
        first = ds[col][0]
    except (KeyError, IndexError, TypeError):
        return False
    return isinstance(first, str)


_CAUSAL_NAMES = ("ForCausalLM", "LMHeadModel")


def _generates_text(cfg) -> bool:
    """Whether `cfg.model` is a causal LM: a GGUF file, a model object or a checkpoint whose architecture is one.
    Any doubt (no model, a config that does not load) is a no: `task: causal-lm` then says it outright."""
    if cfg.gguf_file:
        return True
    model = cfg.model
    if model is None:
        return False
    if not isinstance(model, (str, Path)):
        return any(n in c.__name__ for c in type(model).__mro__ for n in _CAUSAL_NAMES)
    try:
        from transformers import AutoConfig

        archs = AutoConfig.from_pretrained(str(model), trust_remote_code=False).architectures or []
    except Exception:  # noqa: BLE001 - an unreadable config decides nothing here; pre-flight names the problem
        return False
    return any(n in a for a in archs for n in _CAUSAL_NAMES)
