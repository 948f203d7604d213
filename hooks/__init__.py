"""Hook functions for TransformerLens models: capture, perturb, steer, mask.

Every hook is a plain ``fn(activation, hook)`` (TransformerLens' convention: return ``None`` to observe, a tensor
to replace); extra arguments are bound with ``functools.partial`` or a small factory. Use them with
``model.hooks(fwd_hooks=[(name, fn)])`` so they are removed on exit, even after an exception.
"""

from mechunlearn.hooks.capture import ActivationStore, capture, capturing, forward_capturing
from mechunlearn.hooks.names import (attn_out, mlp_in, mlp_out, mlp_post, require_hook_names, resid_post,
                                     resid_pre)
from mechunlearn.hooks.perturb import add_delta, adding, scale_activation, steer

__all__ = [
    "ActivationStore", "capture", "capturing", "forward_capturing", "add_delta", "adding", "scale_activation",
    "steer",
    "resid_pre", "resid_post", "mlp_post", "mlp_in", "mlp_out", "attn_out", "require_hook_names",
]
