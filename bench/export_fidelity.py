"""Does the number we publish hold where the user runs the export? For each policy file and each export format that
accepts it, the proxy-FID of our samples under the policy's runtime against the proxy-FID of the samples the real
client draws from the exported text, from the same x_T.

    python bench/export_fidelity.py policies/*.json --samples 1000 --seed 0 | tee bench/results/export-fidelity.md

Clients: k-diffusion 0.1.1.post1's samplers for ``sigmas``; the same, with ComfyUI's conventions (nearest step, its
start rule) on the text its ManualSigmas node parses, for ``comfyui``; with A1111's (start noise·σ₀) on the "[…]" list
for ``a1111``; diffusers' scheduler built from the export's recipe for ``diffusers``. A format that refuses the file
is listed with its reason. On a class-conditional model both sides sample class i mod K for sample i, a guided policy
with its guidance; only the diffusers recipe carries guidance, and it runs on a class-conditional diffusers
UNet2DModel.
The issue's bar: |ΔFID| ≤ 0.02 at 1000 samples.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from stepdrop_search.errors import UserError
from stepdrop_search.generation import generate_document
from stepdrop_search.interop import diffusers_recipe, diffusers_recipe_sample
from stepdrop_search.kdiffusion import kdiffusion_sample
from stepdrop_search.loading import load_model
from stepdrop_search.objectives.features import load_features_for_model
from stepdrop_search.objectives.metrics import fid_of_features, proxy_features
from stepdrop_search.policies import load_policy
from stepdrop_search.policies.transfer import a1111_text, check_export, comfyui_text

FORMATS = ("sigmas", "comfyui", "a1111", "diffusers")


def client_samples(loaded, doc, fmt: str, n: int, seed: int):
    """What the format's client draws from the exported text of ``doc`` (refused exports raise UserError)."""
    target = check_export(doc, fmt, "policy")
    run_doc = doc.under(target)  # the same conventions (checked above); the client's runtime decides its start
    if fmt == "diffusers":
        return diffusers_recipe_sample(loaded, diffusers_recipe(run_doc), n=n, seed=seed)
    text = {"sigmas": a1111_text, "comfyui": comfyui_text, "a1111": a1111_text}[fmt](doc.policy)
    sigmas = torch.tensor([float(v) for v in re.findall(r"[-+]?(?:\d*\.*\d+)", text)], dtype=torch.float32)
    return kdiffusion_sample(loaded, run_doc, n=n, seed=seed, sigmas=sigmas)


def refusal(exc: UserError) -> str:
    """The reason in a client's one-line refusal: what follows "… as it was measured: " (the conventions the tool
    lacks) or the whole message, without the ". Fix …" some end with."""
    message = str(exc)
    return message.partition(" as it was measured: ")[2].split(". Fix")[0] or message.split(". Fix")[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("policies", nargs="+", help="policy files (made for the model)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed of the x_T (and solver noise)")
    parser.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    loaded = load_model(args.model)
    features = load_features_for_model(None, loaded.config, loaded.dataset)
    device = next(loaded.model.parameters()).device

    def fid(x0: torch.Tensor) -> float:
        return fid_of_features(proxy_features(x0, features, device=device)[0], features)

    print(f"{args.samples} samples of seed {args.seed}, model {loaded.weights_hash}; ours under the policy's runtime, "
          "theirs from the exported text in the client\n")
    print("| policy | runtime | solver | format | NFE ours / theirs | proxy-FID ours | proxy-FID theirs | Δ | max |Δx| |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in map(Path, args.policies):
        doc = load_policy(path, loaded.schedule)
        ours = None  # sampled once a client accepts the file (with its guidance and classes)
        for fmt in FORMATS:
            head = f"| {path.name} | {doc.runtime.name} | {doc.solver.name} | {fmt} |"
            try:
                theirs = client_samples(loaded, doc, fmt, args.samples, args.seed)
            except UserError as exc:
                print(f"{head} refused: {refusal(exc)} | | | | |")
                continue
            if ours is None:
                ours = generate_document(loaded, doc, n=args.samples, seed=args.seed)
                ours_fid = fid(ours.x0)
            theirs_fid = fid(theirs.x0)
            print(f"{head} {ours.nfe.float().mean():.0f} / {theirs.nfe.float().mean():.0f} | {ours_fid:.4f} | {theirs_fid:.4f} | "
                  f"{theirs_fid - ours_fid:+.4f} | {float((ours.x0 - theirs.x0).abs().max()):.1e} |")


if __name__ == "__main__":
    main()
