"""Adversarial suffixes by greedy coordinate gradient (GCG; Zou et al. 2023; nanoGCG's loop).

For each attacked forget fact, a suffix of ``suffix_tokens`` token ids after its prompt is optimised so that the
model completes the prompt with the fact's true answer. Each step, for every fact still unsolved, at once:

1. the gradient of the answer's cross-entropy w.r.t. the one-hot suffix tokens, taken through ``hook_embed``
   (the one-hot rows times ``W_E`` replace the suffix embeddings);
2. the ``top_k`` tokens with the most negative gradient per suffix position (never the answer's own tokens or a
   special token: a suffix that spells the answer out would "extract" nothing);
3. ``batch_size`` candidates, each one random position swapped to one random top-k token; candidates whose
   text does not re-tokenize to the same ids in context are dropped (nanoGCG's ``filter_ids``), so the suffix
   is a string a user could type;
4. every candidate of every fact scored in one batched pass; a fact keeps its best candidate when it lowers
   the loss (so a fact's loss never increases over steps), and stops once the answer is its greedy completion.

Success is scored again through ``mechunlearn.evals.cloze_table`` on the text ``prompt + suffix``: exact greedy
completion of the answer. The same budget runs on every model; only the difference to gold counts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from mechunlearn.attacks.base import Attack, AttackConfig, AttackError, working_copy
from mechunlearn.attacks.data import AttackData, FactItem
from mechunlearn.attacks.prompting import answer_scores, build_layout
from mechunlearn.attacks.scoring import facts_table, score_items

__all__ = ["GCGConfig", "GCG", "attacked_items"]


@dataclass
class GCGConfig(AttackConfig):
    """Zou et al.: 20-token suffix, top-k 256, 512 candidates, 500 steps; scaled to the world's tiny models and
    vocabulary (2,048 tokens), so that 15 models fit in a CPU budget. One budget for every model."""

    suffix_tokens: int = 10
    top_k: int = 64
    batch_size: int = 64  # candidates per fact and step
    steps: int = 30
    max_facts: int | None = 24  # forget facts attacked (a seeded sample); None: all
    position: str = "suffix"  # or "prefix" (ethz-spylab's enhanced GCG optimises a prefix)
    init_token: str = "!"
    early_stop: bool = True
    eval_batch_size: int = 1024  # rows per forward pass when scoring candidates

    def validate(self) -> None:
        self.positive(suffix_tokens=self.suffix_tokens, top_k=self.top_k, batch_size=self.batch_size,
                      steps=self.steps, eval_batch_size=self.eval_batch_size)
        if self.max_facts is not None:
            self.positive(max_facts=self.max_facts)
        if self.position not in ("suffix", "prefix"):
            raise AttackError(f"position {self.position!r}: use 'suffix' or 'prefix'")


def attacked_items(data: AttackData, max_facts: int | None, seed: int) -> list[FactItem]:
    """The forget facts a suffix attack targets: all, or a seeded sample of ``max_facts`` (in the data's order)."""
    items = data.forget_items()
    if max_facts is None or max_facts >= len(items):
        return items
    chosen = set(random.Random(seed).sample(range(len(items)), max_facts))
    return [item for index, item in enumerate(items) if index in chosen]


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class GCG(Attack):
    name = "gcg"
    Config = GCGConfig
    description = "greedy coordinate gradient over suffix tokens (Zou et al. 2023), per fact, batched"

    def attack(self, model, data: AttackData, *, base=None, progress: bool = False):
        config = self.config
        working = working_copy(model)
        tokenizer = working.tokenizer
        items = attacked_items(data, config.max_facts, config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        fill = _encode(tokenizer, config.init_token)
        if not fill:
            raise AttackError(f"init_token {config.init_token!r} encodes to no token; choose a visible character")
        device = next(working.parameters()).device
        prompts = [_encode(tokenizer, item.prompt) for item in items]
        answers = [_encode(tokenizer, item.answer) for item in items]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        layout = build_layout(prompts, answers, config.suffix_tokens, config.position, pad, fill[0]).to(device)
        suffixes = torch.full((len(items), config.suffix_tokens), fill[0], dtype=torch.long, device=device)
        forbidden = self._forbidden(tokenizer, answers, working.cfg.d_vocab, device)
        with torch.no_grad():
            losses, hits = answer_scores(working, layout, tokens=layout.with_slot(suffixes))
        history = [losses.cpu().numpy().copy()]
        initial = losses.clone()
        solved_at = torch.where(hits, 0, -1)
        for step in range(1, config.steps + 1):
            active = torch.nonzero(~hits if config.early_stop else torch.ones_like(hits)).flatten()
            if len(active) == 0:
                history.append(losses.cpu().numpy().copy())
                continue
            gradient = self._token_gradient(working, layout.rows(active), suffixes[active])
            gradient = gradient.masked_fill(forbidden[active], float("inf"))
            top = (-gradient).topk(config.top_k, dim=-1).indices  # [fact, slot, top_k]
            candidates = self._sample(suffixes[active], top, generator)  # [fact, batch, slot]
            valid = self._retokenizes(tokenizer, layout, active, candidates, prompts, config.position)
            candidate_losses, candidate_hits = self._score(working, layout, active, candidates)
            candidate_losses[~valid] = float("inf")
            best = candidate_losses.argmin(dim=1)
            rows = torch.arange(len(active), device=device)
            improved = candidate_losses[rows, best] < losses[active]
            chosen = active[improved]
            suffixes[chosen] = candidates[rows[improved], best[improved]]
            losses[chosen] = candidate_losses[rows[improved], best[improved]]
            hits[chosen] = candidate_hits[rows[improved], best[improved]]
            solved_at[(solved_at < 0) & hits] = step
            history.append(losses.cpu().numpy().copy())
        return self._assemble(working, data, items, layout, suffixes, initial, losses, solved_at, history)

    # ---------------------------------------------------------------------------------------------- steps
    @staticmethod
    def _forbidden(tokenizer, answers, vocab: int, device) -> torch.Tensor:
        """Per fact ``[fact, 1, vocab]``: the answer's tokens and every special token are never proposed."""
        forbidden = torch.zeros((len(answers), 1, vocab), dtype=torch.bool, device=device)
        special = [index for index in tokenizer.all_special_ids if index < vocab]
        forbidden[:, :, special] = True
        forbidden[:, :, len(tokenizer):] = True  # padding rows of the embedding matrix are not tokens
        for row, answer in enumerate(answers):
            forbidden[row, :, answer] = True
        return forbidden

    @staticmethod
    def _token_gradient(model, layout, suffixes: torch.Tensor) -> torch.Tensor:
        """d loss / d one-hot suffix, ``[fact, slot, vocab]`` (loss: each fact's mean answer cross-entropy)."""
        weights = model.W_E
        one_hot = torch.nn.functional.one_hot(suffixes, weights.shape[0]).to(weights.dtype).requires_grad_(True)
        embeddings = one_hot @ weights
        losses, _ = answer_scores(model, layout, slot_embeddings=embeddings)
        (gradient,) = torch.autograd.grad(losses.sum(), one_hot)
        return gradient

    def _sample(self, suffixes: torch.Tensor, top: torch.Tensor, generator) -> torch.Tensor:
        """``batch_size`` single-token swaps per fact: a random position, a random top-k token there."""
        facts, slots, top_k = top.shape
        batch = self.config.batch_size
        positions = torch.randint(0, slots, (facts, batch), generator=generator).to(top.device)
        choices = torch.randint(0, top_k, (facts, batch), generator=generator).to(top.device)
        rows = torch.arange(facts, device=top.device)[:, None]
        values = top[rows, positions, choices]
        candidates = suffixes[:, None, :].repeat(1, batch, 1)
        candidates.scatter_(2, positions[..., None], values[..., None])
        return candidates

    @staticmethod
    def _retokenizes(tokenizer, layout, active, candidates, prompts, position: str) -> torch.Tensor:
        """Whether each candidate's context (prompt and suffix, in their order) re-encodes to the same ids."""
        facts, batch, _ = candidates.shape
        contexts, expected = [], []
        listed = candidates.tolist()
        for row, fact in enumerate(active.tolist()):
            for suffix in listed[row]:
                ids = list(prompts[fact]) + suffix if position == "suffix" else suffix + list(prompts[fact])
                expected.append(ids)
                contexts.append(ids)
        texts = tokenizer.batch_decode(contexts)
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        valid = [ids == again for ids, again in zip(expected, encoded)]
        return torch.tensor(valid, device=candidates.device).reshape(facts, batch)

    def _score(self, model, layout, active, candidates) -> tuple[torch.Tensor, torch.Tensor]:
        """Every candidate of every active fact: mean answer cross-entropy and exact-greedy hit, batched."""
        facts, batch, slots = candidates.shape
        repeated = layout.rows(active).repeat(batch)
        tokens = repeated.with_slot(candidates.reshape(facts * batch, slots))
        losses, hits = [], []
        chunk = self.config.eval_batch_size
        with torch.no_grad():
            for start in range(0, tokens.shape[0], chunk):
                part = repeated.rows(torch.arange(start, min(start + chunk, tokens.shape[0]), device=tokens.device))
                loss, hit = answer_scores(model, part, tokens=tokens[start:start + chunk])
                losses.append(loss)
                hits.append(hit)
        return torch.cat(losses).reshape(facts, batch), torch.cat(hits).reshape(facts, batch)

    # --------------------------------------------------------------------------------------------- result
    def _assemble(self, model, data, items, layout, suffixes, initial, losses, solved_at, history):
        from mechunlearn.data import ClozeProbe
        from mechunlearn.evals import cloze_table

        config = self.config
        tokenizer = model.tokenizer
        suffix_texts = tokenizer.batch_decode(suffixes.tolist())
        attacked_prompts = [item.prompt + text if config.position == "suffix" else text + item.prompt
                            for item, text in zip(items, suffix_texts)]
        probes = [ClozeProbe(prompt, item.answer, item.fact_id, item.category, item.domain)
                  for prompt, item in zip(attacked_prompts, items)]
        scored = cloze_table(model, tokenizer, probes)
        before = score_items(model, data, items + data.retain_items(), metrics=(data.metric,))
        after = pd.DataFrame({"fact_id": [item.fact_id for item in items],
                              "correct": scored["correct"].astype(float).to_numpy(),
                              "cloze": scored["correct"].astype(float).to_numpy()})
        retain = before[before["domain"] == "retain"][["fact_id", "correct"]]
        facts = facts_table(before, pd.concat([after, retain], ignore_index=True))
        frame = pd.DataFrame({
            "fact_id": [item.fact_id for item in items], "category": [item.category for item in items],
            "prompt": [item.prompt for item in items], "answer": [item.answer for item in items],
            "suffix": suffix_texts, "suffix_ids": [" ".join(map(str, row)) for row in suffixes.tolist()],
            "target_logprob_before": (-initial).cpu().numpy(), "target_logprob_after": (-losses).cpu().numpy(),
            "success": scored["correct"].to_numpy(), "success_tokens": (solved_at >= 0).cpu().numpy(),
            "solved_at_step": solved_at.cpu().numpy()})
        steps = pd.DataFrame(np.stack(history), columns=[item.fact_id for item in items])
        steps.insert(0, "step", range(len(history)))
        loss_table = steps.melt(id_vars="step", var_name="fact_id", value_name="loss")
        summary = {"headline": f"{config.position} of {config.suffix_tokens} tokens, {config.steps} steps",
                   "headline_rule": "one fixed budget; success = exact greedy completion of the answer after the "
                                    "attacked prompt (text re-tokenized, scored by evals.cloze_table)",
                   "success_rate": float(frame["success"].mean()), "n_facts": len(items),
                   "target_logprob_before": float(frame["target_logprob_before"].mean()),
                   "target_logprob_after": float(frame["target_logprob_after"].mean())}
        return self.result(frame, facts, summary, {"losses": loss_table})

    @staticmethod
    def plot(result):
        import plotly.graph_objects as go

        losses = result.tables["losses"]
        figure = go.Figure()
        for label, rows in (losses.groupby("model") if "model" in losses.columns else [("model", losses)]):
            mean = rows.groupby("step")["loss"].mean()
            figure.add_scatter(x=mean.index, y=mean.values, mode="lines", name=f"{label}: mean answer loss")
        figure.update_layout(title="GCG: answer cross-entropy over steps (mean over facts)", xaxis_title="step",
                             yaxis_title="cross-entropy")
        return figure
