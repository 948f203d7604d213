"""Quantization (Zhang et al. 2025, "Catastrophic Failure of LLM Unlearning via Quantization"; their ``eval.py``
loads unlearned checkpoints in 8 and 4 bits with bitsandbytes and evaluates again).

Default path, on any device: round-to-nearest (RTN) weight quantization, asymmetric min-max, of every
attention and MLP weight matrix (``W_Q, W_K, W_V, W_O, W_in, W_out``; embeddings, unembedding, LayerNorms and
biases stay in full precision, as bitsandbytes keeps them), dequantized for the forward pass:

    scale = (max - min) / (2^bits - 1),   q = clamp(round((w - min) / scale), 0, 2^bits - 1),   w' = min + q * scale

with ``min`` / ``max`` per output channel (``scheme="channel"``) or per group of ``group_size`` consecutive
inputs of an output channel (``scheme="group"``, GPTQ / AWQ style). A channel (group) thus holds at most
``2^bits`` distinct values. Matrices are quantized in Hugging Face's ``[out, in]`` layout, so "channel" means
what it means for the exported ``nn.Linear`` layers. Every (scheme, bits) pair is a variant; the evals run again
on each; the headline is the variant with the highest forget accuracy (the same rule on every model).

Optional path on CUDA (``backend="bitsandbytes"``): the model is exported to Hugging Face format
(``mechunlearn.models.to_hf``) and reloaded through ``transformers`` + ``bitsandbytes`` (LLM.int8 for 8 bits, NF4
for 4 bits), Zhang et al.'s path; the result's ``summary["backend"]`` says which ran. Without CUDA or without
``bitsandbytes`` installed it stops with a clear message (``pip install bitsandbytes``; RTN needs neither).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import einops
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from mechunlearn.attacks.base import Attack, AttackConfig, AttackError, best_variant, working_copy
from mechunlearn.attacks.data import AttackData
from mechunlearn.attacks.scoring import facts_table, forget_accuracy, score_data, score_items

__all__ = ["QuantizeConfig", "Quantize", "rtn_quantize", "quantize_model", "QUANTIZED_WEIGHTS"]

# TransformerLens weight -> (HF [out, in] view, inverse). TL: W_Q/W_K/W_V [head, d_model, d_head] (in = d_model),
# W_O [head, d_head, d_model] (out = d_model), W_in [d_model, d_mlp], W_out [d_mlp, d_model].
QUANTIZED_WEIGHTS = ("attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O", "mlp.W_in", "mlp.W_out")
_TO_OUT_IN = {
    "attn.W_Q": ("h m d -> (h d) m", "(h d) m -> h m d"),
    "attn.W_K": ("h m d -> (h d) m", "(h d) m -> h m d"),
    "attn.W_V": ("h m d -> (h d) m", "(h d) m -> h m d"),
    "attn.W_O": ("h d m -> m (h d)", "m (h d) -> h d m"),
    "mlp.W_in": ("m f -> f m", "f m -> m f"),
    "mlp.W_out": ("f m -> m f", "m f -> f m"),
}


def rtn_quantize(weight: Float[Tensor, "out inp"], bits: int, group_size: int | None = None) -> Float[Tensor, "out inp"]:
    """Asymmetric round-to-nearest quantization of a ``[out, in]`` matrix, dequantized: per output row
    (``group_size=None``) or per group of ``group_size`` consecutive inputs of a row (the last group may be
    shorter). Computed in fp32, returned in the input's dtype."""
    if not 2 <= bits <= 8:
        raise AttackError(f"bits={bits}: RTN quantization takes 2..8 bits")
    out_features, in_features = weight.shape
    size = in_features if group_size is None else group_size
    if size <= 0:
        raise AttackError(f"group_size must be > 0, got {group_size}")
    work = weight.detach().float()
    padded_in = -(-in_features // size) * size
    if padded_in != in_features:  # pad with each row's last value: it never widens a group's range
        work = torch.cat([work, work[:, -1:].expand(out_features, padded_in - in_features)], dim=1)
    groups = work.reshape(out_features, padded_in // size, size)
    low = groups.amin(dim=-1, keepdim=True)
    high = groups.amax(dim=-1, keepdim=True)
    levels = 2 ** bits - 1
    scale = (high - low) / levels
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant group is exact
    codes = torch.clamp(torch.round((groups - low) / safe), 0, levels)
    dequantized = torch.where(scale > 0, low + codes * scale, groups)
    return dequantized.reshape(out_features, padded_in)[:, :in_features].to(weight.dtype)


def quantize_model(model, bits: int, group_size: int | None = None) -> None:
    """Quantize (RTN, dequantized) every attention and MLP weight of a HookedTransformer in place."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            suffix = ".".join(name.split(".")[2:])
            if not name.startswith("blocks.") or suffix not in _TO_OUT_IN:
                continue
            forward, inverse = _TO_OUT_IN[suffix]
            heads = {"h": parameter.shape[0]} if suffix.startswith("attn.") else {}
            quantized = rtn_quantize(einops.rearrange(parameter, forward), bits, group_size)
            parameter.copy_(einops.rearrange(quantized, inverse, **heads))


@dataclass
class QuantizeConfig(AttackConfig):
    bits: tuple[int, ...] = (8, 4, 3)
    schemes: tuple[str, ...] = ("channel", "group")
    group_size: int = 32  # 128 in GPTQ/AWQ for 7B models; the world's d_model is 128
    backend: str = "rtn"  # rtn | bitsandbytes (CUDA only; 8 and 4 bits)

    def validate(self) -> None:
        if not self.bits:
            raise AttackError("bits is empty: give the bit widths to try, e.g. 8,4,3")
        bad = [bits for bits in self.bits if not 2 <= bits <= 8]
        if bad:
            raise AttackError(f"bits {bad} are outside 2..8: round-to-nearest quantization here takes 2 to 8 bits")
        unknown = set(self.schemes) - {"channel", "group"}
        if unknown or not self.schemes:
            raise AttackError(f"schemes {sorted(unknown) or '(none)'}: use channel and/or group")
        self.positive(group_size=self.group_size)
        if self.backend not in ("rtn", "bitsandbytes"):
            raise AttackError(f"backend {self.backend!r}: use rtn (any device) or bitsandbytes (CUDA)")
        if self.backend == "bitsandbytes" and set(self.bits) - {8, 4}:
            raise AttackError("the bitsandbytes backend quantizes to 8 or 4 bits only; pass bits=8,4")


class Quantize(Attack):
    name = "quantize"
    Config = QuantizeConfig
    description = "round-to-nearest weight quantization per channel / per group (8, 4, 3 bits), then the evals"

    def attack(self, model, data: AttackData, *, base=None, progress: bool = False):
        config = self.config
        before = score_data(model, data)
        scored, variants = [], {}
        for scheme, bits, quantized in self._variants(model):
            variant = f"{scheme}-{bits}bit" if config.backend == "rtn" else f"bnb-{bits}bit"
            scores = score_data(quantized, data).assign(variant=variant, scheme=scheme, bits=bits)
            scored.append(scores)
            variants[variant] = forget_accuracy(scores)
            del quantized
        per_fact = pd.concat(scored, ignore_index=True)
        headline = best_variant(variants)
        facts = facts_table(before, per_fact[per_fact["variant"] == headline])
        frame = _frame(per_fact, before)
        summary = {"headline": headline, "backend": config.backend,
                   "headline_rule": "the variant with the highest forget accuracy (the same rule on every model)",
                   "variants": variants}
        return self.result(frame, facts, summary, {"per_fact": per_fact})

    def _variants(self, model):
        config = self.config
        if config.backend == "bitsandbytes":
            for bits in config.bits:
                yield "bitsandbytes", bits, _bitsandbytes_model(model, bits)
            return
        for scheme in config.schemes:
            for bits in config.bits:
                quantized = working_copy(model)
                quantize_model(quantized, bits, None if scheme == "channel" else config.group_size)
                yield scheme, bits, quantized

    @staticmethod
    def plot(result):
        import plotly.graph_objects as go

        frame = result.frame
        figure = go.Figure()
        keys = ["model"] if "model" in frame.columns else []
        rows = frame[frame["category"] == "all"]
        for label, part in (rows.groupby(keys) if keys else [("model", rows)]):
            figure.add_bar(x=part["variant"], y=part["accuracy"], name=f"{label if not keys else label[0]}: forget")
        figure.update_layout(title="Quantization: forget-target accuracy per variant", yaxis_title="accuracy",
                             yaxis_range=[0, 1], barmode="group")
        return figure


def _frame(per_fact: pd.DataFrame, before: pd.DataFrame) -> pd.DataFrame:
    """Per variant and category (forget unique / shared / inferred / all, and retain): accuracy, MCQ, n."""
    stacked = pd.concat([before.assign(variant="none", scheme="none", bits=32), per_fact], ignore_index=True)
    forget = stacked[stacked["domain"] == "forget"]
    rows = pd.concat([forget, forget.assign(category="all"),
                      stacked[stacked["domain"] == "retain"].assign(category="retain")], ignore_index=True)
    return (rows.groupby(["variant", "scheme", "bits", "category"], sort=False)
            .agg(accuracy=("correct", "mean"), mcq_accuracy=("mcq", "mean"), truth_ratio=("truth_ratio", "mean"),
                 n=("correct", "size")).reset_index())


def _bitsandbytes_model(model, bits: int):
    """The model exported to HF and reloaded in 8 / 4 bits through bitsandbytes (CUDA only)."""
    if not torch.cuda.is_available():
        raise AttackError("backend=bitsandbytes needs a CUDA GPU; on this machine use backend=rtn (the default)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise AttackError("backend=bitsandbytes needs the bitsandbytes package: pip install bitsandbytes "
                          "(or use backend=rtn, which needs nothing)") from error
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from mechunlearn import models

    quantization = (BitsAndBytesConfig(load_in_8bit=True) if bits == 8 else
                    BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                       bnb_4bit_compute_dtype=torch.float32))
    with tempfile.TemporaryDirectory(prefix="mechunlearn-bnb-") as directory:
        models.save(model, directory)
        quantized = AutoModelForCausalLM.from_pretrained(directory, quantization_config=quantization,
                                                         device_map={"": torch.cuda.current_device()})
    quantized.tokenizer = model.tokenizer
    return quantized.eval()
