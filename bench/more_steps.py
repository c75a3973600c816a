"""Why can 50 evaluations score worse than 5? Each row's judge FID taken apart, and the images behind it.

On the converged model, DPM-Solver++(2M) at 50 NFE scores a worse judge FID than the good 5–10 NFE rows (docs/results.md).
Before a README says "5 NFE beats 50", this looks at what differs, row by row on the same x_T (evaluation seeds):

- the judge FID split into its mean term |μ − μ_ref|² and its covariance term (the rest);
- precision and recall on the judge's features (torch-fidelity, k = 3, an equally large real subset): fewer realistic
  samples, or less of the data covered;
- the class mix: total-variation distance between the judge classifier's top-1 classes of the samples and of the real
  test images (the classifier on both sides, so its own errors cancel);
- the images: the radially averaged power spectrum in three frequency bands against the real test images' (log₂ ratio:
  +1 is twice the real power), and the share of background pixels (below −0.9).

    python bench/more_steps.py --nfe 10 25 50 100 200 --policy bench/results/reproduced/learned-nfe5/best.json \\
        --samples 1000 --seeds 3

Every number is measured on the images as the metric sees them (clamped to [−1, 1], 8-bit).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from stepdrop_search.data import load_dataset
from stepdrop_search.devices import resolve_device
from stepdrop_search.diffusion.solvers import fixed_solvers, spec_for_nfe
from stepdrop_search.generation import generate_document
from stepdrop_search.loading import load_model
from stepdrop_search.objectives.features import load_judge_for_model
from stepdrop_search.objectives.metrics import UInt8Images, fid_of_features, prc_of_features, proxy_features
from stepdrop_search.policies import PolicyDocument, load_policy
from stepdrop_search.policies.kinds import Uniform
from stepdrop_search.seeds import evaluation_seeds

#: The spectrum's bands, as fractions of the Nyquist radius: low, middle, high (to the corners, √2).
BANDS = ((0.0, 0.25), (0.25, 0.5), (0.5, math.inf))
BACKGROUND = -0.9


def as_measured(images: torch.Tensor) -> torch.Tensor:
    """Images as the metric sees them (its own 8-bit conversion, clamped to [−1, 1]), back in [−1, 1]."""
    return UInt8Images(images).images.float().div(127.5).sub(1)


def band_power(images: torch.Tensor) -> np.ndarray:
    """Mean power of the images' 2-D spectrum (mean removed per image) in each of :data:`BANDS`."""
    x = images.double().mean(1)  # channels averaged
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fftshift(torch.fft.fft2(x).abs() ** 2, dim=(-2, -1)).mean(0)
    h, w = power.shape
    yy, xx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    radius = (yy.double() ** 2 + xx.double() ** 2).sqrt() / (min(h, w) / 2)
    return np.array([float(power[(radius >= lo) & (radius < hi)].mean()) for lo, hi in BANDS])


def class_mix(logits: torch.Tensor, classes: int) -> np.ndarray:
    """Share of each class among the judge classifier's top-1 calls."""
    return np.bincount(logits.argmax(1).cpu().numpy(), minlength=classes) / len(logits)


def measure(images: torch.Tensor, judge, real: dict, device: torch.device) -> dict[str, float]:
    """Every number of the table for one row on one seed."""
    images = as_measured(images)
    features, logits = proxy_features(images, judge, device=device)
    fid = fid_of_features(features, judge)
    mean_term = float(((features.mean(0) - judge.reference["mu"].double()) ** 2).sum())
    precision, recall = prc_of_features(features, judge)
    mix = class_mix(logits, len(real["mix"]))
    bands = np.log2(band_power(images) / real["bands"])
    return {"fid": fid, "mean term": mean_term, "cov term": fid - mean_term, "precision": precision,
            "recall": recall, "class TV": 0.5 * float(np.abs(mix - real["mix"]).sum()),
            **{f"log2 power {name}": float(b) for name, b in zip(("low", "mid", "high"), bands, strict=True)},
            "background": float((images < BACKGROUND).double().mean()),
            "real background": real["background"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda")
    parser.add_argument("--solver", default="dpmpp-2m", choices=fixed_solvers(), help="the solver of the uniform-step rows")
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 25, 50, 100, 200])
    parser.add_argument("--policy", type=Path, nargs="*", default=[], help="more rows: policy files for the model")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3, help="evaluation seeds 0..S-1, the same x_T for every row")
    parser.add_argument("--reference", default=None, help="the row the paired differences are taken to "
                                                          "(default: the uniform row with the most NFE)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    loaded = load_model(args.model, device=device)
    judge = load_judge_for_model(None, loaded.config, loaded.dataset, device=device)
    if judge is None or not loaded.dataset:
        parser.error("this needs a model trained on a data set with a shipped judge (the real images are its test split)")
    rows: dict[str, PolicyDocument] = {}
    for nfe in args.nfe:
        spec, steps = spec_for_nfe(args.solver, nfe)
        rows[f"{args.solver}-{nfe}"] = PolicyDocument(Uniform(nfe=steps, schedule=loaded.schedule), spec)
    for path in args.policy:
        rows[f"{path.parent.name}/{path.stem}"] = load_policy(path, loaded.schedule)
    reference = args.reference or f"{args.solver}-{max(args.nfe)}"
    if reference not in rows:
        parser.error(f"--reference {reference} is not a row: {', '.join(rows)}")
    data = load_dataset(loaded.dataset["name"], split="test", image_size=loaded.config.image_size,
                        channels=loaded.config.in_channels)
    real_images = as_measured(data.images)
    real_logits = proxy_features(real_images, judge, device=device)[1]
    real = {"bands": band_power(real_images), "background": float((real_images < BACKGROUND).double().mean()),
            "mix": class_mix(real_logits, real_logits.shape[1])}
    print(f"{args.samples} samples × seeds {evaluation_seeds(args.seeds)}, model {loaded.weights_hash}, judge; "
          f"real: {len(real_images)} test images")
    results = {name: [] for name in rows}
    for seed in evaluation_seeds(args.seeds):
        for name, doc in rows.items():
            sampled = generate_document(loaded, doc, n=args.samples, seed=seed)
            results[name].append(measure(sampled.x0, judge, real, device) | {"nfe": float(sampled.nfe.double().mean())})
            print(f"  seed {seed}: {name} judge FID {results[name][-1]['fid']:.3f}", flush=True)
    keys = [k for k in results[reference][0] if k not in ("real background", "nfe")]
    print(f"\nmean ± std over seeds (background: real {real['background']:.3f}); Δ: paired difference to {reference}\n")
    print("| row | NFE | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for name, runs in results.items():
        cells = []
        for key in keys:
            values = np.array([r[key] for r in runs])
            diff = values - np.array([r[key] for r in results[reference]])
            cell = f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else math.nan:.3f}"
            if name != reference and key in ("fid", "mean term", "cov term", "precision", "recall"):
                cell += f" (Δ {diff.mean():+.3f} ± {diff.std(ddof=1) if len(diff) > 1 else math.nan:.3f})"
            cells.append(cell)
        print(f"| {name} | {runs[0]['nfe']:.0f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
