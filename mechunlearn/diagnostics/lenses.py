"""The lenses: read a residual stream of any layer as next-token logits.

* ``LogitLens``: the model's frozen ``ln_final`` + ``unembed`` applied to a residual stream. Zero training.
* ``TunedLens``: tuned-lens' formulation (Belrose et al. 2023): a per-layer affine translator in residual form
  ``h + A_l h + b_l`` (zero-initialised, so an untrained tuned lens IS the logit lens) followed by the frozen
  ``ln_final`` + ``unembed``; the last layer has no translator. Training and its cache: ``lens_training``.

Layers use Hugging Face's ``hidden_states`` numbering (``mechunlearn.diagnostics.layers``): 0 = embeddings,
``l + 1`` = ``blocks.{l}.hook_resid_post``. The last layer N read through either lens is exactly the model's own
output (``ln_final`` + ``unembed`` of the last residual stream IS the forward pass).

Difference from the seed: the seed's tuned lens is an ``nn.Linear`` straight from hidden state to vocabulary;
ours keeps the model's own read-out and learns only a d_model x d_model translator per layer (tuned-lens' design:
far fewer parameters, and an identity at initialisation).
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor, nn

__all__ = ["LogitLens", "TunedLens"]


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
