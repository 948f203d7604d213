"""mechunlearn: did an unlearned language model forget, or does it only hide?

Import what you need from the submodules (``mechunlearn.models``, ``mechunlearn.world``,
``mechunlearn.methods``, ``mechunlearn.diagnostics``...). Importing the package has no side effects.
"""

__version__ = "0.1.0"
