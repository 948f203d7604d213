"""Soft-prompt (embedding-space) attack (Schwinn et al. 2024, ``embedding_attack_unlearning.py``).

Continuous embeddings of ``n_tokens`` positions after the prompt (initialised to the embedding of
``init_token``, their "! ! ! ..." control prompt) are optimised by signed gradient descent at ``hook_embed``:
``e <- e - step_size * sign(grad)`` on the cross-entropy of the true answer. Two variants, as theirs:

* ``individual``: one set of embeddings per fact (all facts optimised in one batch, each with its own);
  success = the answer is the exact greedy completion (teacher-forced argmax of every answer token, their
  ``num_affirmative_response``) at any iteration; also read out through the logit lens at every layer
  (``ln_final`` + ``unembed`` of each ``hook_resid_post``; their ``il_gen="all"``): success at any layer.
* ``universal``: one set shared by all facts of one half, optimised on that half and measured on the other
  (then the halves swap, so every fact is measured once while held out).

Step size: theirs is 0.001 for Llama-2-7b, whose token embeddings have a standard deviation near 0.016; ours is
``step_scale`` (default 1/16) times the attacked model's own ``W_E`` standard deviation, the same relative step
on any model. Such attacks can elicit strings a model never saw (Chen et al. 2025): only the difference to the
gold model, attacked with the same budget, counts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from mechunlearn.attacks.base import Attack, AttackConfig, AttackError, working_copy
from mechunlearn.attacks.data import AttackData
from mechunlearn.attacks.gcg import attacked_items
from mechunlearn.attacks.prompting import answer_scores, build_layout, lens_answer_hits
from mechunlearn.attacks.scoring import facts_table, score_items

__all__ = ["SoftPromptConfig", "SoftPrompt"]


@dataclass
class SoftPromptConfig(AttackConfig):
    """Schwinn et al.: 20 tokens, 100 iterations, step 0.001 (relative: ~1/16 of the embeddings' std)."""

    n_tokens: int = 20
    iterations: int = 100
    step_scale: float = 1 / 16
    universal_iterations: int = 100
    max_facts: int | None = 24  # forget facts attacked (the same seeded sample as GCG); None: all
    position: str = "suffix"
    init_token: str = "!"
    universal: bool = True

    def validate(self) -> None:
        self.positive(n_tokens=self.n_tokens, iterations=self.iterations, step_scale=self.step_scale)
        if self.universal:
            self.positive(universal_iterations=self.universal_iterations)
        if self.max_facts is not None:
            self.positive(max_facts=self.max_facts)
        if self.position not in ("suffix", "prefix"):
            raise AttackError(f"position {self.position!r}: use 'suffix' or 'prefix'")


class SoftPrompt(Attack):
    name = "soft_prompt"
    Config = SoftPromptConfig
    description = "signed-gradient soft-prompt embeddings at hook_embed (Schwinn et al. 2024), per fact and universal"

    def attack(self, model, data: AttackData, *, base=None, progress: bool = False):
        config = self.config
        working = working_copy(model)
        tokenizer = working.tokenizer
        items = attacked_items(data, config.max_facts, config.seed)
        fill = tokenizer(config.init_token, add_special_tokens=False)["input_ids"]
        if not fill:
            raise AttackError(f"init_token {config.init_token!r} encodes to no token; choose a visible character")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        prompts = [tokenizer(item.prompt, add_special_tokens=False)["input_ids"] for item in items]
        answers = [tokenizer(item.answer, add_special_tokens=False)["input_ids"] for item in items]
        device = next(working.parameters()).device
        layout = build_layout(prompts, answers, config.n_tokens, config.position, pad, fill[0]).to(device)
        start = working.W_E[fill[0]].detach()
        step_size = config.step_scale * float(working.W_E.detach().float().std())

        # individual: one embedding set per fact, all facts in one batch
        embeddings = start.expand(len(items), config.n_tokens, -1).clone()
        with torch.no_grad():
            initial_loss, initial_hits = answer_scores(working, layout, slot_embeddings=embeddings)
        ever = initial_hits.clone()
        first_hit = torch.where(initial_hits, 0, -1)
        losses = []
        for iteration in range(1, config.iterations + 1):
            loss, hits = self._signed_step(working, layout, embeddings, step_size)
            losses.append(loss.detach().cpu().numpy())
            first_hit[(first_hit < 0) & hits] = iteration - 1  # hits of the embeddings before this update
            ever |= hits
        with torch.no_grad():
            final_loss, final_hits = answer_scores(working, layout, slot_embeddings=embeddings)
        ever |= final_hits
        first_hit[(first_hit < 0) & final_hits] = config.iterations
        lens_hits, lens_logprobs = lens_answer_hits(working, layout, slot_embeddings=embeddings)

        frame = pd.DataFrame({"fact_id": [item.fact_id for item in items],
                              "category": [item.category for item in items], "variant": "individual",
                              "loss_before": initial_loss.cpu().numpy(), "loss_after": final_loss.cpu().numpy(),
                              "success_final": final_hits.cpu().numpy(), "success": ever.cpu().numpy(),
                              "first_success_iteration": first_hit.cpu().numpy(),
                              "success_any_layer": (lens_hits.any(0) | ever).cpu().numpy()})
        lens = pd.DataFrame([{"fact_id": item.fact_id, "category": item.category, "layer": layer,
                              "success": bool(lens_hits[layer, row]), "answer_logprob": float(lens_logprobs[layer, row])}
                             for layer in range(lens_hits.shape[0]) for row, item in enumerate(items)])
        tables = {"lens": lens, "losses": self._loss_table(losses, items)}
        if config.universal:
            frame = pd.concat([frame, self._universal(working, layout, items, start, step_size)], ignore_index=True)

        before = score_items(working, data, items + data.retain_items(), metrics=(data.metric,))
        individual = frame[frame["variant"] == "individual"]
        after = pd.DataFrame({"fact_id": individual["fact_id"], "correct": individual["success"].astype(float)})
        retain = before[before["domain"] == "retain"][["fact_id", "correct"]]
        facts = facts_table(before, pd.concat([after, retain], ignore_index=True))
        facts["after_any_layer"] = facts["fact_id"].map(individual.set_index("fact_id")["success_any_layer"]).astype(float)
        summary = {"headline": f"individual, {config.n_tokens} embeddings, {config.iterations} iterations",
                   "headline_rule": "one fixed budget; success = exact greedy answer at any iteration (final layer)",
                   "step_size": step_size,
                   "success_rate": {variant: float(rows["success"].mean()) for variant, rows in frame.groupby("variant")},
                   "success_rate_any_layer": float(individual["success_any_layer"].mean()),
                   "lens_success_by_layer": lens.groupby("layer")["success"].mean().to_dict()}
        return self.result(frame, facts, summary, tables)

    @staticmethod
    def _signed_step(model, layout, embeddings: torch.Tensor, step_size: float):
        """One signed-gradient step on every fact's ``embeddings`` (in place); returns the losses and hits of the
        embeddings before the step (each fact's loss depends on its own embeddings only, so one summed loss
        gives every fact its own gradient)."""
        embeddings.requires_grad_(True)
        loss, hits = answer_scores(model, layout, slot_embeddings=embeddings)
        (gradient,) = torch.autograd.grad(loss.sum(), embeddings)
        with torch.no_grad():
            embeddings -= step_size * gradient.sign()
        embeddings.requires_grad_(False)
        return loss.detach(), hits

    def _universal(self, model, layout, items, start, step_size) -> pd.DataFrame:
        """Two halves (seeded): optimise one shared embedding set on a half, measure the other half."""
        config = self.config
        order = list(range(len(items)))
        random.Random(config.seed).shuffle(order)
        halves = [sorted(order[: len(order) // 2]), sorted(order[len(order) // 2:])]
        rows = []
        device = layout.tokens.device
        for train_half, test_half in (halves, halves[::-1]):
            if not train_half or not test_half:
                continue
            train_index = torch.tensor(train_half, device=device)
            test_index = torch.tensor(test_half, device=device)
            shared = start.expand(1, config.n_tokens, -1).clone()
            for _ in range(config.universal_iterations):
                shared.requires_grad_(True)
                loss, _ = answer_scores(model, layout.rows(train_index), slot_embeddings=shared.expand(
                    len(train_half), -1, -1))
                (gradient,) = torch.autograd.grad(loss.mean(), shared)
                with torch.no_grad():
                    shared -= step_size * gradient.sign()
                shared.requires_grad_(False)
            with torch.no_grad():
                test_loss, test_hits = answer_scores(model, layout.rows(test_index),
                                                     slot_embeddings=shared.expand(len(test_half), -1, -1))
            for position, index in enumerate(test_half):
                rows.append({"fact_id": items[index].fact_id, "category": items[index].category,
                             "variant": "universal_heldout", "loss_after": float(test_loss[position]),
                             "success_final": bool(test_hits[position]), "success": bool(test_hits[position])})
        return pd.DataFrame(rows)

    @staticmethod
    def _loss_table(losses, items) -> pd.DataFrame:
        if not losses:
            return pd.DataFrame(columns=["iteration", "fact_id", "loss"])
        steps = pd.DataFrame(np.stack(losses), columns=[item.fact_id for item in items])
        steps.insert(0, "iteration", range(len(losses)))
        return steps.melt(id_vars="iteration", var_name="fact_id", value_name="loss")

    @staticmethod
    def plot(result):
        import plotly.graph_objects as go

        lens = result.tables["lens"]
        figure = go.Figure()
        for label, rows in (lens.groupby("model") if "model" in lens.columns else [("model", lens)]):
            rate = rows.groupby("layer")["success"].mean()
            figure.add_scatter(x=rate.index, y=rate.values, mode="lines+markers", name=f"{label}: logit lens")
        figure.update_layout(title="Soft prompt: answer recovered through the logit lens, per layer",
                             xaxis_title="layer (output of block)", yaxis_title="success rate", yaxis_range=[0, 1])
        return figure
