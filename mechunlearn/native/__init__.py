"""The natively unlearnable model (seed 002; Ghosal, Maini, Raghunathan 2026, after MemSinks): per-source sink
neurons in every MLP, pretrained on the embedded world, sources switched off without retraining.

* ``mechunlearn.hooks.sink_mask``: the masks (deterministic from a hash, nothing stored) and the plain hook;
* :mod:`mechunlearn.native.train`: the ``native`` reference kind (``mechunlearn pretrain --which native``);
* :mod:`mechunlearn.native.switching`: ``switch(model_or_dir, off=[...], route=...)``, ``bake``, ``export``;
* :mod:`mechunlearn.native.analysis`: attribution, switch-off vs gold, the random-sink control, entity requests;
* :mod:`mechunlearn.native.report`: the tables of docs/native.md (``python -m mechunlearn.native.report``).

See docs/native.md.
"""

from mechunlearn.hooks.sink_mask import SinkConfig, SinkMaskError
from mechunlearn.native.switching import (ROUTES, NativeInfo, bake, export, native_info, read_native, switch,
                                          unswitch)
from mechunlearn.native.train import NATIVE, native_kind

__all__ = ["NATIVE", "native_kind", "SinkConfig", "SinkMaskError", "ROUTES", "NativeInfo", "switch", "unswitch",
           "bake", "export", "read_native", "native_info"]
