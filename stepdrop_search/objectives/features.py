"""The proxy feature network: a small CNN classifier trained on the same data as the diffusion model.

Its 64-d penultimate features stand in for Inception's pool features (the standard practice for
MNIST-scale data, where Inception features mean little) and its logits for Inception's (for IS).
A feature file holds the classifier, its held-out accuracy, and the **reference statistics** of the
real test split (feature mean, covariance and the features themselves in float16), so evaluation
needs no data set at run time. Files load with ``weights_only=True`` like every checkpoint.
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
DEFAULT_FEATURES = {"fashion-mnist": "features-fashion-mnist.pt"}


class FeatureNet(nn.Module):
    """conv-GN-SiLU ×3 with pooling → global average → 64-d features → class logits."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "width": width}

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(4, c_out), nn.SiLU(),
                                 nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(4, c_out), nn.SiLU())

        self.body = nn.Sequential(block(in_channels, width), nn.MaxPool2d(2), block(width, 2 * width), nn.MaxPool2d(2),
                                  block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
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
    return {"features": features.half(), "mu": f64.mean(0), "sigma": torch.cov(f64.T), "count": len(features),
            "split": "test"}


def train_feature_net(dataset: str, data_dir: str | None, out: str | Path, *, steps: int = 1500, batch_size: int = 128,
                      lr: float = 2e-3, seed: int = 0, image_size: int | None = None, command: str = "",
                      device: str | torch.device = "cpu", log=lambda message: None) -> dict:
    """Train the classifier on the train split, measure test accuracy, store reference statistics."""
    train_data = load_dataset(dataset, data_dir, split="train", image_size=image_size, seed=seed)
    test_data = load_dataset(dataset, data_dir, split="test", image_size=image_size, seed=seed)
    if train_data.labels is None:
        raise UserError(f"data set {dataset} has no labels; the proxy feature network is a classifier and needs them")
    num_classes = int(train_data.labels.max()) + 1
    torch.manual_seed(seed)
    net = FeatureNet(train_data.channels, num_classes).to(device)
    images, labels = train_data.images.to(device), train_data.labels.to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    tick = time.perf_counter()
    net.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(train_data), (batch_size,), generator=gen)
        x, y = images[idx.to(device)], labels[idx.to(device)]
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
    card = {"dataset": dataset, "accuracy_test": round(accuracy, 4), "test_images": len(test_data), "steps": steps,
            "batch_size": batch_size, "wall_time_s": round(time.perf_counter() - tick, 1), "command": command,
            "weights_hash": state_dict_hash(net.state_dict()), "feature_dim": FEATURE_DIM}
    save_checkpoint(out, {
        "kind": "feature-net", "model_config": net.config, "model": net.cpu().state_dict(),
        "dataset": {"name": dataset, "image_size": train_data.image_size, "channels": train_data.channels},
        "reference": reference_statistics(net, test_data), "card": card,
    })
    write_json(Path(out).with_suffix(".json"), card)
    return card


def default_features_path(dataset: str) -> Path:
    if dataset not in DEFAULT_FEATURES:
        raise UserError(f"no shipped feature network for data set {dataset!r}; train one with "
                        f"`stepdrop-search features train --dataset {dataset}` and pass --features FILE")
    return Path(str(resources.files("stepdrop_search") / "assets" / DEFAULT_FEATURES[dataset]))


def load_features(path: str | Path | None = None, *, dataset: dict | None = None,
                  device: str | torch.device = "cpu") -> FeatureFile:
    """Load a feature file (default: the shipped one for ``dataset``); :func:`load_features_for_model` also checks
    that it scores the images a model makes."""
    if path is None:
        path = default_features_path((dataset or {}).get("name", "fashion-mnist"))
    payload = load_checkpoint(path)
    if payload.get("kind") != "feature-net" or "reference" not in payload:
        raise UserError(f"{path} is a diffusion checkpoint, not a feature network; pass a file from `features train`")
    net = FeatureNet(**payload["model_config"])
    try:
        net.load_state_dict(payload["model"])
    except RuntimeError:
        raise UserError(f"{path}: weights do not fit the feature network it describes; the file is damaged") from None
    return FeatureFile(net.to(device).eval(), dict(payload["dataset"]), dict(payload["reference"]), dict(payload["card"]),
                       str(path))


def load_features_for_model(path: str | Path | None, model_config, dataset: dict | None = None, *,
                            device: str | torch.device = "cpu") -> FeatureFile:
    """The feature file that scores a model's images: ``path``, or the shipped one for the model's data set, checked
    against the image shape the model makes (``model_config.in_channels``, ``image_size``) before any sampling.

    A model from elsewhere (a diffusers UNet) has no data set name, so its shape is all there is to go on: a
    3×32×32 model scored by the 1×28×28 Fashion-MNIST network would crash deep inside the metric.
    """
    shape = (int(model_config.in_channels), int(model_config.image_size))
    made = f"{shape[0]}×{shape[1]}×{shape[1]}"
    advice = (f"train a feature network on {made} images (`stepdrop-search features train --dataset NAME "
              f"--image-size {shape[1]}`) and pass it with --features FILE")
    name = (dataset or {}).get("name")
    if path is None:
        if name in DEFAULT_FEATURES:
            path = default_features_path(name)
        elif shape == (1, 28):  # a model of unknown data but Fashion-MNIST's shape: the shipped network can score it
            path = default_features_path("fashion-mnist")
        else:
            raise UserError(f"no shipped feature network scores {made} images (shipped: "
                            f"{', '.join(DEFAULT_FEATURES)} at 1×28×28); {advice}")
    features = load_features(path, device=device)
    fits = (features.dataset.get("channels"), features.dataset.get("image_size"))
    if fits != shape:
        raise UserError(f"{path} scores {fits[0]}×{fits[1]}×{fits[1]} images but the model makes {made}; {advice}")
    return features

