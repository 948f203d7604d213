"""GPU check: the paths a researcher with a real checkpoint takes, on a Pythia-1B-shaped model in bf16 on CUDA.

    python benchmarks/gpu_check.py            # CUDA: Pythia-1B shape (16 layers, d_model 2048), ~2-4 min
    python benchmarks/gpu_check.py --tiny     # any machine: a tiny shape on the CPU (or --device), seconds

Steps, each a PASS/FAIL line; the exit status is 1 if any check failed, 0 otherwise (and 0 with
"skipped: no CUDA" when there is no GPU and --tiny is not given):

1. A random GPT-NeoX checkpoint with Pythia-1B's config (vocab 50304, rotary_pct 0.25, parallel residual) is
   written in bf16 and loaded with ``mechunlearn.models.load(dtype="bf16")``.
2. Logits of the hooked bf16 model against transformers' bf16 model from the same checkpoint, both measured
   against transformers in fp32: the hooked model's bf16 error must stay within 2x transformers' own.
3. Tokens/s of a forward and of a forward+backward, hooked (accelerated) vs transformers, same batch.
4. NPO and RMU, 20 steps each through ``mechunlearn.unlearn.unlearn`` with the seed's lr 1e-5: the fp32 master
   weights move (nearly) every trained weight, the bf16 model's own weights move, the loss falls, and the model
   stays bf16.
5. The fused diagnostics pass (``mechunlearn.diagnostics.run_analyses``) with three activation analyses on the
   base and the NPO-unlearned model: one forward pass per (model, split), finite results.

Peak GPU memory is printed per step. Nothing here is timed against a threshold.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

PYTHIA_1B = dict(vocab_size=50304, hidden_size=2048, num_hidden_layers=16, num_attention_heads=8,
                 intermediate_size=8192, rotary_pct=0.25, max_position_embeddings=2048, use_parallel_residual=True)
TINY = dict(vocab_size=512, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
            rotary_pct=0.25, max_position_embeddings=256, use_parallel_residual=True)
WORDS = ("the a of in at to wizard wand silver tower river mill bread market horse grey night farmer wheat old "
         "young keeps sells grows rides trained glows near every day mage city north south king queen").split()
ANALYSES = ["activation_comparison", "activation_covariance", "row_space_projection"]


class Checks:
    def __init__(self):
        self.failed: list[str] = []

    def __call__(self, name: str, ok: bool, detail: str) -> None:
        print(f"  {'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
        if not ok:
            self.failed.append(name)


def texts(count: int, words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(count)]


def word_tokenizer(directory: Path):
    """A word-level tokenizer over WORDS (ids well inside any vocabulary), saved and reloaded as TL needs."""
    from tokenizers import Tokenizer, models as tokenizer_models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<|padding|>": 1, **{word: index + 2 for index, word in enumerate(WORDS)}}
    tokenizer = Tokenizer(tokenizer_models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>", pad_token="<|padding|>").save_pretrained(directory)
    return AutoTokenizer.from_pretrained(str(directory))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: torch.device) -> str:
    if device.type == "cuda":
        return f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    return f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process)"


def tokens_per_second(step, tokens: int, device: torch.device, repeats: int) -> float:
    step()  # warm-up (kernels, allocator)
    synchronize(device)
    began = time.perf_counter()
    for _ in range(repeats):
        step()
    synchronize(device)
    return tokens * repeats / (time.perf_counter() - began)


def build_checkpoint(directory: Path, shape: dict, device: torch.device) -> None:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(**shape, tie_word_embeddings=False)
    with torch.device(device):  # initialise on the GPU: a 1B-parameter CPU init alone takes a while
        model = GPTNeoXForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory)  # bf16 safetensors, as Pythia checkpoints on the Hub are fp16/bf16
    del model


def check_logits_and_speed(checks: Checks, directory: Path, hooked, device: torch.device, batch: int, seq: int,
                           repeats: int) -> None:
    from transformers import GPTNeoXForCausalLM

    from mechunlearn.batching import TokenBatch, logits_of, mean_nll

    hf_fp32 = GPTNeoXForCausalLM.from_pretrained(directory, dtype=torch.float32).to(device).eval()
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, hooked.cfg.d_vocab, (batch, seq), generator=generator).to(device)
    with torch.no_grad():
        reference = hf_fp32(tokens).logits.float()
    del hf_fp32
    hf = GPTNeoXForCausalLM.from_pretrained(directory, dtype=torch.bfloat16).to(device).eval()
    with torch.no_grad():
        hf_logits, hooked_logits = hf(tokens).logits.float(), hooked(tokens).float()
    hf_error = (hf_logits - reference).abs().max().item()
    hooked_error = (hooked_logits - reference).abs().max().item()
    versus_hf = (hooked_logits - hf_logits).abs().max().item()
    checks("logits bf16", hooked_error <= 2 * hf_error + 1e-3,
           f"max |hooked bf16 - HF fp32| {hooked_error:.4f} vs |HF bf16 - HF fp32| {hf_error:.4f} "
           f"(|hooked - HF| in bf16 {versus_hf:.4f}, logit scale {reference.abs().max().item():.2f})")
    mask = torch.ones_like(tokens, dtype=torch.bool)
    token_batch = TokenBatch(tokens, mask)

    def forward(model):
        def step():
            with torch.no_grad():
                logits_of(model(tokens))
        return step

    def train_step(model):
        def step():
            mean_nll(logits_of(model(tokens)), token_batch).backward()
            model.zero_grad(set_to_none=True)
        return step

    count = batch * seq
    rates = {}
    for name, model in (("HF", hf), ("hooked", hooked)):
        rates[name] = (tokens_per_second(forward(model), count, device, repeats),
                       tokens_per_second(train_step(model), count, device, repeats))
    print(f"  tokens/s forward: HF {rates['HF'][0]:,.0f}, hooked {rates['hooked'][0]:,.0f} "
          f"(hooked/HF {rates['hooked'][0] / rates['HF'][0]:.2f}); forward+backward: HF {rates['HF'][1]:,.0f}, "
          f"hooked {rates['hooked'][1]:,.0f} (hooked/HF {rates['hooked'][1] / rates['HF'][1]:.2f}); "
          f"batch {batch}x{seq}", flush=True)
    del hf
    hooked.zero_grad(set_to_none=True)


def check_unlearning(checks: Checks, name: str, model, forget, retain, batch: int, seq: int,
                     overrides: dict) -> None:
    from mechunlearn.methods import create
    from mechunlearn.models import FIXED_PARAMETERS
    from mechunlearn.training import select_parameters
    from mechunlearn.unlearn import unlearn

    method = create(name, lr=1e-5, max_steps=20, epochs=100, batch_size=batch, max_length=seq, **overrides)
    start = {key: parameter.detach().clone() for key, parameter in model.named_parameters()}
    began = time.perf_counter()
    result = unlearn(model, method, forget, retain, progress=False)
    seconds = time.perf_counter() - began
    history = [record["loss"] for record in result.training.history]
    precision = result.training.precision
    pattern = method.trainable_pattern(model)
    trained = dict(select_parameters(model, pattern, exclude=FIXED_PARAMETERS))
    changed = sum(int((parameter.detach() != start[key]).sum()) for key, parameter in trained.items())
    # Rows of W_E for tokens the texts never use get no gradient: they cannot move, whatever the precision.
    used = {token for text in forget + retain for token in model.tokenizer(text)["input_ids"]}
    frozen_rows = (model.cfg.d_vocab - len(used)) * model.cfg.d_model if "embed.W_E" in trained else 0
    movable = 1 - frozen_rows / sum(parameter.numel() for parameter in trained.values())
    print(f"  {name}: {result.training.steps} steps in {seconds:.1f} s, loss {history[0]:.4f} -> {history[-1]:.4f}, "
          f"trainable {pattern or 'all'}", flush=True)
    checks(f"{name} stays bf16", next(model.parameters()).dtype == torch.bfloat16 and
           precision["master_dtype"] == "float32", f"parameters {precision['parameter_dtypes']}, masters "
           f"{precision['master_dtype']}")
    checks(f"{name} masters move", precision["moved_fraction_master"] > 0.95 * movable and changed > 0,
           f"{precision['moved_fraction_master']:.1%} of the trained weights moved in the fp32 masters "
           f"({movable:.1%} can: embeddings of unused tokens get no gradient), "
           f"{precision['moved_fraction_model']:.1%} in the bf16 model itself ({changed:,} weights)")
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    checks(f"{name} loss falls", last < first and all(math.isfinite(value) for value in history),
           f"mean of the first 5 steps {first:.4f}, of the last 5 {last:.4f}")


def check_diagnostics(checks: Checks, models: dict, forget, retain, batch: int, seq: int) -> None:
    from mechunlearn.diagnostics import RunStats, build_analyses, run_analyses

    stats = RunStats()
    began = time.perf_counter()
    results = run_analyses(build_analyses(ANALYSES), models, {"forget": forget, "retain": retain},
                           batch_size=batch, max_length=seq, max_samples=len(forget), progress=False, stats=stats)
    seconds = time.perf_counter() - began
    expected = math.ceil(len(forget) / batch)
    one_pass = all(count == expected for count in stats.forward_passes.values()) and \
        len(stats.forward_passes) == len(models) * 2
    finite = all(result.frame.select_dtypes("number").notna().all().all() for result in results.values())
    checks("fused diagnostics", set(results) == set(ANALYSES) and one_pass and finite,
           f"{', '.join(sorted(results))} in {seconds:.1f} s; forward passes {dict(stats.forward_passes)} "
           f"(expected {expected} each); numbers finite: {finite}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model, runnable on the CPU (for tests)")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    parser.add_argument("--workdir", default=None, help="where the checkpoint is written (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.device is None and not args.tiny and not torch.cuda.is_available():
        print("skipped: no CUDA (run with --tiny to check the same paths on a tiny model on the CPU)")
        return 0
    device = torch.device(args.device or ("cuda" if not args.tiny else "cpu"))
    shape = TINY if args.tiny else PYTHIA_1B
    batch, seq = (4, 32) if args.tiny else (8, 512)
    repeats = 2 if args.tiny else 5
    if device.type == "cpu":
        torch.set_num_threads(1)  # a tiny model gains nothing from threads, and a busy machine loses a lot
    from mechunlearn import models

    checks = Checks()
    started = time.perf_counter()
    print(f"gpu_check: {'tiny' if args.tiny else 'Pythia-1B'} shape {shape}, bf16 on {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""), flush=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        directory = Path(workdir) / "checkpoint"
        began = time.perf_counter()
        build_checkpoint(directory, shape, device)
        word_tokenizer(directory)
        reset_peak(device)
        model = models.load(directory, device=device, dtype="bf16")
        parameters = sum(parameter.numel() for parameter in model.parameters())
        checks("load", model.cfg.dtype == torch.bfloat16 and next(model.parameters()).device.type == device.type,
               f"{parameters / 1e6:,.1f} M parameters, written and loaded in {time.perf_counter() - began:.1f} s; "
               f"{peak(device)}")
        reset_peak(device)
        check_logits_and_speed(checks, directory, model, device, batch, seq, repeats)
        print(f"  {peak(device)}", flush=True)
        forget, retain = texts(16, seq, seed=1), texts(16, seq, seed=2)
        base = copy.deepcopy(model)  # the model before unlearning, for RMU's start and the diagnostics
        reset_peak(device)
        check_unlearning(checks, "npo", model, forget, retain, batch, seq, {})
        print(f"  {peak(device)} (NPO: model, frozen reference, fp32 masters, Adam states, activations)",
              flush=True)
        rmu_model = copy.deepcopy(base)
        reset_peak(device)
        check_unlearning(checks, "rmu", rmu_model, forget, retain, batch, seq, {"steering_coeff": 20.0})
        print(f"  {peak(device)} (RMU)", flush=True)
        del rmu_model
        reset_peak(device)
        check_diagnostics(checks, {"base": base, "npo": model}, forget, retain, batch, seq)
        print(f"  {peak(device)}", flush=True)
    total = time.perf_counter() - started
    if checks.failed:
        print(f"gpu_check: FAILED {', '.join(checks.failed)} ({total:.0f} s)")
        return 1
    print(f"gpu_check: all checks passed in {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
