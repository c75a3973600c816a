"""A learned multistep sampler (stepdrop-search's ``learned-3m`` solver), k-diffusion style, torch only.

No σ-list tool runs learned coefficients, so ``policy export --format python`` writes this file with the policy's
``SIGMAS`` and ``COEFFICIENTS`` appended. ``model(x, sigma)`` is a k-diffusion denoiser: it returns x̂0 for states
x = x_t/α_t at noise levels σ = √((1 − ᾱ)/ᾱ) (for an ε model: ``k_diffusion.external.DiscreteEpsDDPMDenoiser(unet,
alphas_cumprod, quantize=False)``). Start from ``noise * (1 + SIGMAS[0] ** 2) ** 0.5``, the exact start of the
measured samples; no x̂0 clamp.

Each step is DPM-Solver++(3M) in λ = −log σ (order 1, then 2, then 3 as history builds up) whose data term is re-weighted
over the earlier x̂0 by that step's row (d1, d2): d1 and d2 of the data term's weight move to the previous and the
one before, and are taken off the newest, so the weights' sum (and consistency) is kept; rows of zeros give
DPM-Solver++(3M) itself. The last step (σ = 0) returns x̂0 + d1 (x̂0_prev − x̂0) + d2 (x̂0_prev2 − x̂0).
"""

import math

import torch


def multistep_weights(h, h_prev, h_prev2):
    """DPM-Solver++(3M)'s weights on (x̂0, x̂0_prev, x̂0_prev2), in x/α, for step size h and the earlier ones (None: none)."""
    phi1 = math.expm1(-h)
    if h_prev is None:
        return [-phi1, 0.0, 0.0]
    if h_prev2 is None:
        c = h / (2 * h_prev)
        return [-phi1 * (1 + c), phi1 * c, 0.0]
    phi2 = phi1 / h + 1
    phi3 = phi2 / h - 0.5
    u, v = h / h_prev, h / h_prev2
    k, m = (h_prev / h) / (h_prev / h + h_prev2 / h), 1 / (h_prev / h + h_prev2 / h)
    return [-(phi1 - phi2 * (1 + k) * u + phi3 * m * u),
            -(phi2 * ((1 + k) * u + k * v) - phi3 * m * (u + v)),
            -(-phi2 * k * v + phi3 * m * v)]


@torch.no_grad()
def sample(model, x, sigmas, coefficients):
    """Denoise x (noise · √(1 + σ₀²)) along ``sigmas`` (descending, a trailing 0) with one row of ``coefficients`` per
    evaluation; returns x̂0. Costs len(sigmas) − 1 model calls."""
    sigmas = [float(s) for s in sigmas]
    s_in = x.new_ones([x.shape[0]])
    history, steps = [], []  # earlier x̂0 and λ-step sizes, newest first
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d1, d2 = (float(c) for c in coefficients[i])
        earlier = history + [denoised] * (2 - len(history))  # weight 0 where no earlier x̂0 exists yet
        if sigmas[i + 1] == 0:
            return denoised + d1 * (earlier[0] - denoised) + d2 * (earlier[1] - denoised)
        h = math.log(sigmas[i] / sigmas[i + 1])
        w0, w1, w2 = multistep_weights(h, *(steps + [None, None])[:2])
        data = w0 + w1 + w2
        w0, w1, w2 = w0 - data * (d1 + d2), w1 + data * d1, w2 + data * d2
        x = (sigmas[i + 1] / sigmas[i]) * x + w0 * denoised + w1 * earlier[0] + w2 * earlier[1]
        history, steps = [denoised] + history[:1], [h] + steps[:1]
    return x
