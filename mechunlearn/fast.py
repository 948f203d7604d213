"""Faster forward passes for unprocessed GPT-NeoX ``HookedTransformer``s, with every hook point kept.

``accelerate(model)`` swaps the class of some component *instances* of one model for subclasses defined here
(nothing in TransformerLens is patched, importing this module changes nothing, other models are untouched):

* ``Attention``: when nothing is hooked on ``hook_attn_scores`` or ``hook_pattern`` of that block (no forward,
  backward or pre hook, no global module hook) and no feature the fused path cannot honour is in use (attention
  or padding mask, key-value cache, position bias, ALiBi, local attention, soft-capping, attention sinks,
  QK-norm, 4-bit weights, split QKV input, ``use_attn_result``, log-n or dynamic-NTK rotary...), the scores,
  mask, softmax and pattern-times-values are one ``F.scaled_dot_product_attention(is_causal=True)`` call and
  the rotary embedding uses a cat-based half rotation instead of a clone plus two slice assignments. Otherwise
  the call falls through to TransformerLens' own forward, so ``run_with_cache`` still caches the pattern and a
  hook on ``hook_pattern`` still edits it. ``hook_q``, ``hook_k``, ``hook_v``, ``hook_rot_q``, ``hook_rot_k``
  and ``hook_z`` fire in both paths with the same shapes and can replace their activation.
* ``LayerNorm`` / ``LayerNormPre``: one ``F.layer_norm`` kernel instead of eight element-wise ops, unless
  ``hook_scale`` or ``hook_normalized`` is hooked (then TransformerLens' forward runs and both fire).
* ``TransformerBlock``: ``ln1`` is computed once instead of three times (TransformerLens normalises the same
  residual separately for the query, key and value inputs), unless something hooks inside ``ln1`` (then the
  block runs TransformerLens' forward, so ``hook_normalized`` fires three times as before). Every block hook
  (``hook_resid_pre``, ``hook_attn_out``, ``hook_mlp_out``, ``hook_resid_mid``, ``hook_resid_post``...) fires.
* ``Embed``: ``F.embedding`` instead of advanced indexing (same values, a much cheaper backward).

A hook point replaced by another module (an SAE spliced in by sae-lens' ``HookedSAETransformer``) counts as
hooked. Whether to take the fast path is decided at every call, so hooks added or removed later (``run_with_cache``,
``run_with_hooks``, ``model.hooks()``, ``add_hook``) and config flags toggled later (``set_use_attn_result``...)
are honoured. ``model.cfg``, parameter names, state-dict keys and hook names are unchanged; values agree with
the plain model to float rounding (about 1e-6 in fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens import HookedTransformer
from transformer_lens.components import Attention, Embed, LayerNorm, LayerNormPre, TransformerBlock
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities.activation_functions import softcap_enabled

__all__ = ["accelerate", "deaccelerate", "is_accelerated"]

# Architectures whose blocks apply ln1/ln2 after the sublayer (TransformerLens' POST_NORM_ARCHITECTURES).
_POST_NORM = frozenset({"Olmo2ForCausalLM", "Olmo3ForCausalLM"})
_OLMO_QK_NORM = frozenset({"OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM"})
_FLOAT_DTYPES = (torch.float32, torch.float64)


# ----------------------------------------------------------------------------------------------------- hook checks
def _global_hooks_active() -> bool:
    """Whether a global module hook (``torch.nn.modules.module.register_module_*_hook``) is registered."""
    module = torch.nn.modules.module
    return any(getattr(module, name, None) for name in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
        "_global_backward_pre_hooks"))


def _has_hooks(*modules: nn.Module) -> bool:
    """Whether any of ``modules`` has a forward, forward-pre, backward or backward-pre hook, or a global one.

    TransformerLens' ``add_hook`` (and so ``run_with_cache``, ``run_with_hooks``, ``model.hooks()``) registers
    ordinary PyTorch module hooks, so this sees those as well as hooks registered on a HookPoint directly.
    """
    for module in modules:
        if (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None)):
            return True
    return _global_hooks_active()


def _observed(*hook_points: nn.Module) -> bool:
    """Whether a hook point is hooked or was replaced by another module (an SAE that sae-lens'
    ``HookedSAETransformer.add_sae`` splices in its place): a fused path would skip either."""
    return any(type(point) is not HookPoint for point in hook_points) or _has_hooks(*hook_points)


def _has_hooks_anywhere(module: nn.Module) -> bool:
    spliced = any(type(child) is not HookPoint for name, child in module.named_children() if name.startswith("hook_"))
    return spliced or _has_hooks(*module.modules())


# ------------------------------------------------------------------------------------------------------ components
class FastLayerNorm(LayerNorm):
    """TransformerLens ``LayerNorm`` that runs ``F.layer_norm`` while its hook points are not hooked."""

    def forward(self, x):
        if _observed(self.hook_scale, self.hook_normalized) or x.shape[-1] != self.length:
            return super().forward(x)
        if self.cfg.dtype in _FLOAT_DTYPES:
            if x.dtype != self.w.dtype:
                return super().forward(x)
            return F.layer_norm(x, (self.length,), self.w, self.b, self.eps)
        # Low precision: TransformerLens normalises in fp32, casts back, then applies w and b in cfg.dtype.
        normalized = F.layer_norm(x.to(torch.float32), (self.length,), None, None, self.eps)
        return normalized.to(self.cfg.dtype) * self.w + self.b


class FastLayerNormPre(LayerNormPre):
    """TransformerLens ``LayerNormPre`` (centre and scale only) through ``F.layer_norm``."""

    def forward(self, x):
        if _observed(self.hook_scale, self.hook_normalized):
            return super().forward(x)
        if self.cfg.dtype not in _FLOAT_DTYPES:
            x = x.to(torch.float32)
        return F.layer_norm(x, (x.shape[-1],), None, None, self.eps).to(self.cfg.dtype)


class FastEmbed(Embed):
    """TransformerLens ``Embed`` through ``F.embedding`` (the same rows; a dense, cheaper backward)."""

    def forward(self, tokens):
        if self.cfg.post_embedding_ln or tokens.dtype not in (torch.int64, torch.int32):
            return super().forward(tokens)
        return F.embedding(tokens, self.W_E)


class FastAttention(Attention):
    """TransformerLens ``Attention`` with a fused SDPA path used only when the pattern is not observed."""

    def _fast_path_ok(self, query_input, key_input, value_input, past_kv_cache_entry, additive_attention_mask,
                      attention_mask, position_bias) -> bool:
        cfg = self.cfg
        if (past_kv_cache_entry is not None or additive_attention_mask is not None or attention_mask is not None
                or position_bias is not None):
            return False
        if (cfg.load_in_4bit or cfg.use_attn_result or cfg.use_split_qkv_input or cfg.use_attn_in
                or cfg.use_qk_norm or cfg.original_architecture in _OLMO_QK_NORM or cfg.clip_qkv is not None
                or cfg.use_logn_attn or cfg.use_attention_sinks or softcap_enabled(cfg.attn_scores_soft_cap)
                or self.attn_type != "global"):
            return False
        if (self._attention_dir_override or cfg.attention_dir) not in ("causal", "bidirectional"):
            return False
        positional = cfg.positional_embedding_type
        if positional == "rotary":
            if cfg.use_dynamic_ntk_rope or query_input.shape[1] > self.rotary_cos.shape[0]:
                return False
            if self.rotary_cos.device != query_input.device:
                return False
        elif positional not in ("standard", "shortformer"):
            return False
        if query_input.ndim != 3 or key_input.ndim != 3 or value_input.ndim != 3:
            return False
        if query_input.shape[1] != key_input.shape[1]:
            return False
        if self.W_Q.device != query_input.device:
            return False
        return not _observed(self.hook_attn_scores, self.hook_pattern)

    def _fast_rotary(self, x):
        """TransformerLens' ``apply_rotary`` (no cache offset, no mask) with a cat-based half rotation."""
        rotary_dim = self.cfg.rotary_dim
        n_pos = x.shape[1]
        cos = self.rotary_cos[None, :n_pos, None, :]
        sin = self.rotary_sin[None, :n_pos, None, :]
        x_rot = x[..., :rotary_dim]
        if self.cfg.rotary_adjacent_pairs:
            x_flip = self.rotate_every_two(x_rot)
        else:
            half = rotary_dim // 2
            x_flip = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
        x_rotated = x_rot * cos + x_flip * sin
        if rotary_dim == x.shape[-1]:
            return x_rotated
        return torch.cat([x_rotated, x[..., rotary_dim:]], dim=-1)

    def forward(self, query_input, key_input, value_input, past_kv_cache_entry=None, additive_attention_mask=None,
                attention_mask=None, position_bias=None):
        if not self._fast_path_ok(query_input, key_input, value_input, past_kv_cache_entry,
                                  additive_attention_mask, attention_mask, position_bias):
            return super().forward(query_input, key_input, value_input, past_kv_cache_entry=past_kv_cache_entry,
                                   additive_attention_mask=additive_attention_mask, attention_mask=attention_mask,
                                   position_bias=position_bias)
        q, k, v = self.calculate_qkv_matrices(query_input, key_input, value_input)  # fires hook_q/k/v
        if self.cfg.positional_embedding_type == "rotary":
            q = self.hook_rot_q(self._fast_rotary(q))
            k = self.hook_rot_k(self._fast_rotary(k))
        if q.dtype != v.dtype:
            q, k = q.to(v.dtype), k.to(v.dtype)
        causal = (self._attention_dir_override or self.cfg.attention_dir) == "causal"
        z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=causal, scale=1.0 / self.attn_scale)
        z = self.hook_z(z.transpose(1, 2))  # [batch, pos, head_index, d_head], as TransformerLens' hook_z
        w_o = self.W_O
        if z.dtype != w_o.dtype:
            z = z.to(w_o.dtype)
        z = z.reshape(z.shape[0], z.shape[1], self.cfg.n_heads * self.cfg.d_head)
        # W_O is [head, d_head, d_model]; flattened it is the transposed nn.Linear weight (a view, no copy).
        return F.linear(z, w_o.reshape(-1, w_o.shape[-1]).T, self.b_O)


class FastTransformerBlock(TransformerBlock):
    """TransformerLens ``TransformerBlock`` that normalises the attention input once, not once per Q, K and V."""

    def forward(self, resid_pre, shortformer_pos_embed=None, past_kv_cache_entry=None, attention_mask=None):
        cfg = self.cfg
        if (shortformer_pos_embed is not None or cfg.use_attn_in or cfg.use_split_qkv_input
                or cfg.use_normalization_before_and_after or cfg.original_architecture in _POST_NORM
                or _has_hooks_anywhere(self.ln1)):
            return super().forward(resid_pre, shortformer_pos_embed=shortformer_pos_embed,
                                   past_kv_cache_entry=past_kv_cache_entry, attention_mask=attention_mask)
        resid_pre = self.hook_resid_pre(resid_pre)  # [batch, pos, d_model]
        attn_in = self.ln1(resid_pre)
        attn_out = self.attn(query_input=attn_in, key_input=attn_in, value_input=attn_in,
                             past_kv_cache_entry=past_kv_cache_entry, attention_mask=attention_mask)
        attn_out = self.hook_attn_out(attn_out)  # [batch, pos, d_model]
        if resid_pre.device != attn_out.device:
            resid_pre = resid_pre.to(attn_out.device)
        # From here on, TransformerLens' TransformerBlock.forward (3.x) line for line.
        if not cfg.attn_only and not cfg.parallel_attn_mlp:
            resid_mid = self.hook_resid_mid(resid_pre + attn_out)
            mlp_in = resid_mid if not cfg.use_hook_mlp_in else self.hook_mlp_in(resid_mid.clone())
            mlp_out = self.apply_mlp(self.ln2(mlp_in))
            return self.hook_resid_post(resid_mid + mlp_out)
        if cfg.parallel_attn_mlp:
            normalized_resid_pre_2 = self.ln2(
                resid_pre if not cfg.use_hook_mlp_in else self.hook_mlp_in(resid_pre.clone()))
            mlp_out = self.apply_mlp(normalized_resid_pre_2)
            return self.hook_resid_post(resid_pre + attn_out + mlp_out)
        return self.hook_resid_post(resid_pre + attn_out)


# Exact TransformerLens class -> its fast subclass. Subclasses of these (GroupedQueryAttention, BERT blocks...)
# are left alone: only the exact classes whose forward the fast versions reproduce are swapped.
_FAST_CLASS: dict[type, type] = {
    LayerNorm: FastLayerNorm,
    LayerNormPre: FastLayerNormPre,
    Embed: FastEmbed,
    Attention: FastAttention,
    TransformerBlock: FastTransformerBlock,
}
_PLAIN_CLASS: dict[type, type] = {fast: plain for plain, fast in _FAST_CLASS.items()}


# ------------------------------------------------------------------------------------------------------- public API
def accelerate(model: HookedTransformer) -> HookedTransformer:
    """Swap faster forwards into ``model``'s components, in place; returns ``model``.

    Only this model changes (its component instances get subclasses of their TransformerLens classes; no
    global patching). Hook names, parameters, state dict and ``model.cfg`` stay as they were, and every hook
    point keeps firing: a fast path is skipped whenever something observes what it would fuse away. Calling
    it again is a no-op; ``deaccelerate`` undoes it. Components added later (e.g. by ``process_weights_``,
    which may replace LayerNorms) are plain until ``accelerate`` is called again.
    """
    if not isinstance(model, HookedTransformer):
        raise TypeError(f"accelerate expects a transformer_lens HookedTransformer, got {type(model).__name__}")
    for module in model.modules():
        fast = _FAST_CLASS.get(type(module))
        if fast is not None:
            module.__class__ = fast
    return model


def deaccelerate(model: HookedTransformer) -> HookedTransformer:
    """Undo ``accelerate``: give every component its TransformerLens class back, in place; returns ``model``."""
    for module in model.modules():
        plain = _PLAIN_CLASS.get(type(module))
        if plain is not None:
            module.__class__ = plain
    return model


def is_accelerated(model: nn.Module) -> bool:
    """Whether ``accelerate`` has swapped fast components into ``model`` (and ``deaccelerate`` has not undone it)."""
    return any(type(module) in _PLAIN_CLASS for module in model.modules())
