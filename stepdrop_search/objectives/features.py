"""The feature networks behind the metrics: small CNN classifiers trained on the same data as the diffusion model.

Their 64-d penultimate features stand in for Inception's pool features (the standard practice for
MNIST-scale data, where Inception features mean little) and their logits for Inception's (for IS).
A feature file holds the classifier, its held-out accuracy, and the **reference statistics** of the
real test split (feature mean, covariance and the features themselves in float16), so evaluation
needs no data set at run time. Files load with ``weights_only=True`` like every checkpoint.

Each data set has two, with different jobs (``docs/judge.md``):

- the **coach** (``features-*.pt``, a plain conv net on every training image) is what searches optimise: rungs, trials
  and the gradient method's ``fid`` loss all score on it;
- the **judge** (``judge-*.pt``, a residual net of another width and seed, on one half of the training images) is what
  picks the export and what evaluate's headline and README's claims are measured on. Nothing searched or trained ever
  sees it, so a schedule that learned the coach's quirks gains nothing there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stepdrop_search.checkpoint import load_checkpoint, save_checkpoint, state_dict_hash
from stepdrop_search.data import ImageData, load_dataset
from stepdrop_search.errors import UserError
from stepdrop_search.files import write_json

FEATURE_DIM = 64
#: The shipped networks by role and data set (files in ``stepdrop_search/assets``).
SHIPPED = {"coach": {"fashion-mnist": "features-fashion-mnist.pt"}, "judge": {"fashion-mnist": "judge-fashion-mnist.pt"}}
#: Architecture families: ``plain`` (the coach's) and ``residual`` (the judge's), unlike in body, norm and non-linearity.
FAMILIES = ("plain", "residual")
#: Which training images a network learns from: all, or one of two disjoint halves (even or odd indices).
TRAINING_IMAGES = {"all": slice(None), "half-a": slice(0, None, 2), "half-b": slice(1, None, 2)}


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a (strided 1×1) shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                                  nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.main(x) + self.shortcut(x))


class FeatureNet(nn.Module):
    """A body → global average → 64-d features → class logits. ``plain``: conv-GN-SiLU ×3 with max pooling;
    ``residual``: a BN-ReLU stem and three residual blocks, two of them strided."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16, family: str = "plain") -> None:
        super().__init__()
        if family not in FAMILIES:
            raise UserError(f"unknown feature network family {family!r}; choose one of {', '.join(FAMILIES)}")
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "width": width, "family": family}

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(4, c_out), nn.SiLU(),
                                 nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(4, c_out), nn.SiLU())

        if family == "plain":
            layers = [block(in_channels, width), nn.MaxPool2d(2), block(width, 2 * width), nn.MaxPool2d(2),
                      block(2 * width, 4 * width)]
        else:
            layers = [nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                      ResidualBlock(width, width, 1), ResidualBlock(width, 2 * width, 2),
                      ResidualBlock(2 * width, 4 * width, 2)]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Linear(4 * width, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x in [−1, 1] → (features (B, 64), logits (B, classes))."""
        features = self.embed(self.body(x))
        return features, self.head(F.silu(features))


@dataclass
class FeatureFile:
    net: FeatureNet
    dataset: dict
    reference: dict  # features (N, 64) float16, mu (64,), sigma (64, 64), count, split
    card: dict
    source: str


@torch.no_grad()
def extract(net: FeatureNet, images: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(net.parameters()).device
    feats, logits = [], []
    for start in range(0, len(images), batch_size):
        f, logit = net(images[start:start + batch_size].to(device))
        feats.append(f.cpu())
        logits.append(logit.cpu())
    return torch.cat(feats), torch.cat(logits)


def reference_statistics(net: FeatureNet, data: ImageData) -> dict:
    features, _ = extract(net.eval(), data.images)
    f64 = features.double()
    reference = {"features": features.half(), "mu": f64.mean(0), "sigma": torch.cov(f64.T), "count": len(features),
                 "split": "test"}
    if data.labels is not None:  # per-class statistics (class-fid of conditional samples) select on them
        reference["labels"] = data.labels.to(torch.int16)
    return reference


def train_feature_net(dataset: str, data_dir: str | None, out: str | Path, *, steps: int = 1500, batch_size: int = 128,
                      lr: float = 2e-3, seed: int = 0, image_size: int | None = None, family: str = "plain",
                      width: int = 16, images: str = "all", command: str = "", device: str | torch.device = "cpu",
                      log=lambda message: None) -> dict:
    """Train the classifier on the train split (``images``: all of it or one half), measure test accuracy, store
    reference statistics."""
    if images not in TRAINING_IMAGES:
        raise UserError(f"unknown --images {images!r}; choose one of {', '.join(TRAINING_IMAGES)}")
    FeatureNet(family=family)  # an unknown family is refused before the data loads
    train_data = load_dataset(dataset, data_dir, split="train", image_size=image_size, seed=seed)
    test_data = load_dataset(dataset, data_dir, split="test", image_size=image_size, seed=seed)
    if train_data.labels is None:
        raise UserError(f"data set {dataset} has no labels; the proxy feature network is a classifier and needs them")
    num_classes = int(train_data.labels.max()) + 1
    torch.manual_seed(seed)
    net = FeatureNet(train_data.channels, num_classes, width, family).to(device)
    part = TRAINING_IMAGES[images]
    images_seen, labels = train_data.images[part].to(device), train_data.labels[part].to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    tick = time.perf_counter()
    net.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(images_seen), (batch_size,), generator=gen)
        x, y = images_seen[idx.to(device)], labels[idx.to(device)]
        shift = torch.randint(-2, 3, (2,), generator=gen).tolist()  # small translations: cheap augmentation
        x = torch.roll(x, shifts=shift, dims=(2, 3))
        loss = F.cross_entropy(net(x)[1], y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0:
            log(f"features step {step}/{steps} loss {loss.item():.4f}")
    net.eval()
    _, logits = extract(net, test_data.images)
    accuracy = float((logits.argmax(1) == test_data.labels).float().mean())
    card = {"dataset": dataset, "accuracy_test": round(accuracy, 4), "test_images": len(test_data),
            "training_images": {"which": images, "count": len(images_seen), "of": len(train_data)},
            "family": family, "width": width, "seed": seed, "steps": steps,
            "batch_size": batch_size, "wall_time_s": round(time.perf_counter() - tick, 1), "command": command,
            "weights_hash": state_dict_hash(net.state_dict()), "feature_dim": FEATURE_DIM}
    save_checkpoint(out, {
        "kind": "feature-net", "model_config": net.config, "model": net.cpu().state_dict(),
        "dataset": {"name": dataset, "image_size": train_data.image_size, "channels": train_data.channels},
        "reference": reference_statistics(net, test_data), "card": card,
    })
    write_json(Path(out).with_suffix(".json"), card)
    return card


#: How to make each role's network for other data, and the flag that passes it.
HOW_TO_TRAIN = {"coach": ("", "--features"), "judge": (" --family residual --width 24 --images half-b --seed 1", "--judge")}


def default_features_path(dataset: str, role: str = "coach") -> Path:
    """The shipped ``role`` network (``coach`` or ``judge``) for ``dataset``."""
    if dataset not in SHIPPED[role]:
        options, flag = HOW_TO_TRAIN[role]
        raise UserError(f"no shipped {role} feature network for data set {dataset!r}; train one with "
                        f"`stepdrop-search features train --dataset {dataset}{options}` and pass {flag} FILE")
    return Path(str(resources.files("stepdrop_search") / "assets" / SHIPPED[role][dataset]))


def load_features(path: str | Path | None = None, *, dataset: dict | None = None, role: str = "coach",
                  device: str | torch.device = "cpu") -> FeatureFile:
    """Load a feature file (default: the shipped ``role`` network for ``dataset``); :func:`load_features_for_model`
    also checks that it scores the images a model makes."""
    if path is None:
        path = default_features_path((dataset or {}).get("name", "fashion-mnist"), role)
    payload = load_checkpoint(path)
    if payload.get("kind") != "feature-net" or "reference" not in payload:
        raise UserError(f"{path} is a diffusion checkpoint, not a feature network; pass a file from `features train`")
    try:
        net = FeatureNet(**payload["model_config"])
        net.load_state_dict(payload["model"])
    except (RuntimeError, TypeError):
        raise UserError(f"{path}: weights do not fit the feature network it describes; the file is damaged") from None
    return FeatureFile(net.to(device).eval(), dict(payload["dataset"]), dict(payload["reference"]), dict(payload["card"]),
                       str(path))


def load_features_for_model(path: str | Path | None, model_config, dataset: dict | None = None, *, role: str = "coach",
                            device: str | torch.device = "cpu") -> FeatureFile:
    """The ``role`` feature file that scores a model's images: ``path``, or the shipped one for the model's data set,
    checked against the image shape the model makes (``model_config.in_channels``, ``image_size``) before any sampling.

    A model from elsewhere (a diffusers UNet) has no data set name, so its shape is all there is to go on: a
    3×32×32 model scored by the 1×28×28 Fashion-MNIST network would crash deep inside the metric.
    """
    shape = (int(model_config.in_channels), int(model_config.image_size))
    made = f"{shape[0]}×{shape[1]}×{shape[1]}"
    options, flag = HOW_TO_TRAIN[role]
    advice = (f"train a {role} feature network on {made} images (`stepdrop-search features train --dataset NAME "
              f"--image-size {shape[1]}{options}`) and pass it with {flag} FILE")
    name = (dataset or {}).get("name")
    if path is None:
        if name in SHIPPED[role]:
            path = default_features_path(name, role)
        elif shape == (1, 28):  # a model of unknown data but Fashion-MNIST's shape: the shipped network can score it
            path = default_features_path("fashion-mnist", role)
        else:
            raise UserError(f"no shipped {role} feature network scores {made} images (shipped: "
                            f"{', '.join(SHIPPED[role])} at 1×28×28); {advice}")
    features = load_features(path, device=device)
    fits = (features.dataset.get("channels"), features.dataset.get("image_size"))
    if fits != shape:
        raise UserError(f"{path} scores {fits[0]}×{fits[1]}×{fits[1]} images but the model makes {made}; {advice}")
    return features


def load_judge_for_model(path: str | Path | None, model_config, dataset: dict | None = None, *,
                         device: str | torch.device = "cpu") -> FeatureFile | None:
    """The judge for a model's images (:func:`load_features_for_model` with ``role="judge"``), or None when none was
    given and none is shipped for that data: the caller then reports on the coach alone and says so."""
    try:
        return load_features_for_model(path, model_config, dataset, role="judge", device=device)
    except UserError:
        if path is not None:
            raise
        return None
