"""Executed training FLOPs with partial freezing and the frozen-prefix cache, and the device's peak.

Per token and block b with P_b parameters (hidden size h, padded sequence length s), a forward pass costs
F_b = 2 P_b + 4 s h (the matmuls, then attention scores and their weighted sum). A training step executes:
the forward for every block not served from the cache; the activation gradient (another F_b) only for blocks
above the lowest trainable one, since nothing below needs a gradient; and the weight gradient (2 P per
trainable weight) only for trainable parameters. The head works on one position per sequence.
"""

from __future__ import annotations

__all__ = ["FlopModel", "peak_flops"]

# dense peak TFLOP/s per device family: (16-bit, tf32/fp32)
_PEAKS = {
    "H200": (989.0, 494.0),
    "H100": (989.0, 494.0),
    "A100": (312.0, 156.0),
    "L40S": (362.0, 183.0),
    "L4": (121.0, 60.0),
    "A10G": (70.0, 35.0),
    "A10": (125.0, 62.5),
    "RTX 4090": (165.0, 82.6),
    "V100": (125.0, 15.7),
    "T4": (65.0, 8.1),
}


def peak_flops(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s of a CUDA device for this precision, or None when unknown (CPUs, unlisted GPUs)."""
    for key, (half, single) in _PEAKS.items():
        if key in device_name:
            return (half if precision in ("bf16", "fp16") else single) * 1e12
    return None


class FlopModel:
    def __init__(self, model, layer_map):
        params = dict(model.named_parameters())
        self.hidden = int(getattr(getattr(model, "config", None), "hidden_size", 0) or 0)
        self.blocks = [g for g in layer_map.groups if g.kind == "block"]
        self.block_params = [sum(params[n].numel() for n in g.param_names) for g in self.blocks]
        self.head_params = sum(g.num_params for g in layer_map.groups if g.kind == "head")
        self.update(set(), 0)

    def update(self, frozen: set[str], cache_depth: int) -> None:
        """Recompute after freezing or the cache changed."""
        self.frozen, self.cache_depth = set(frozen), cache_depth
        trainable_blocks = [i for i, g in enumerate(self.blocks) if g.name not in frozen]
        self.lowest_trainable = (
            -1 if "embeddings" not in frozen else (trainable_blocks[0] if trainable_blocks else len(self.blocks))
        )

    def per_batch(self, tokens: int, width: int, sequences: int, served_depth: int = 0) -> float:
        """FLOPs of one micro-batch with `tokens` real tokens in `sequences` rows padded to `width`."""
        total = 0.0
        attn = 4.0 * width * self.hidden
        for i, (g, p) in enumerate(zip(self.blocks, self.block_params)):
            fwd = 2.0 * p + attn
            if i >= served_depth:
                total += fwd
            if i > self.lowest_trainable:
                total += fwd
            if g.name not in self.frozen:
                total += 2.0 * p
        head = 2.0 * self.head_params * (1 + 1 + ("head" not in self.frozen))
        return tokens * total + sequences * head
