"""FID, KID, IS and precision/recall through torch-fidelity, in our proxy feature space.

The classifier is registered with torch-fidelity as a feature extractor (``stepdrop-proxy``) and
created by torch-fidelity itself; generated images go through its feature pipeline as an in-memory
uint8 dataset (no image files), and the metric values come from its own functions. Only the real
side differs from ``calculate_metrics``: its statistics come from our feature file (loaded with
``weights_only=True``) instead of a data set on disk or torch-fidelity's pickle cache, so evaluation
needs no data set and never unpickles.

Real Inception FID (``inception_fid``) calls ``torch_fidelity.calculate_metrics`` end to end; it needs
the Inception weights file offline and the real images.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from stepdrop_search.errors import UserError
from stepdrop_search.objectives.features import FeatureFile, load_features

EXTRACTOR = "stepdrop-proxy"
FIDELITY_METRICS = ("fid", "kid", "is", "prc", "accuracy", "class-fid")
#: the metrics of class-conditional samples: they need each sample's class
CLASS_METRICS = ("accuracy", "class-fid")


class ProxyFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity face of :class:`FeatureNet`: uint8 images in, ("features", "logits") out."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise UserError("the proxy feature extractor needs its feature file (feature_extractor_weights_path)")
        self.net = load_features(feature_extractor_weights_path).net

    @staticmethod
    def get_provided_features_list():
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "logits" if metric == "isc" else "features"

    @staticmethod
    def can_be_compiled():
        return False

    def forward(self, x):
        features, logits = self.net(x.float() / 127.5 - 1)
        named = {"features": features, "logits": logits}
        return tuple(named[name] for name in self.features_list)


if EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(EXTRACTOR, ProxyFeatureExtractor)


class UInt8Images(Dataset):
    """Images in [−1, 1] seen as the uint8 tensors torch-fidelity expects (as if saved to PNG, but in memory)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


_extractors: dict[tuple[str, str], FeatureExtractorBase] = {}


def proxy_extractor(features: FeatureFile, device: torch.device) -> FeatureExtractorBase:
    """torch-fidelity builds the extractor; ``cuda`` follows our device (its default True would not)."""
    key = (features.source, str(device))
    if key not in _extractors:
        _extractors[key] = create_feature_extractor(EXTRACTOR, ["features", "logits"], cuda=device.type == "cuda",
                                                    feature_extractor_weights_path=features.source, verbose=False)
    return _extractors[key]


def proxy_features(images: torch.Tensor, features: FeatureFile, *, device: torch.device,
                   batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(features in float64, logits) of ``images`` in the proxy feature space, through torch-fidelity's pipeline."""
    extractor = proxy_extractor(features, device)
    feats = get_featuresdict_from_dataset(UInt8Images(images), extractor, batch_size, device.type == "cuda",
                                          save_cpu_ram=True, verbose=False)
    return feats["features"].double(), feats["logits"]


def fid_of_features(generated: torch.Tensor, features: FeatureFile) -> float:
    """Proxy-FID of generated features against the feature file's reference statistics (torch-fidelity's formula)."""
    reference = features.reference
    ref = {"mu": reference["mu"].double().numpy(), "sigma": reference["sigma"].double().numpy()}
    return float(fid_statistics_to_metric(fid_features_to_statistics(generated), ref, verbose=False)[KEY_METRIC_FID])


def kid_of_features(generated: torch.Tensor, features: FeatureFile, *, seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over subsets) of generated features against the reference features."""
    real = features.reference["features"].double()
    size = min(1000, len(generated), len(real))
    kid = kid_features_to_metric(generated, real, kid_subsets=50, kid_subset_size=size, verbose=False, rng_seed=seed)
    return kid[KEY_METRIC_KID_MEAN], kid[KEY_METRIC_KID_STD]


def fidelity_metrics(images: torch.Tensor, features: FeatureFile, wanted: set[str], *, device: torch.device,
                     seed: int = 0, batch_size: int = 500, labels: torch.Tensor | None = None) -> dict[str, float]:
    """Proxy-FID (``fid``), KID, IS and precision/recall of ``images`` against the reference statistics; with the
    samples' class ``labels`` (a class-conditional model), the classifier's ``accuracy`` on them and ``class-fid``:
    each class's FID against that class's reference images (``class_fid_K``) and their mean (``class_fid``)."""
    generated, logits = proxy_features(images, features, device=device, batch_size=batch_size)
    out: dict[str, float] = {}
    if set(wanted) & set(CLASS_METRICS):
        if labels is None:
            raise UserError(f"{', '.join(sorted(set(wanted) & set(CLASS_METRICS)))} measure class-conditional samples; "
                            "this model is unconditional")
        out |= class_metrics(generated, logits, labels, features, wanted)
    if "fid" in wanted:
        out["fid"] = fid_of_features(generated, features)
    if "kid" in wanted:
        out["kid"], out["kid_std"] = kid_of_features(generated, features, seed=seed)
    if "is" in wanted:
        out["is"] = isc_features_to_metric(logits, splits=min(10, max(1, len(logits) // 100)), rng_seed=seed)[KEY_METRIC_ISC_MEAN]
    if "prc" in wanted:
        out["precision"], out["recall"] = prc_of_features(generated, features, seed=seed)
    return out


def prc_of_features(generated: torch.Tensor, features: FeatureFile, *, seed: int = 0) -> tuple[float, float]:
    """Precision and recall (k = 3) of generated features against an equally large subset of the reference features:
    k-NN radii depend on set size."""
    real = features.reference["features"].double()
    pick = torch.from_numpy(np.random.RandomState(seed).permutation(len(real))[: len(generated)])
    prc = prc_features_to_metric(generated.float(), real[pick].float(), prc_neighborhood=3, prc_batch_size=10000,
                                 save_cpu_ram=True, verbose=False)
    return prc[KEY_METRIC_PRECISION], prc[KEY_METRIC_RECALL]


def class_metrics(generated: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, features: FeatureFile,
                  wanted: set[str]) -> dict[str, float]:
    """``accuracy`` (the classifier's top-1 on the samples against the class each was asked for) and per-class FID."""
    labels = labels.cpu()
    out: dict[str, float] = {}
    if "accuracy" in wanted:
        out["accuracy"] = float((logits.argmax(1).cpu() == labels).double().mean())
    if "class-fid" in wanted:
        reference_labels = features.reference.get("labels")
        if reference_labels is None:
            raise UserError(f"{features.source}: its reference images carry no class labels, which class-fid needs; "
                            "add them with `python bench/reference_labels.py FILE`")
        real = features.reference["features"].double()
        per_class = {}
        for c in labels.unique().tolist():
            mine, theirs = generated[labels == c], real[reference_labels == c]
            if len(mine) < 2 or len(theirs) < 2:
                continue
            ref = {"mu": theirs.mean(0).numpy(), "sigma": torch.cov(theirs.T).numpy()}
            per_class[c] = float(fid_statistics_to_metric(fid_features_to_statistics(mine), ref, verbose=False)[KEY_METRIC_FID])
        out |= {f"class_fid_{c}": value for c, value in per_class.items()}
        out["class_fid"] = float(np.mean(list(per_class.values()))) if per_class else math.nan
    return out


def inception_fid(images: torch.Tensor, real_images: torch.Tensor, weights: str | Path | None, *,
                  device: torch.device, batch_size: int = 200) -> float:
    """Real Inception FID with ``torch_fidelity.calculate_metrics``; the weights must be supplied offline."""
    if weights is None:
        raise UserError("Inception FID needs the torch-fidelity Inception weights file "
                        "(pt_inception-2015-12-05-6726825d.pth) passed with --inception-weights PATH; "
                        "it cannot be downloaded here")
    if not Path(weights).is_file():
        raise UserError(f"Inception weights {weights} not found; download pt_inception-2015-12-05-6726825d.pth "
                        "on a connected machine and pass its path")

    def rgb(x: torch.Tensor) -> UInt8Images:
        return UInt8Images(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)

    result = torch_fidelity.calculate_metrics(input1=rgb(images), input2=rgb(real_images), fid=True,
                                              feature_extractor="inception-v3-compat",
                                              feature_extractor_weights_path=str(weights), cuda=device.type == "cuda",
                                              batch_size=batch_size, cache=False, verbose=False, save_cpu_ram=True)
    return float(result[KEY_METRIC_FID])


def resampled_fids(generated: torch.Tensor, features: FeatureFile, picks: torch.Tensor) -> torch.Tensor:
    """FID of ``generated`` (N × d features) resampled by each row of ``picks`` (B × N sample indices), all B at once.

    A paired bootstrap draws one set of indices per resample and applies it to every candidate (row i of each comes
    from the same x_T), so the spread of FID(a)[b] − FID(b)[b] is the paired difference's. With the covariance
    written as E[xxᵀ] − μμᵀ, the B resampled means and covariances are two matrix products with the resample counts;
    tr √(Σ_r^½ Σ Σ_r^½) comes from batched symmetric eigenvalues (the same quantity as torch-fidelity's
    tr √(Σ Σ_r), without a matrix square root per resample)."""
    x = generated.double()
    n, d = x.shape
    counts = torch.zeros(len(picks), n, dtype=torch.float64).scatter_add_(
        1, picks, torch.ones(picks.shape, dtype=torch.float64))
    mu = counts @ x / n
    second = (counts @ (x[:, :, None] * x[:, None, :]).reshape(n, d * d)).reshape(-1, d, d) / n
    sigma = (second - mu[:, :, None] * mu[:, None, :]) * (n / (n - 1))
    ref_mu, ref_sigma = features.reference["mu"].double(), features.reference["sigma"].double()
    root = _reference_root((features.source, features.card.get("weights_hash"), float(ref_sigma.trace())), ref_sigma)
    inner = torch.linalg.eigvalsh(root @ sigma @ root).clamp(min=0).sqrt().sum(-1)
    return ((mu - ref_mu) ** 2).sum(-1) + sigma.diagonal(dim1=1, dim2=2).sum(-1) + ref_sigma.trace() - 2 * inner


_roots: dict[tuple, torch.Tensor] = {}


def _reference_root(key: tuple, sigma: torch.Tensor) -> torch.Tensor:
    """Σ_r^½ of a feature file's reference covariance, computed once per file (keyed by its path, weights and Σ_r's
    trace, so a file rewritten in place is not served a stale root)."""
    if key not in _roots:
        values, vectors = torch.linalg.eigh(sigma)
        _roots[key] = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    return _roots[key]
