"""One unlearning step of NPO and RMU on the hooked model vs the same loss on transformers' GPTNeoXForCausalLM.

Same weights, same forget/retain batches, AdamW step included. The hooked side runs the method classes
through hook points (RMU reads blocks.{l}.hook_resid_post); the HF side computes the same formulas from
logits / output_hidden_states. Times are interleaved medians printed side by side with their ratio (goal
<= 1.15). Never asserts on time.

    python benchmarks/bench_unlearn_step.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F


def build(d_model=128, layers=4, vocab=2048, batch=16, length=96, seed=0):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from mechunlearn import models
    from mechunlearn.batching import TokenBatch

    torch.manual_seed(seed)
    config = GPTNeoXConfig(vocab_size=vocab, hidden_size=d_model, num_hidden_layers=layers, num_attention_heads=4,
                           intermediate_size=4 * d_model, max_position_embeddings=length, rotary_pct=0.25,
                           attn_implementation="sdpa")
    hf = GPTNeoXForCausalLM(config)
    hooked = models.from_hf(hf, device="cpu")
    try:
        from mechunlearn.fast import accelerate

        accelerate(hooked)
        accelerated = True
    except ImportError:
        accelerated = False

    def batch_of(offset):
        tokens = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(offset))
        return TokenBatch(tokens, torch.ones_like(tokens, dtype=torch.bool))

    return hf, hooked, batch_of(1), batch_of(2), accelerated


def hf_npo_loss(model, reference, forget, retain, beta=0.1):
    from mechunlearn.batching import mean_nll, sequence_logprobs

    policy, _ = sequence_logprobs(model(forget.tokens).logits, forget)
    with torch.no_grad():
        ref, _ = sequence_logprobs(reference(forget.tokens).logits, forget)
    npo = -(2.0 / beta) * F.logsigmoid(-beta * (policy - ref)).mean()
    return npo + mean_nll(model(retain.tokens).logits, retain)


def hf_rmu_loss(model, reference, forget, retain, layers, targets, alpha=100.0, coeff=20.0):
    forget_hidden = model.gpt_neox(forget.tokens, output_hidden_states=True).hidden_states
    retain_hidden = model.gpt_neox(retain.tokens, output_hidden_states=True).hidden_states
    with torch.no_grad():
        cached = reference.gpt_neox(retain.tokens, output_hidden_states=True).hidden_states
    loss = 0.0
    for layer in layers:
        loss = loss + F.mse_loss(forget_hidden[layer + 1], coeff * targets[layer].expand_as(forget_hidden[layer + 1]))
        loss = loss + alpha * F.mse_loss(retain_hidden[layer + 1], cached[layer + 1])
    return loss


def timed(step, repeats):
    step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 8
    from mechunlearn.methods import create
    from mechunlearn.methods.base import UnlearnContext
    from mechunlearn.unlearn import frozen_copy

    hf, hooked, forget, retain, accelerated = build()
    hf_reference = copy.deepcopy(hf).eval()
    for parameter in hf_reference.parameters():
        parameter.requires_grad_(False)
    context = UnlearnContext(tokenizer=None, reference=frozen_copy(hooked))
    npo = create("npo")
    npo.setup(hooked, context)
    rmu = create("rmu", trainable=None)
    rmu.validate(hooked)
    rmu.setup(hooked, context)
    layers = list(rmu.layers)
    targets = {layer: rmu.targets[layer] for layer in layers}
    hf_optimizer = torch.optim.AdamW([p for p in hf.parameters()], lr=1e-5)
    hooked_parameters = [p for n, p in hooked.named_parameters() if n != "unembed.b_U"]
    hooked_optimizer = torch.optim.AdamW(hooked_parameters, lr=1e-5)

    def step(loss_fn, optimizer):
        def run():
            loss = loss_fn()
            loss = loss[0] if isinstance(loss, tuple) else loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return run

    cases = {
        "npo": (step(lambda: npo.loss(hooked, forget, retain), hooked_optimizer),
                step(lambda: hf_npo_loss(hf, hf_reference, forget, retain), hf_optimizer)),
        "rmu": (step(lambda: rmu.loss(hooked, forget, retain), hooked_optimizer),
                step(lambda: hf_rmu_loss(hf, hf_reference, forget, retain, layers, targets), hf_optimizer)),
    }
    print(f"one unlearning step, 4 layers d_model 128, batch 16x96, threads {torch.get_num_threads()}, "
          f"hooked model accelerated: {accelerated}")
    for name, (hooked_step, hf_step) in cases.items():
        hooked_step(), hf_step()  # warm-up
        hooked_times, hf_times = [], []
        for _ in range(repeats):
            for fn, sink in ((hooked_step, hooked_times), (hf_step, hf_times)):
                began = time.perf_counter()
                fn()
                sink.append(time.perf_counter() - began)
        hooked_median, hf_median = statistics.median(hooked_times), statistics.median(hf_times)
        print(f"  {name:4s} hooked {hooked_median * 1000:7.1f} ms | HF {hf_median * 1000:7.1f} ms | "
              f"ratio hooked/HF {hooked_median / hf_median:5.2f} (goal <= 1.15)")


if __name__ == "__main__":
    main()
