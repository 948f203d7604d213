"""Who's Harry Potter (Eldan & Russinovich 2023): fine-tune on "generic" predictions of the forget texts.

1. A **reinforced** model: the base model trained further on the forget texts (it knows the target better and
   leans toward it even without cues).
2. For every forget text ("block"), translate it with the **anchored-term dictionary** (forget-specific name ->
   generic substitute) and align tokens of the original and the translation. ``v_base`` = base logits on the
   TRANSLATED block; ``v_reinforced`` = reinforced logits on the ORIGINAL block; generic logits
   ``v_generic = v_base - alpha * ReLU(v_reinforced - v_base)`` (the paper's alpha is 5).
3. Consistency, as in the paper: an anchored term's repeats after its first appearance in a block are left out of
   the loss (so "my name is Harry" is not taught to become "my name is Jon"), the tokens inside a multi-token
   term after its first token are left out too, and the logits of substitutes already used earlier in the block
   are pushed down by ``substitute_penalty``.
4. Fine-tune the base model on the ORIGINAL block with the generic predictions as targets.

Targets: hard argmax labels by default. The paper fine-tunes on the generic predictions as labels ("the
generic prediction ... serves as the target label"), i.e. hard next-token labels, which is what we default to;
``soft_targets=True`` uses the full generic distribution (KL) instead, which keeps more of the base model's
uncertainty and is gentler on tiny models. Only what the loss needs is kept: an int64 label per token (hard), or
the aligned token ids plus the reinforced model, the distributions computed per batch (soft); never a
``[tokens, vocab]`` table per text. Generic logits are computed in float32 whatever the model's dtype.

Differences from the paper: anchored terms come from the world's dictionary (the paper builds ~1,500 with GPT-4);
the reinforced model is trained with the shared loop on the forget texts only; no retain data is used unless
``retain_weight > 0`` (the paper uses none). All model access is plain forward passes (no hooks needed).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from mechunlearn.batching import TextBatchSource, logits_of, mean_nll
from mechunlearn.methods.base import MethodConfig, UnlearningMethod, nll

__all__ = ["WHP", "WHPConfig", "generic_logits", "translate", "aligned_targets"]


def generic_logits(v_baseline: Float[Tensor, "... vocab"], v_reinforced: Float[Tensor, "... vocab"],
                   alpha: float = 5.0) -> Float[Tensor, "... vocab"]:
    """``v_generic = v_baseline - alpha * ReLU(v_reinforced - v_baseline)`` (Eldan & Russinovich 2023, eq. 1)."""
    return v_baseline - alpha * F.relu(v_reinforced - v_baseline)


def _anchor_pattern(anchored_terms: dict[str, str]) -> re.Pattern | None:
    if not anchored_terms:
        return None
    names = sorted(anchored_terms, key=len, reverse=True)  # longest first, so "Orlo Vane" beats "Orlo"
    return re.compile(r"(?<![\w])(" + "|".join(re.escape(name) for name in names) + r")(?![\w])")


def translate(text: str, anchored_terms: dict[str, str]) -> tuple[str, list[tuple[int, int, int, int, str]]]:
    """Replace anchored terms; return the translation and ``(orig_start, orig_end, new_start, new_end, term)``."""
    pattern = _anchor_pattern(anchored_terms)
    if pattern is None:
        return text, []
    pieces, spans, cursor, shift = [], [], 0, 0
    for match in pattern.finditer(text):
        term = match.group(1)
        substitute = anchored_terms[term]
        pieces.append(text[cursor:match.start()])
        new_start = match.start() + shift
        pieces.append(substitute)
        spans.append((match.start(), match.end(), new_start, new_start + len(substitute), term))
        shift += len(substitute) - len(term)
        cursor = match.end()
    pieces.append(text[cursor:])
    return "".join(pieces), spans


def _token_groups(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """For each token: the index of the anchor span it overlaps, or -1 for an ordinary token."""
    groups = []
    for start, end in offsets:
        group = -1
        for index, (span_start, span_end) in enumerate(spans):
            if start < span_end and end > span_start:
                group = index
                break
        groups.append(group)
    return groups


@dataclass
class AlignedBlock:
    original_ids: list[int]
    translated_ids: list[int]
    # for each original target index j (token j predicted at position j-1): the translated index of the token
    # whose prediction stands for it, or -1 when j is left out of the loss
    translated_index: list[int]
    substitute_first_tokens: list[list[int]]  # per original position: substitute token ids already used before it


def aligned_targets(tokenizer, text: str, anchored_terms: dict[str, str], max_length: int) -> AlignedBlock | None:
    """Tokenize a block and its translation and align their tokens (``None`` if the two cannot be aligned)."""
    translated, spans = translate(text, anchored_terms)
    original = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    translation = tokenizer(translated, add_special_tokens=False, return_offsets_mapping=True)
    original_groups = _token_groups(original["offset_mapping"], [(s[0], s[1]) for s in spans])
    translated_groups = _token_groups(translation["offset_mapping"], [(s[2], s[3]) for s in spans])
    # Walk both sequences: ordinary tokens correspond one to one (anchors sit on pre-token boundaries, so the
    # text between them tokenizes identically); an anchor group maps its first token to the substitute's first.
    mapping, seen_terms, used_substitutes, substitutes_before = [], set(), [], []
    i = k = 0
    while i < len(original_groups):
        group = original_groups[i]
        if group == -1:
            if k >= len(translated_groups) or translated_groups[k] != -1:
                return None
            if original["input_ids"][i] != translation["input_ids"][k]:
                return None
            mapping.append(k)
            substitutes_before.append(list(used_substitutes))
            i, k = i + 1, k + 1
            continue
        term = spans[group][4]
        group_length = sum(1 for g in original_groups[i:] if g == group)
        while k < len(translated_groups) and translated_groups[k] != group:
            k += 1
        if k >= len(translated_groups):
            return None
        substitute_length = sum(1 for g in translated_groups[k:] if g == group)
        first_time = term not in seen_terms
        mapping.append(k if first_time else -1)
        mapping.extend([-1] * (group_length - 1))
        substitutes_before.extend([list(used_substitutes)] * group_length)
        seen_terms.add(term)
        if translation["input_ids"][k] not in used_substitutes:
            used_substitutes.append(translation["input_ids"][k])
        i, k = i + group_length, k + substitute_length
    cut = max_length
    return AlignedBlock(original["input_ids"][:cut], translation["input_ids"][:cut],
                        [index if index < cut else -1 for index in mapping[:cut]], substitutes_before[:cut])


@dataclass
class WHPConfig(MethodConfig):
    lr: float = 1e-5
    alpha: float = 5.0
    reinforce_lr: float = 1e-4
    reinforce_epochs: int = 3
    soft_targets: bool = False
    substitute_penalty: float = 5.0
    retain_weight: float = 0.0
    anchored_terms_file: str | None = None  # JSON {term: substitute}; default: the world's dictionary


class WHP(UnlearningMethod):
    """Who's Harry Potter: reinforced model + anchored terms -> generic targets -> fine-tune."""

    name = "whp"
    Config = WHPConfig
    needs_reference = True  # the base model's frozen copy gives v_base
    needs_retain = False
    summary = "fine-tune on v_generic = v_base(translated) - alpha * ReLU(v_reinforced - v_base)"

    def _anchored_terms(self) -> dict[str, str]:
        if self.config.anchored_terms_file:
            path = Path(self.config.anchored_terms_file)
            if not path.is_file():
                raise ValueError(f"anchored_terms_file {path} does not exist: pass a JSON object {{term: substitute}}")
            terms = json.loads(path.read_text())
            if not isinstance(terms, dict) or not terms:
                raise ValueError(f"anchored_terms_file {path} must hold a non-empty JSON object {{term: substitute}}")
            return {str(k): str(v) for k, v in terms.items()}
        world = self.context.world if self.context is not None else None
        if world is None:
            raise ValueError("whp needs an anchored-term dictionary: unlearn a world model or pass "
                             "--anchored-terms-file terms.json")
        return dict(world.anchored_terms)

    def train_reinforced(self, model):
        """The base model trained further on the forget texts (a frozen copy is returned).

        It trains through the shared loop, so a bf16 model's reinforced copy learns through fp32 master weights
        like every other run."""
        from mechunlearn.models import FIXED_PARAMETERS
        from mechunlearn.training import TrainConfig, select_parameters, train
        from mechunlearn.unlearn import frozen_copy

        reinforced = frozen_copy(model)
        trainable = select_parameters(reinforced, None, exclude=FIXED_PARAMETERS)
        for _, parameter in trainable:
            parameter.requires_grad_(True)
        device = self.context.device
        data = TextBatchSource(self.context.tokenizer, self.context.forget_texts, self.config.batch_size,
                               self.max_length, seed=self.config.seed)
        config = TrainConfig(lr=self.config.reinforce_lr, epochs=self.config.reinforce_epochs,
                             batch_size=self.config.batch_size, max_length=self.max_length,
                             eval_split=0.0, seed=self.config.seed, progress=self.context.progress)
        train(reinforced, lambda m, batch: (mean_nll(logits_of(m(batch.tokens.to(device))), batch.to(device)), {}),
              data, config, parameters=[parameter for _, parameter in trainable], description="whp reinforce")
        for parameter in reinforced.parameters():
            parameter.requires_grad_(False)
        return reinforced.eval()

    @torch.no_grad()
    def generic_targets(self, block: AlignedBlock, reference, reinforced) -> tuple[Tensor, Tensor]:
        """Generic logits ``[length, vocab]`` (float32) at every original position, and the mask of positions
        kept in the loss (row ``j - 1`` predicts original token ``j``)."""
        device = self.context.device
        v_reinforced = logits_of(reinforced(torch.tensor([block.original_ids], device=device)))[0].float()
        v_base_translated = logits_of(reference(torch.tensor([block.translated_ids], device=device)))[0].float()
        length = len(block.original_ids)
        targets = torch.zeros_like(v_reinforced)
        keep = torch.zeros(length, dtype=torch.bool, device=device)
        for j in range(1, length):
            k = block.translated_index[j]
            if k <= 0:  # left out (repeat / inner anchor token), or no prefix to predict from
                continue
            generic = generic_logits(v_base_translated[k - 1], v_reinforced[j - 1], self.config.alpha)
            for token in block.substitute_first_tokens[j]:
                generic[token] -= self.config.substitute_penalty
            targets[j - 1] = generic
            keep[j - 1] = True
        return targets, keep

    def setup(self, model, context) -> None:
        """Align every forget text with its translation and keep only what the loss needs: the hard generic labels
        (``[tokens]`` int64 per text, -100 where left out) by default; with ``soft_targets`` the aligned blocks and
        the reinforced model, so each batch's generic distributions are computed when it comes (two extra forward
        passes per text) instead of holding a ``[tokens, vocab]`` float32 table per text (~100 GB for 1k texts of
        512 tokens over a 50k vocabulary)."""
        super().setup(model, context)
        anchored = self._anchored_terms()
        reinforced = self.train_reinforced(model)
        self._labels: dict[tuple[int, ...], Tensor] = {}
        self._blocks: dict[tuple[int, ...], AlignedBlock] = {}
        skipped = 0
        for text in context.forget_texts:
            block = aligned_targets(context.tokenizer, text, anchored, self.max_length)
            if block is None or len(block.original_ids) < 2:
                skipped += 1
                continue
            key = tuple(block.original_ids)
            if self.config.soft_targets:
                self._blocks[key] = block
            else:
                targets, keep = self.generic_targets(block, context.reference, reinforced)
                self._labels[key] = targets.argmax(-1).masked_fill(~keep, -100).cpu()
        if not (self._labels or self._blocks):
            raise ValueError("whp: no forget text could be aligned with its anchored translation")
        self.skipped_blocks = skipped
        self._reinforced = reinforced if self.config.soft_targets else None

    def release(self) -> None:
        super().release()
        self._reinforced = None

    def _row_loss(self, predicted: Tensor, key: tuple[int, ...]) -> tuple[Tensor, int] | None:
        """Summed loss of one forget text's logits ``[length, vocab]`` against its generic targets, and its count."""
        if self.config.soft_targets:
            block = self._blocks.get(key)
            if block is None:
                return None
            targets, keep = self.generic_targets(block, self.context.reference, self._reinforced)
            loss = F.kl_div(F.log_softmax(predicted[keep].float(), -1), F.log_softmax(targets[keep], -1),
                            log_target=True, reduction="sum")
            return loss, int(keep.sum())
        labels = self._labels.get(key)
        if labels is None:
            return None
        labels = labels.to(predicted.device)
        loss = F.cross_entropy(predicted.float(), labels, ignore_index=-100, reduction="sum")
        return loss, int((labels != -100).sum())

    def loss(self, model, forget, retain):
        logits = logits_of(model(forget.tokens))
        losses, counts = [], 0
        for row in range(forget.tokens.shape[0]):
            key = tuple(forget.tokens[row, forget.mask[row]].tolist())
            row_loss = self._row_loss(logits[row, : len(key)], key)
            if row_loss is not None:
                losses.append(row_loss[0])
                counts += row_loss[1]
        if not losses:
            zero = logits.sum() * 0.0
            return zero, {"generic_loss": 0.0}
        generic_loss = torch.stack(losses).sum() / max(counts, 1)
        metrics = {"generic_loss": generic_loss}
        loss = generic_loss
        if self.config.retain_weight > 0 and retain is not None:
            retain_nll = nll(model, retain)
            loss = loss + self.config.retain_weight * retain_nll
            metrics["retain_nll"] = retain_nll
        return loss, metrics
