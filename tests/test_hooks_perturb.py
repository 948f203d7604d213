"""Hook factories move their tensors to the activation's device and dtype (checked on the meta device, which
refuses to mix with CPU tensors exactly as CUDA does), against hand computations on the CPU."""

from __future__ import annotations

import torch

from mechunlearn.hooks import add_delta, scale_activation, steer


def activations(device="cpu", dtype=torch.bfloat16):
    return torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4).div(10).to(device=device, dtype=dtype)


def test_hooks_follow_the_activation_device():
    direction, delta = torch.ones(4), torch.full((2, 5, 4), 0.5)  # fp32 on the CPU, delta longer in pos
    mask = torch.tensor([[True, True, False], [True, False, False]])
    for hook in (steer(direction, 2.0), add_delta(delta, mask), scale_activation(torch.full((4,), 3.0)),
                 scale_activation(0.5)):
        out = hook(activations("meta"), None)
        assert out.device.type == "meta" and out.dtype == torch.bfloat16 and out.shape == (2, 3, 4)


def test_hooks_compute_in_the_activation_dtype():
    direction = torch.linspace(-1, 1, 4)
    delta, mask = torch.full((2, 3, 4), 0.25, requires_grad=True), torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()
    x = activations()
    steered = steer(direction, 2.0)(x, None)
    assert steered.dtype == torch.bfloat16
    assert torch.equal(steered, x + (2.0 * direction.to(torch.bfloat16)))
    added = add_delta(delta, mask)(x, None)
    expected = x.float() + 0.25 * mask[..., None].float()
    assert added.dtype == torch.bfloat16 and torch.equal(added, expected.to(torch.bfloat16))
    added.float().sum().backward()  # the cast is differentiable: an fp32 delta (LAT) still gets its gradient
    assert torch.equal(delta.grad, mask[..., None].float().expand(2, 3, 4))
    scaled = scale_activation(torch.tensor([1.0, 2.0, 3.0, 4.0]))(x, None)
    assert scaled.dtype == torch.bfloat16
    assert torch.equal(scaled, x * torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.bfloat16))
