"""Step 6, layer-wise multiple-choice accuracy through a logit lens or a tuned lens.

At which layer does a model "know" the answers? For each MCQ item (``mechunlearn.data.MCQItem``; the world's
``mcq_items("forget")`` is the WMDP analogue, ``mcq_items("retain")`` the MMLU analogue, ``load_mcq(path)``
reads your own), every choice is scored as a continuation of the question (``question + " " + choice``, the
world's format; ``choice_prefix`` changes the separator): the sum of the log-probabilities of the choice's
tokens, read at every layer through the lens. The highest-scoring choice is the answer at that layer. All
layers come from ONE forward pass per batch of (question + choice) sequences, with hooks on every layer.

Layers use Hugging Face's ``hidden_states`` numbering, like the other activation analyses: 0 = embeddings
(``blocks.0.hook_resid_pre``), ``l + 1`` = ``blocks.{l}.hook_resid_post``. The last layer N read through
either lens is exactly the model's own output (``ln_final`` + ``unembed`` of the last residual stream IS the
forward pass), so ``delta_from_final`` = layer accuracy - the model's accuracy.

* ``LogitLens``: the model's frozen ``ln_final`` + ``unembed`` applied to a residual stream. Zero training.
* ``TunedLens``: tuned-lens' formulation (Belrose et al. 2023): a per-layer affine translator in residual form
  ``h + A_l h + b_l`` (zero-initialised, so an untrained tuned lens IS the logit lens) followed by the frozen
  ``ln_final`` + ``unembed``; the last layer has no translator. Trained with Adam to minimise
  KL(final-layer distribution || lens distribution) averaged over layers and real tokens, as tuned-lens does
  (not cross-entropy to the next token: the lens should read what the model will say, not what is true).

Difference from the seed: the seed's tuned lens is an ``nn.Linear`` straight from hidden state to vocabulary;
ours keeps the model's own read-out and learns only a d_model x d_model translator per layer (tuned-lens' design:
far fewer parameters, and an identity at initialisation).

Cache: a trained tuned lens is stored under ``mechunlearn.storage.cache_root()/tuned_lens/<key>``, ``key`` =
SHA-256 of the model's state_dict bytes (every tensor's name, dtype, shape and bytes: cheap for the tiny world
models, about 10 s for a 7B model) + the training settings + the training texts, so a second run loads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from mechunlearn.batching import TextBatchSource
from mechunlearn.data import MCQItem
from mechunlearn.diagnostics.activation_norms import layer_figure, residual_stream_hooks
from mechunlearn.diagnostics.base import Analysis, AnalysisResult

__all__ = ["LogitLens", "TunedLens", "LogitLensMCQ", "TunedLensMCQ", "layerwise_mcq_accuracy", "mcq_layer_scores",
           "train_tuned_lens", "load_or_train_tuned_lens", "lens_kl", "weights_digest"]


# ------------------------------------------------------------------------------------------------------ the lenses
class LogitLens(nn.Module):
    """``lens(hidden, layer)``: the model's frozen ``ln_final`` + ``unembed`` on a residual stream of ``layer``."""

    def __init__(self, model) -> None:
        super().__init__()
        self.__dict__["model"] = model  # not a submodule: the model's weights are read, never owned or trained
        self.n_layers = model.cfg.n_layers

    def translate(self, hidden: Tensor, layer: int) -> Tensor:
        return hidden

    def forward(self, hidden: Float[Tensor, "... d_model"], layer: int) -> Float[Tensor, "... d_vocab"]:
        if not 0 <= layer <= self.n_layers:
            raise ValueError(f"layer {layer} is out of range: lens layers are 0..{self.n_layers} "
                             "(0 = embeddings, l + 1 = output of block l)")
        shape = hidden.shape
        residual = self.translate(hidden.reshape(1, -1, shape[-1]), layer).to(self.model.cfg.dtype)
        logits = self.model.unembed(self.model.ln_final(residual))
        return logits.reshape(*shape[:-1], logits.shape[-1])


class TunedLens(LogitLens):
    """Logit lens after a per-layer affine translator ``h + A_l h + b_l`` (zero-initialised; none at layer N)."""

    def __init__(self, model) -> None:
        super().__init__(model)
        d_model = model.cfg.d_model
        self.translators = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(self.n_layers))
        for translator in self.translators:
            nn.init.zeros_(translator.weight)
            nn.init.zeros_(translator.bias)
        self.to(next(model.parameters()).device)

    def translate(self, hidden: Tensor, layer: int) -> Tensor:
        if layer == self.n_layers:  # the last residual stream is what the model reads out: nothing to translate
            return hidden
        residual = hidden.float()
        return residual + self.translators[layer](residual)


# ------------------------------------------------------------------------------------------- MCQ scoring by layer
def _encode_pairs(tokenizer, items: Sequence[MCQItem], choice_prefix: str, n_ctx: int):
    """(item index, choice index, question ids, choice ids) for every choice; questions cut from the left to fit."""
    pairs = []
    for item_index, item in enumerate(items):
        question = tokenizer(item.question, add_special_tokens=False)["input_ids"]
        if not question:
            raise ValueError(f"MCQ item {item_index} has an empty question ({item.question!r}); every choice is "
                             "scored as a continuation of the question, so it needs at least one token")
        for choice_index, choice in enumerate(item.choices):
            continuation = tokenizer(choice_prefix + choice, add_special_tokens=False)["input_ids"]
            if not continuation or len(continuation) >= n_ctx:
                raise ValueError(f"MCQ item {item_index}, choice {choice_index} ({choice!r}) has "
                                 f"{len(continuation)} tokens; a choice needs 1..{n_ctx - 1} tokens")
            pairs.append((item_index, choice_index, question[-(n_ctx - len(continuation)):], continuation))
    return pairs


@torch.no_grad()
def mcq_layer_scores(model, items: Sequence[MCQItem], lens: LogitLens | None = None, *, batch_size: int = 32,
                     choice_prefix: str = " ") -> list[np.ndarray]:
    """Per item, a ``[n_choices, n_layers + 1]`` array: each choice's summed log-probability read at each layer.

    One forward pass per batch of ``batch_size`` (question + choice) sequences; only the positions that predict
    choice tokens go through the lens (the read-out of every position would cost ``pos x d_vocab`` per layer).
    """
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer attached: load it with mechunlearn.models.load")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    lens = lens if lens is not None else LogitLens(model)
    hooks = residual_stream_hooks(model)
    tokenizer, device = model.tokenizer, next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pairs = _encode_pairs(tokenizer, items, choice_prefix, model.cfg.n_ctx)
    scores = torch.zeros(len(pairs), len(hooks), dtype=torch.float64)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        length = max(len(question) + len(choice) for _, _, question, choice in chunk)
        tokens = torch.full((len(chunk), length), pad_id, dtype=torch.long)
        rows, positions, targets, owners = [], [], [], []
        for row, (_, _, question, choice) in enumerate(chunk):
            tokens[row, : len(question) + len(choice)] = torch.tensor(question + choice)
            for offset, token in enumerate(choice):  # position p predicts token p + 1
                rows.append(row)
                positions.append(len(question) + offset - 1)
                targets.append(token)
                owners.append(start + row)
        store: dict[str, Tensor] = {}

        def keep(activation, hook):
            store[hook.name] = activation.detach()

        with model.hooks(fwd_hooks=[(hook, keep) for _, hook in hooks]):
            model(tokens.to(device))
        rows_t, positions_t = torch.tensor(rows, device=device), torch.tensor(positions, device=device)
        targets_t, owners_t = torch.tensor(targets, device=device), torch.tensor(owners)
        for column, (layer, hook) in enumerate(hooks):
            logprobs = torch.log_softmax(lens(store[hook][rows_t, positions_t], layer).float(), dim=-1)
            token_scores = logprobs.gather(-1, targets_t[:, None])[:, 0].double().cpu()
            scores[:, column].index_add_(0, owners_t, token_scores)
    per_item = [[] for _ in items]
    for (item_index, _, _, _), row in zip(pairs, scores.numpy()):
        per_item[item_index].append(row)
    return [np.stack(rows) for rows in per_item]


def layerwise_mcq_accuracy(model, items: Sequence[MCQItem], lens: LogitLens | None = None, *,
                           batch_size: int = 32, choice_prefix: str = " ") -> pd.DataFrame:
    """Rows ``domain, layer, accuracy, delta_from_final, chance, n_items, hook``, one per (item domain, layer)."""
    if not items:
        raise ValueError("no MCQ items to score: pass items (e.g. world.mcq_items('forget') or load_mcq(path))")
    bad = [index for index, item in enumerate(items) if not 0 <= item.answer < len(item.choices)]
    if bad:
        raise ValueError(f"MCQ item(s) {bad[:5]} have an answer index outside their choices")
    scores = mcq_layer_scores(model, items, lens, batch_size=batch_size, choice_prefix=choice_prefix)
    # argmax over choices per layer; ties go to the first choice, as numpy's argmax does
    correct = np.stack([score.argmax(axis=0) == item.answer for score, item in zip(scores, items)])
    hooks = residual_stream_hooks(model)
    domains = np.array([item.domain for item in items])
    rows = []
    for domain in dict.fromkeys(domains.tolist()):
        chosen = domains == domain
        accuracy = correct[chosen].mean(axis=0)
        chance = float(np.mean([1 / len(item.choices) for item, keep in zip(items, chosen) if keep]))
        for (layer, hook), value in zip(hooks, accuracy):
            rows.append({"domain": domain, "layer": layer, "accuracy": float(value),
                         "delta_from_final": float(value - accuracy[-1]), "chance": chance,
                         "n_items": int(chosen.sum()), "hook": hook})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------- tuned-lens training
def lens_kl(model, lens: LogitLens, tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean over lens layers 0..N-1 and real tokens of KL(model's final distribution || lens distribution)."""
    hooks = residual_stream_hooks(model)[:-1]
    store: dict[str, Tensor] = {}

    def keep(activation, hook):
        store[hook.name] = activation.detach()

    with torch.no_grad(), model.hooks(fwd_hooks=[(hook, keep) for _, hook in hooks]):
        final = torch.log_softmax(model(tokens).float(), dim=-1)[mask]
    losses = []
    for layer, hook in hooks:
        lens_logprobs = torch.log_softmax(lens(store[hook][mask], layer).float(), dim=-1)
        losses.append(F.kl_div(lens_logprobs, final, log_target=True, reduction="batchmean"))
    return torch.stack(losses).mean()


def train_tuned_lens(model, texts: Sequence[str], *, steps: int = 300, lr: float = 1e-3, batch_size: int = 8,
                     max_length: int = 128, seed: int = 0) -> tuple[TunedLens, list[float]]:
    """Train a ``TunedLens`` for ``model`` on ``texts`` (Adam, ``steps`` batches); returns it and the loss curve.

    Gradients are taken with ``torch.autograd.grad`` w.r.t. the translators only, so the model's frozen
    ``ln_final``/``unembed`` never accumulate ``.grad``.
    """
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer attached: load it with mechunlearn.models.load")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    lens = TunedLens(model)  # zero-initialised: no random state involved; seed orders the texts
    parameters = list(lens.parameters())
    optimizer = torch.optim.Adam(parameters, lr=lr)
    source = TextBatchSource(model.tokenizer, [t for t in texts if t.strip()], batch_size, max_length, seed)
    device, losses, epoch = next(model.parameters()).device, [], 0
    while len(losses) < steps:
        for batch in source.epoch(epoch):
            loss = lens_kl(model, lens, batch.tokens.to(device), batch.mask.to(device))
            for parameter, gradient in zip(parameters, torch.autograd.grad(loss, parameters)):
                parameter.grad = gradient
            optimizer.step()
            losses.append(float(loss.detach()))
            if len(losses) == steps:
                break
        epoch += 1
    return lens.eval(), losses


def weights_digest(model) -> str:
    """SHA-256 of a model's state_dict: every tensor's name, dtype, shape and raw bytes (in key order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def texts_digest(texts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()


def save_atomically(target: Path, write) -> None:
    """``write(staging_dir)`` then rename into ``target`` (a concurrent writer of the same key may win: fine)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(staging)
        if not target.exists():
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_or_train_tuned_lens(model, texts: Sequence[str], *, steps: int = 300, lr: float = 1e-3,
                             batch_size: int = 8, max_length: int = 128, seed: int = 0,
                             cache_dir: str | os.PathLike | None = None) -> tuple[TunedLens, dict[str, Any]]:
    """The cached tuned lens of (model weights, texts, settings), trained and stored on the first call.

    Returns the lens and an info dict (``path``, ``loaded`` from cache or not, the training ``losses``).
    """
    from safetensors.torch import load_file, save_file

    from mechunlearn.storage import cache_root

    settings = {"version": 1, "steps": steps, "lr": lr, "batch_size": batch_size, "max_length": max_length,
                "seed": seed, "objective": "kl_final_to_lens", "texts": texts_digest(texts)}
    key = hashlib.sha256((weights_digest(model) + json.dumps(settings, sort_keys=True)).encode()).hexdigest()[:24]
    path = Path(cache_dir) if cache_dir is not None else cache_root() / "tuned_lens"
    path = path / key
    if (path / "lens.safetensors").is_file():
        lens = TunedLens(model)
        lens.load_state_dict(load_file(path / "lens.safetensors", device=str(next(model.parameters()).device)))
        info = json.loads((path / "settings.json").read_text())
        return lens.eval(), {"path": str(path), "loaded": True, "losses": info.get("losses", [])}
    lens, losses = train_tuned_lens(model, texts, steps=steps, lr=lr, batch_size=batch_size,
                                    max_length=max_length, seed=seed)

    def write(staging: Path) -> None:
        save_file({name: tensor.detach().cpu().contiguous() for name, tensor in lens.state_dict().items()},
                  staging / "lens.safetensors")
        (staging / "settings.json").write_text(json.dumps(settings | {"losses": losses}, indent=1))

    save_atomically(path, write)
    return lens, {"path": str(path), "loaded": False, "losses": losses}


# --------------------------------------------------------------------------------------------------- the analyses
class LogitLensMCQ(Analysis):
    """Per model: layer-wise MCQ accuracy through the logit lens. ``run(models)`` -> ``AnalysisResult``.

    Options: ``items`` (MCQItems, grouped by their ``domain``) or ``world`` + ``domains`` (default
    ("forget", "retain")), ``batch_size`` (sequences per forward pass), ``choice_prefix`` (" ").
    """

    name = "logit_lens"
    scope = "model"
    kind = "lens"
    description = "layer-wise multiple-choice accuracy read through the logit lens"
    lens_name = "logit lens"

    def __init__(self, items: Sequence[MCQItem] | None = None, world=None,
                 domains: Sequence[str] = ("forget", "retain"), batch_size: int = 32, choice_prefix: str = " ") -> None:
        if (items is None) == (world is None):
            raise ValueError(f"{self.name}: pass exactly one of items= (MCQItems, e.g. load_mcq(path)) or world= "
                             "(its mcq_items per domain)")
        self.items = list(items) if items is not None else [i for d in domains for i in world.mcq_items(d)]
        if not self.items:
            raise ValueError(f"{self.name}: no MCQ items (domains {list(domains)}); pass non-empty items")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size, self.choice_prefix = batch_size, choice_prefix

    def lens_for(self, model) -> tuple[LogitLens, dict[str, Any]]:
        return LogitLens(model), {}

    def run(self, models: dict[str, Any]) -> AnalysisResult:
        if not models:
            raise ValueError(f"{self.name}: no models given; pass {{name: HookedTransformer}}")
        frames, summary = [], {"lens": self.lens_name, "models": {}}
        for model_name, model in models.items():
            lens, info = self.lens_for(model)
            frame = layerwise_mcq_accuracy(model, self.items, lens, batch_size=self.batch_size,
                                           choice_prefix=self.choice_prefix)
            frames.append(frame.assign(model=model_name))
            summary["models"][model_name] = info | {
                domain: {"final_accuracy": float(group["accuracy"].iloc[-1]),
                         "best_layer": int(group.loc[group["accuracy"].idxmax(), "layer"]),
                         "best_accuracy": float(group["accuracy"].max()), "chance": float(group["chance"].iloc[0])}
                for domain, group in frame.groupby("domain", sort=False)}
        frame = pd.concat(frames, ignore_index=True)
        frame = frame[["model", *[c for c in frame.columns if c != "model"]]]
        return AnalysisResult(self.name, frame, summary=summary, plot=self._plot)

    def _plot(self, result: AnalysisResult):
        return layer_figure(result.frame, [("accuracy", "MCQ accuracy"), ("delta_from_final", "accuracy - final")],
                            ["model", "domain"], f"Layer-wise MCQ accuracy ({self.lens_name})")


class TunedLensMCQ(LogitLensMCQ):
    """Layer-wise MCQ accuracy through a tuned lens trained per model on ``train_texts`` (cached on disk).

    Options as ``LogitLensMCQ`` plus ``train_texts`` (default: the world's retain texts), ``steps`` (300),
    ``lr`` (1e-3), ``train_batch_size`` (8), ``max_length`` (128), ``seed`` (0), ``cache_dir``.
    """

    name = "tuned_lens"
    description = "layer-wise multiple-choice accuracy read through a tuned lens (trained on retain texts)"
    lens_name = "tuned lens"

    def __init__(self, items: Sequence[MCQItem] | None = None, world=None,
                 domains: Sequence[str] = ("forget", "retain"), batch_size: int = 32, choice_prefix: str = " ",
                 train_texts: Sequence[str] | None = None, steps: int = 300, lr: float = 1e-3,
                 train_batch_size: int = 8, max_length: int = 128, seed: int = 0,
                 cache_dir: str | os.PathLike | None = None) -> None:
        super().__init__(items, world, domains, batch_size, choice_prefix)
        if train_texts is None:
            if world is None:
                raise ValueError("tuned_lens: pass train_texts= (e.g. retain texts) to train the lens on")
            train_texts = world.retain_texts()
        self.train_texts = [text for text in train_texts if text.strip()]
        if not self.train_texts:
            raise ValueError("tuned_lens: train_texts is empty; pass at least one non-empty text")
        self.train_options = dict(steps=steps, lr=lr, batch_size=train_batch_size, max_length=max_length, seed=seed,
                             cache_dir=cache_dir)

    def lens_for(self, model) -> tuple[LogitLens, dict[str, Any]]:
        lens, info = load_or_train_tuned_lens(model, self.train_texts, **self.train_options)
        losses = info.pop("losses")
        return lens, info | ({"initial_kl": losses[0], "final_kl": losses[-1]} if losses else {})
