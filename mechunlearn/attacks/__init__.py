"""Attacks: did an unlearned model forget, or does it only hide? Each attack runs with one budget on every
model, the gold standard included, and returns a typed result like an analysis' (``.frame``, ``.summary``,
``.figure()``, ``.save(dir)``, ``AttackResult.load(dir)``).

>>> from mechunlearn.attacks import AttackData, create_attack
>>> data = AttackData.from_world(world)                                       # doctest: +SKIP
>>> result = create_attack("relearn", lrs="1e-3").run(unlearned, data, reference={"gold": gold, "base": base})
>>> result.summary["vs_gold"]["unique"]                                       # doctest: +SKIP

Built-in attacks (``available_attacks()``): ``relearn``, ``retain_finetune``, ``gcg``, ``soft_prompt``,
``quantize``, ``direction_ablation``; definitions, citations and where we differ from the papers' code are in
docs/attacks.md. ``run_attacks`` + ``robustness_table`` build the study's robustness table.
"""

from mechunlearn.attacks.base import (Attack, AttackConfig, AttackError, AttackResult, References, check_compatible,
                                      hook_census, working_copy)
from mechunlearn.attacks.data import AttackData, FactItem, assert_no_leak, split_folds
from mechunlearn.attacks.registry import (BUILTIN_ATTACKS, available_attacks, create_attack, get_attack,
                                          register_attack)
from mechunlearn.attacks.table import robustness_table, run_attacks, write_robustness_table

__all__ = ["Attack", "AttackConfig", "AttackError", "AttackResult", "References", "check_compatible", "hook_census",
           "working_copy", "AttackData", "FactItem", "assert_no_leak", "split_folds", "BUILTIN_ATTACKS",
           "available_attacks", "create_attack", "get_attack", "register_attack", "robustness_table", "run_attacks",
           "write_robustness_table"]
