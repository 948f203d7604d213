"""The sections of a study file, one dataclass each: their fields are the keys a section allows, their types
the types it accepts, their defaults what ``study.resolved.json`` fills in (docs/study.md lists them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["StudySection", "DataSection", "ModelsSection", "MethodSpec", "EvalsSection", "AnalysesSection",
           "AttacksScope", "ReportSection", "RaySection", "SubmititSection", "TrackingSection", "EXECUTORS",
           "DTYPES", "DEFAULT_ANALYSES"]

EXECUTORS = ("serial", "ray", "submitit")
DTYPES = ("auto", "fp32", "bf16", "fp16")
# The demo's diagnostics: cheap enough for a laptop; every registered analysis may be named.
DEFAULT_ANALYSES = ["weight_comparison", "mlp_attn_analysis", "mlp_nullspace", "activation_comparison",
                    "activation_covariance", "row_space_projection", "linear_probes", "logit_lens"]


@dataclass
class StudySection:
    name: str = "study"
    out: str = ""                    # "" -> outputs/<name>
    executor: str = "serial"         # serial | ray | submitit
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    dtype: str = "auto"              # auto | fp32 | bf16 | fp16
    threads: int = 0                 # torch threads per step; 0 = torch's default
    cache: str = ""                  # worlds and world models; "" = mechunlearn's cache (MECHUNLEARN_CACHE)


@dataclass
class DataSection:
    world: str = ""                  # a world preset or directory; "" = "default" unless forget files are given
    world_seed: int = 0              # seed of a world preset
    forget_sources: list[str] = field(default_factory=list)   # world only; [] = the world's default target
    forget: str = ""                 # the user's files instead of a world (.txt / .jsonl)
    retain: str = ""
    mcq_forget: str = ""             # WMDP / MMLU-style .jsonl
    mcq_general: str = ""


@dataclass
class ModelsSection:
    base: str = "world"              # "world" (pretrained on the world) or a checkpoint directory / HF-cache name
    gold: str = "world"              # "world", a checkpoint, or "none"
    native: bool = False             # the natively unlearnable model (world only)
    gold_sources: list[str] = field(default_factory=list)    # per-source gold standards (world only)


@dataclass
class MethodSpec:
    """``[methods.<name>]``: the preset, optional own seeds, and hyper-parameters (a list is a grid axis)."""

    name: str
    preset: str = "auto"             # auto (world if models.base = "world", else none) | world | none
    seeds: list[int] | None = None   # default: study.seeds
    hyper: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalsSection:
    max_texts: int = 0               # cap on texts per NLL set (evenly spaced); 0 = all
    batch_size: int = 32


@dataclass
class AnalysesSection:
    names: list[str] = field(default_factory=lambda: list(DEFAULT_ANALYSES))
    max_samples: int = 200           # texts per split
    gold: bool = True                # diagnose base -> gold too
    methods: list[str] = field(default_factory=list)   # [] = every method of the study
    seeds: list[int] = field(default_factory=list)     # [] = every seed
    batch_size: int = 16
    max_length: int = 128
    options: dict[str, Any] = field(default_factory=dict)  # {analysis: {option: value}} for diagnose(options=)


@dataclass
class AttacksScope:
    """The plain keys of ``[attacks]`` (next to its ``[attacks.<name>]`` tables): which unlearned models are
    attacked. Base and gold always are (gold is every attack's reference); so are the native model's ids."""

    methods: list[str] = field(default_factory=list)   # [] = every method of the study
    seeds: list[int] = field(default_factory=list)     # [] = every seed


@dataclass
class ReportSection:
    title: str = "mechunlearn study"


@dataclass
class RaySection:
    address: str = ""                # "" = ray.init() on this machine; "ray://host:10001" or "auto" for a cluster
    num_cpus: float = 1.0            # per step
    num_gpus: float = 0.0            # per step that loads a model


@dataclass
class SubmititSection:
    folder: str = ""                 # logs and pickles; "" = OUT/.submitit
    cluster: str = ""                # "" = slurm when available, else local; or slurm | local | debug
    partition: str = ""
    timeout_min: int = 60
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    mem_gb: float = 0.0              # 0 = the cluster's default
    slurm_parameters: dict[str, Any] = field(default_factory=dict)  # extra sbatch options


@dataclass
class TrackingSection:
    """Optional logging of each evaluated model's metrics to the user's experiment tracker (mechunlearn.tracking)."""

    backend: str = "none"            # none | mlflow | wandb
    experiment: str = ""             # MLflow experiment / W&B project; "" = the study's name
    run_prefix: str = ""             # prepended to each run's name (the model id)
