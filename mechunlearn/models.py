"""GPT-NeoX checkpoints <-> TransformerLens ``HookedTransformer``, both ways, with the same logits.

``load`` reads any ``GPTNeoXForCausalLM`` checkpoint (Pythia, EleutherAI deep-ignorance, a local fine-tune, one of
the embedded world's tiny models) from a directory or the local Hugging Face cache. The TransformerLens config is
derived from the checkpoint's own ``config.json``, never from TransformerLens' list of official model names, so
custom checkpoints load too. Nothing is fetched from a hub unless ``allow_download=True``; only safetensors
weights are read and no remote code is ever run.

No weight processing is applied (no LayerNorm folding, no centering): every TransformerLens weight maps 1:1 onto
an HF weight, which is what makes ``save`` exact and what unlearning needs (it trains the real weights). For
TransformerLens' processed view (folded LayerNorm, centred writing weights), call
``model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)`` on a copy.

``sae_transformer=True`` builds sae-lens' ``HookedSAETransformer`` (a HookedTransformer subclass with ``add_sae`` /
``run_with_saes``) with the same weights, config and fast paths, so SAELens users splice SAEs into our models.

Every TransformerLens construction call of the toolkit lives in this module, so another backend (for example
TransformerLens' ``TransformerBridge``) can be added here without touching methods or diagnostics.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import einops
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.components import MLP

from mechunlearn.fast import accelerate

__all__ = [
    "CheckpointError",
    "FIXED_PARAMETERS",
    "load",
    "save",
    "from_hf",
    "to_hf",
    "hooked_config_from_hf",
    "hf_config_from_hooked",
    "resolve_device",
    "resolve_dtype",
    "resolve_checkpoint_dir",
    "attach_tokenizer",
    "to_sae_transformer",
]

SUPPORTED_ARCHITECTURE = "GPTNeoXForCausalLM"
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}


# TransformerLens parameters with no GPT-NeoX counterpart: they stay zero, so training must leave them alone.
FIXED_PARAMETERS: tuple[str, ...] = ("unembed.b_U",)


class CheckpointError(ValueError):
    """A checkpoint (path, config or tokenizer) cannot be used; the message names it and the fix."""


# ----------------------------------------------------------------------------------------------- devices and dtypes
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> the first CUDA device if there is one, else CPU; ``cpu``, ``cuda``, ``cuda:N`` as given."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here: use --device cpu or auto")
    return resolved


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """``auto`` -> bf16 on CUDA, fp32 on CPU; otherwise fp32, bf16 or fp16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, fp32, bf16 or fp16")
    return _DTYPES[dtype]


# ------------------------------------------------------------------------------------------------- finding a checkpoint
def _hf_cache_snapshot(name: str) -> Path | None:
    """The newest snapshot directory of ``name`` in the local HF hub cache, without contacting the hub."""
    from huggingface_hub.constants import HF_HUB_CACHE

    repo_dir = Path(HF_HUB_CACHE) / ("models--" + name.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        candidate = snapshots / ref.read_text().strip()
        if (candidate / "config.json").is_file():
            return candidate
    with_config = [path for path in snapshots.iterdir() if (path / "config.json").is_file()]
    return max(with_config, key=lambda path: path.stat().st_mtime) if with_config else None


def resolve_checkpoint_dir(path_or_name: str | os.PathLike, allow_download: bool = False) -> Path:
    """A local directory holding ``config.json``: the path itself, or the HF-cache snapshot of a hub name."""
    path = Path(path_or_name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; pass the checkpoint directory that holds config.json")
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} has no config.json: pass a Hugging Face model directory "
                                  "(config.json + model.safetensors), e.g. one written by mechunlearn.models.save")
        return path
    name = str(path_or_name)
    looks_like_hub_name = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if looks_like_hub_name:
        snapshot = _hf_cache_snapshot(name)
        if snapshot is not None:
            return snapshot
        if allow_download:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
        raise CheckpointError(f"{name!r} is not a local directory and is not in the local Hugging Face cache; "
                              "download it first (huggingface-cli download NAME) or pass allow_download=True "
                              "(--allow-download on the command line)")
    raise CheckpointError(f"checkpoint path {path} does not exist: pass a directory holding config.json, "
                          "or an HF hub name already in the local cache")


def _read_config(checkpoint_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((checkpoint_dir / "config.json").read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{checkpoint_dir / 'config.json'} is not valid JSON ({error})") from error
    architectures = config.get("architectures") or []
    model_type = config.get("model_type")
    if SUPPORTED_ARCHITECTURE not in architectures and model_type != "gpt_neox":
        found = ", ".join(architectures) or f"model_type={model_type!r}"
        raise CheckpointError(f"{checkpoint_dir} holds a {found} checkpoint; mechunlearn loads GPT-NeoX "
                              f"({SUPPORTED_ARCHITECTURE}) checkpoints such as Pythia or deep-ignorance")
    return config


# ------------------------------------------------------------------------------------------------------------ configs
def _rotary_fraction(hf_config: dict[str, Any]) -> float:
    rope = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
    for key in ("partial_rotary_factor", "rotary_pct"):
        if key in rope:
            return float(rope[key])
        if key in hf_config:
            return float(hf_config[key])
    return 1.0


def _rotary_base(hf_config: dict[str, Any]) -> float:
    rope = hf_config.get("rope_parameters") or {}
    return float(rope.get("rope_theta", hf_config.get("rotary_emb_base", hf_config.get("rope_theta", 10000))))


def hooked_config_from_hf(hf_config: dict[str, Any], *, device: torch.device | str = "cpu",
                          dtype: torch.dtype = torch.float32, n_ctx: int | None = None) -> HookedTransformerConfig:
    """The TransformerLens config of a GPT-NeoX ``config.json`` (as a dict), read field by field."""
    for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size"):
        if key not in hf_config:
            raise CheckpointError(f"config.json lacks {key!r}, which every GPT-NeoX config has")
    d_model, n_heads = int(hf_config["hidden_size"]), int(hf_config["num_attention_heads"])
    if d_model % n_heads:
        raise CheckpointError(f"hidden_size {d_model} is not divisible by num_attention_heads {n_heads}")
    rope = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise CheckpointError(f"rope type {rope.get('rope_type', rope.get('type'))!r} is not supported; "
                              "only default rotary embeddings map exactly onto TransformerLens")
    d_head = d_model // n_heads
    return HookedTransformerConfig(
        d_model=d_model,
        d_head=d_head,
        n_heads=n_heads,
        d_mlp=int(hf_config["intermediate_size"]),
        n_layers=int(hf_config["num_hidden_layers"]),
        n_ctx=int(n_ctx or hf_config.get("max_position_embeddings", 2048)),
        d_vocab=int(hf_config["vocab_size"]),
        eps=float(hf_config.get("layer_norm_eps", 1e-5)),
        act_fn=str(hf_config.get("hidden_act", "gelu")),
        normalization_type="LN",
        positional_embedding_type="rotary",
        rotary_dim=round(_rotary_fraction(hf_config) * d_head),
        rotary_base=_rotary_base(hf_config),
        rotary_adjacent_pairs=False,
        parallel_attn_mlp=bool(hf_config.get("use_parallel_residual", True)),
        use_attn_scale=True,
        default_prepend_bos=False,
        original_architecture=SUPPORTED_ARCHITECTURE,
        tokenizer_prepends_bos=False,
        model_name=str(hf_config.get("_name_or_path") or "gpt-neox"),
        device=str(device),
        dtype=dtype,
    )


def hf_config_from_hooked(model: HookedTransformer):
    """A ``GPTNeoXConfig`` describing ``model`` (embeddings tied only if W_U is exactly W_E transposed)."""
    from transformers import GPTNeoXConfig

    cfg = model.cfg
    if cfg.original_architecture not in (None, SUPPORTED_ARCHITECTURE) or cfg.positional_embedding_type != "rotary":
        raise CheckpointError(f"model {cfg.model_name!r} ({cfg.original_architecture}) is not a GPT-NeoX model; "
                              "only GPT-NeoX HookedTransformers can be saved as GPTNeoXForCausalLM")
    tied = bool(torch.equal(model.W_U.detach(), model.W_E.detach().T)) and not torch.any(model.b_U.detach() != 0)
    tokenizer = model.tokenizer
    return GPTNeoXConfig(
        vocab_size=cfg.d_vocab,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.d_mlp,
        hidden_act=cfg.act_fn,
        max_position_embeddings=cfg.n_ctx,
        layer_norm_eps=cfg.eps,
        use_parallel_residual=cfg.parallel_attn_mlp,
        rotary_pct=cfg.rotary_dim / cfg.d_head,
        rotary_emb_base=cfg.rotary_base,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rotary_base),
                         "partial_rotary_factor": cfg.rotary_dim / cfg.d_head},
        tie_word_embeddings=tied,
        attention_bias=True,
        bos_token_id=getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else 0,
        eos_token_id=getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else 0,
        pad_token_id=getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None,
        architectures=[SUPPORTED_ARCHITECTURE],
    )


# ----------------------------------------------------------------------------------------------------- weight mapping
def _require_attention_biases(hf_config: dict[str, Any], hf_model=None) -> None:
    """GPT-NeoX checkpoints with ``attention_bias: false`` have no ``b_Q/b_K/b_V/b_O`` to map."""
    missing = hf_config.get("attention_bias", True) is False
    if hf_model is not None:
        attention = hf_model.gpt_neox.layers[0].attention
        missing = missing or attention.query_key_value.bias is None or attention.dense.bias is None
    if missing:
        raise CheckpointError("checkpoints without attention biases (attention_bias: false in config.json) are not "
                              "supported yet: TransformerLens' GPT-NeoX layout needs b_Q, b_K, b_V and b_O; use a "
                              "checkpoint with biases (every Pythia / deep-ignorance model has them)")


def _hooked_state_dict_from_hf(hf_model, cfg: HookedTransformerConfig) -> dict[str, torch.Tensor]:
    from transformer_lens.pretrained.weight_conversions import convert_neox_weights

    _require_attention_biases(hf_model.config.to_dict(), hf_model)  # before the conversion trips over them
    state_dict = convert_neox_weights(hf_model, cfg)
    if getattr(hf_model.config, "tie_word_embeddings", False):
        state_dict["unembed.W_U"] = hf_model.gpt_neox.embed_in.weight.T
    # convert_neox_weights returns views of the HF parameters; copy so the two models never share storage.
    return {name: tensor.detach().clone() for name, tensor in state_dict.items()}


def _hf_state_dict_from_hooked(model: HookedTransformer) -> dict[str, torch.Tensor]:
    """The inverse of TransformerLens' ``convert_neox_weights`` (which has no inverse of its own)."""
    cfg, sd = model.cfg, {k: v.detach() for k, v in model.state_dict().items()}
    out = {"gpt_neox.embed_in.weight": sd["embed.W_E"]}
    for layer in range(cfg.n_layers):
        hf, tl = f"gpt_neox.layers.{layer}", f"blocks.{layer}"
        out[f"{hf}.input_layernorm.weight"] = sd[f"{tl}.ln1.w"]
        out[f"{hf}.input_layernorm.bias"] = sd[f"{tl}.ln1.b"]
        out[f"{hf}.post_attention_layernorm.weight"] = sd[f"{tl}.ln2.w"]
        out[f"{hf}.post_attention_layernorm.bias"] = sd[f"{tl}.ln2.b"]
        # NeoX fuses QKV with the flattened output axis ordered (head, qkv, d_head).
        qkv = torch.stack([sd[f"{tl}.attn.W_Q"], sd[f"{tl}.attn.W_K"], sd[f"{tl}.attn.W_V"]])
        out[f"{hf}.attention.query_key_value.weight"] = einops.rearrange(qkv, "qkv i m h -> (i qkv h) m")
        qkv_bias = torch.stack([sd[f"{tl}.attn.b_Q"], sd[f"{tl}.attn.b_K"], sd[f"{tl}.attn.b_V"]])
        out[f"{hf}.attention.query_key_value.bias"] = einops.rearrange(qkv_bias, "qkv i h -> (i qkv h)")
        out[f"{hf}.attention.dense.weight"] = einops.rearrange(sd[f"{tl}.attn.W_O"], "i h m -> m (i h)")
        out[f"{hf}.attention.dense.bias"] = sd[f"{tl}.attn.b_O"]
        out[f"{hf}.mlp.dense_h_to_4h.weight"] = sd[f"{tl}.mlp.W_in"].T
        out[f"{hf}.mlp.dense_h_to_4h.bias"] = sd[f"{tl}.mlp.b_in"]
        out[f"{hf}.mlp.dense_4h_to_h.weight"] = sd[f"{tl}.mlp.W_out"].T
        out[f"{hf}.mlp.dense_4h_to_h.bias"] = sd[f"{tl}.mlp.b_out"]
    out["gpt_neox.final_layer_norm.weight"] = sd["ln_final.w"]
    out["gpt_neox.final_layer_norm.bias"] = sd["ln_final.b"]
    out["embed_out.weight"] = sd["unembed.W_U"].T
    if torch.any(sd["unembed.b_U"] != 0):
        raise CheckpointError("the model has a non-zero unembedding bias b_U, which GPTNeoXForCausalLM cannot "
                              "hold; fold it away or keep the model in TransformerLens format")
    return {name: tensor.contiguous().clone() for name, tensor in out.items()}


# --------------------------------------------------------------------------------------------------- public API
def attach_tokenizer(model: HookedTransformer, tokenizer) -> HookedTransformer:
    """Attach a (saved-and-reloaded) HF tokenizer, checking that its vocabulary fits the model."""
    if tokenizer is None:
        return model
    if len(tokenizer) > model.cfg.d_vocab:
        raise CheckpointError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary holds "
                              f"{model.cfg.d_vocab}: use the tokenizer the checkpoint was trained with")
    model.set_tokenizer(tokenizer, default_padding_side="right")
    # TransformerLens swaps in a reloaded copy that prepends BOS by default; `save` writes the tokenizer as given,
    # so an exported checkpoint tokenizes as the original did for transformers / lm-eval users (who call it with
    # its defaults) instead of shifting every input by a BOS the model never saw in training.
    model._mechunlearn_tokenizer_as_given = (model.tokenizer, tokenizer)
    return model


def _tokenizer_to_save(model: HookedTransformer):
    """The tokenizer as the user attached it, unless ``model.tokenizer`` was replaced since."""
    attached = getattr(model, "_mechunlearn_tokenizer_as_given", None)
    if attached is not None and attached[0] is model.tokenizer:
        return attached[1]
    return model.tokenizer


def from_hf(hf_model, tokenizer=None, *, device: str | torch.device = "auto",
            dtype: str | torch.dtype = "auto", accelerated: bool = True,
            sae_transformer: bool = False) -> HookedTransformer:
    """Wrap an in-memory ``GPTNeoXForCausalLM`` as a HookedTransformer with identical weights (copied).

    ``accelerated`` swaps in ``mechunlearn.fast``'s fused attention / LayerNorm paths, which are taken only while
    nothing hooks what they fuse away (every hook point keeps working); pass False for TransformerLens' own.
    ``sae_transformer`` returns sae-lens' ``HookedSAETransformer`` instead (same weights, config and fast paths).
    """
    if type(hf_model).__name__ != SUPPORTED_ARCHITECTURE:
        raise CheckpointError(f"expected a {SUPPORTED_ARCHITECTURE}, got {type(hf_model).__name__}")
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    cfg = hooked_config_from_hf(hf_model.config.to_dict(), device=resolved_device, dtype=resolved_dtype)
    model = _build(cfg, _hooked_state_dict_from_hf(hf_model, cfg), accelerated=accelerated,
                   sae_transformer=sae_transformer)
    return attach_tokenizer(model, tokenizer)


def to_hf(model: HookedTransformer, dtype: str | torch.dtype | None = None):
    """A ``GPTNeoXForCausalLM`` on the CPU with the same weights as the hooked model, in ``dtype`` (default fp32;
    ``save`` passes the model's own dtype)."""
    from transformers import GPTNeoXForCausalLM
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding

    target_dtype = torch.float32 if dtype is None else resolve_dtype(dtype)
    config = hf_config_from_hooked(model)
    config.dtype = target_dtype
    state_dict = {name: tensor.to("cpu", target_dtype) for name, tensor in _hf_state_dict_from_hooked(model).items()}
    with torch.device("meta"):  # skip random initialisation: every weight is assigned below
        hf_model = GPTNeoXForCausalLM(config)
    unembed_name = "lm_head.weight" if hasattr(hf_model, "lm_head") else "embed_out.weight"
    state_dict[unembed_name] = state_dict.pop("embed_out.weight")
    if config.tie_word_embeddings:
        state_dict.pop(unembed_name)
    hf_model.load_state_dict(state_dict, strict=False, assign=True)
    if config.tie_word_embeddings:
        hf_model.tie_weights()
    # Rotary inverse frequencies are non-persistent buffers computed at construction: rebuild them for real.
    hf_model.gpt_neox.rotary_emb = GPTNeoXRotaryEmbedding(config=config)
    left_on_meta = [name for name, tensor in [*hf_model.named_parameters(), *hf_model.named_buffers()]
                    if tensor.is_meta]
    if left_on_meta:
        raise RuntimeError(f"internal error: HF tensors not mapped from the hooked model: {left_on_meta[:5]}")
    return hf_model.eval()


def _read_weights(checkpoint_dir: Path):
    """``GPTNeoXForCausalLM.from_pretrained`` (fp32, offline, safetensors only); a file that cannot be read gives
    one ``CheckpointError`` naming it instead of a deserialisation traceback."""
    from safetensors import SafetensorError
    from transformers import GPTNeoXForCausalLM

    try:
        return GPTNeoXForCausalLM.from_pretrained(
            checkpoint_dir, local_files_only=True, use_safetensors=True, trust_remote_code=False,
            dtype=torch.float32, output_loading_info=True)
    except SafetensorError as error:
        files = ", ".join(sorted(path.name for path in checkpoint_dir.glob("*.safetensors")))
        raise CheckpointError(f"{checkpoint_dir}: the weights ({files}) cannot be read: {error}. The file is corrupt "
                              "or incomplete (an interrupted download or copy?): download or save it again") from error
    except RuntimeError as error:
        if "size mismatch" not in str(error) and "mismatched_sizes" not in str(error):
            raise
        raise CheckpointError(f"{checkpoint_dir}: the weights do not fit config.json (a tensor's shape differs from "
                              "the one config.json describes; transformers' log above names it): is config.json the "
                              "one saved with these weights?") from error


def load(path_or_name: str | os.PathLike, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
         *, allow_download: bool = False, n_ctx: int | None = None, tokenizer=None,
         accelerated: bool = True, sae_transformer: bool = False) -> HookedTransformer:
    """Load a GPT-NeoX checkpoint (directory or HF-cache name) as an unprocessed ``HookedTransformer``.

    ``n_ctx`` caps the positions TransformerLens precomputes rotary tables for (default: the checkpoint's
    ``max_position_embeddings``). The tokenizer saved beside the weights is attached when present; pass
    ``tokenizer=`` to use another one (its vocabulary must fit the model). ``accelerated`` (default) swaps in
    ``mechunlearn.fast``'s fused paths, which keep every hook point (see ``from_hf``). ``sae_transformer=True``
    returns sae-lens' ``HookedSAETransformer`` (``add_sae``, ``run_with_saes``) with the same loading.
    """
    from transformers import AutoTokenizer

    checkpoint_dir = resolve_checkpoint_dir(path_or_name, allow_download=allow_download)
    config_dict = _read_config(checkpoint_dir)
    if not any(checkpoint_dir.glob("*.safetensors")):
        found = ", ".join(sorted(p.name for p in checkpoint_dir.iterdir())) or "nothing"
        raise CheckpointError(f"{checkpoint_dir} has no *.safetensors weights (found: {found}); mechunlearn reads "
                              "safetensors only: convert with transformers' save_pretrained(safe_serialization=True)")
    _require_attention_biases(config_dict)
    hf_model, loading_info = _read_weights(checkpoint_dir)
    if loading_info.get("missing_keys"):
        missing = sorted(loading_info["missing_keys"])
        raise CheckpointError(f"{checkpoint_dir} lacks weights {missing[:4]}{'...' if len(missing) > 4 else ''}; "
                              "is the checkpoint complete?")
    if tokenizer is None and (checkpoint_dir / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint_dir))
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    cfg = hooked_config_from_hf(config_dict, device=resolved_device, dtype=resolved_dtype, n_ctx=n_ctx)
    cfg.model_name = checkpoint_dir.name if Path(path_or_name).exists() else str(path_or_name)
    model = _build(cfg, _hooked_state_dict_from_hf(hf_model, cfg), accelerated=accelerated,
                   sae_transformer=sae_transformer)
    return attach_tokenizer(model, tokenizer)


def to_sae_transformer(model: HookedTransformer, *, accelerated: bool = True) -> HookedTransformer:
    """A ``HookedSAETransformer`` copy of an in-memory GPT-NeoX ``model`` (an unlearned one, say): same config,
    weights (copied) and tokenizer. Hooks and spliced modules of ``model`` are not carried over; ``model`` is
    left as it was."""
    if model.cfg.original_architecture not in (None, SUPPORTED_ARCHITECTURE):
        raise CheckpointError(f"to_sae_transformer copies GPT-NeoX models; {model.cfg.model_name!r} is a "
                              f"{model.cfg.original_architecture}")
    # Only the weights: SAEs already spliced into ``model`` hold no entries in its state dict.
    state_dict = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    sae_model = _build(copy.deepcopy(model.cfg), state_dict, accelerated=accelerated, sae_transformer=True)
    if model.tokenizer is not None:
        sae_model.set_tokenizer(model.tokenizer, default_padding_side=model.tokenizer.padding_side)
    return sae_model


def _build(cfg: HookedTransformerConfig, state_dict: dict[str, torch.Tensor], *, accelerated: bool,
           sae_transformer: bool) -> HookedTransformer:
    """An unprocessed HookedTransformer (or sae-lens' HookedSAETransformer) on ``cfg.device`` in ``cfg.dtype``."""
    model_class = HookedTransformer
    if sae_transformer:
        from sae_lens import HookedSAETransformer as model_class
    model = model_class(cfg, move_to_device=False)
    if sae_transformer:
        _mlp_hook_in_as_method(model)
    model.load_and_process_state_dict(state_dict, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                      fold_value_biases=False, refactor_factored_attn_matrices=False)
    model.to(cfg.device, print_details=False).to(cfg.dtype, print_details=False)
    if accelerated:
        accelerate(model)
    return model


class _MLPWithHookIn(MLP):
    """TransformerLens' ``MLP`` with sae-lens' ``hook_in`` fired by a method, not an instance attribute."""

    def forward(self, x):
        return super().forward(self.hook_in(x))


def _mlp_hook_in_as_method(model: HookedTransformer) -> None:
    """``HookedSAETransformer`` adds ``mlp.hook_in`` by setting ``mlp.forward`` to a lambda closed over that MLP;
    ``copy.deepcopy`` keeps the closure, so a copied model would run the ORIGINAL model's MLP weights (attacks and
    training work on copies). The same hook from a subclass' method survives copying."""
    for block in model.blocks:
        mlp = block.mlp
        if type(mlp) is MLP and "forward" in mlp.__dict__ and hasattr(mlp, "hook_in"):
            del mlp.__dict__["forward"]
            mlp.__class__ = _MLPWithHookIn


def save(model: HookedTransformer, directory: str | os.PathLike, *, extra_files: dict[str, str] | None = None) -> Path:
    """Write ``model`` as an HF ``GPTNeoXForCausalLM`` directory (config.json, model.safetensors, tokenizer).

    The weights are written in the model's own dtype (a model loaded in bf16 is saved in bf16, with
    ``"dtype": "bfloat16"`` in config.json), so a bf16 checkpoint does not double in size after unlearning.
    ``transformers.AutoModelForCausalLM.from_pretrained(directory)`` loads it back with the same logits. The
    directory is written under a temporary name next to the target and renamed into place, so a failure never
    leaves a half-written checkpoint; an existing directory at the target is replaced.
    """
    from mechunlearn.storage import atomic_directory

    target = Path(directory)
    hf_model = to_hf(model, dtype=next(model.parameters()).dtype)  # the dtype it was loaded (and trained) in
    with atomic_directory(target) as staging:
        hf_model.save_pretrained(staging, safe_serialization=True)
        if model.tokenizer is not None:
            _tokenizer_to_save(model).save_pretrained(staging)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
    return target
