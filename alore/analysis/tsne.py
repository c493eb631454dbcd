"""t-SNE of [CLS] embeddings (paper figure 5), with numbers that say how well the classes cluster.

The embedding is what the classification head receives: for a ViT the [CLS]
token after the last block and the final norm (timm's ``forward_head(...,
pre_logits=True)``), captured with a forward pre-hook on the model's classifier
so that every method's own forward is used as it is (prompts, adapters, ...).

Two numbers per method, computed on the embeddings themselves (not on the 2-D
t-SNE, whose distances are not meaningful):

* silhouette score (cosine) in [-1, 1]: higher means tighter, better separated classes;
* k-NN accuracy (percent): leave-one-out, the ``k`` nearest other test embeddings (cosine) vote.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError

KNN_K = 10


@dataclasses.dataclass
class Embedding:
    """One method's embeddings of one split and what they score."""

    method: str
    features: np.ndarray   # (N, D) float32
    labels: np.ndarray     # (N,) int
    silhouette: float = float("nan")
    knn_acc: float = float("nan")
    points: np.ndarray | None = None  # (N, 2) t-SNE

    def summary(self) -> dict[str, Any]:
        return {"method": self.method, "samples": int(len(self.labels)), "dim": int(self.features.shape[1]),
                "silhouette": self.silhouette, "knn_acc": self.knn_acc, "knn_k": KNN_K}


@torch.inference_mode()
def head_inputs(model: nn.Module, split: Any, batch_size: int = 256,
                autocast: Callable[[], Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D), labels (N,)): the classifier's input for every image of ``split``."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module) or isinstance(head, nn.Identity):
        raise ConfigError("the t-SNE analysis needs a model with a classification head")
    autocast = autocast or contextlib.nullcontext
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach().float().flatten(1)))
    was_training = model.training
    model.eval()
    labels = []
    try:
        for x, y in split.batches(batch_size):
            with autocast():
                model(x)
            labels.append(y)
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(captured).cpu().numpy(), torch.cat(labels).cpu().numpy()


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = KNN_K) -> float:
    """Leave-one-out k-NN accuracy (percent) with cosine similarity; ties go to the smaller class id."""
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)  # a point never votes for itself
    k = max(1, min(k, len(labels) - 1))
    nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    votes = np.zeros((len(labels), int(labels.max()) + 1))
    np.add.at(votes, (np.repeat(np.arange(len(labels)), k), labels[nearest].ravel()), 1)
    return float(100.0 * (votes.argmax(1) == labels).mean())


def score(emb: Embedding) -> Embedding:
    """Fill ``silhouette`` and ``knn_acc``."""
    from sklearn.metrics import silhouette_score

    if len(np.unique(emb.labels)) < 2 or len(emb.labels) < 3:
        raise ConfigError(f"clustering scores need at least 2 classes and 3 images, got {len(emb.labels)} images")
    emb.silhouette = float(silhouette_score(emb.features, emb.labels, metric="cosine"))
    emb.knn_acc = knn_accuracy(emb.features, emb.labels)
    return emb


def project(emb: Embedding, seed: int = 0) -> Embedding:
    """Fill ``points`` with a 2-D t-SNE (PCA initialisation, fixed seed: the same run draws the same picture).

    One OpenMP thread: scikit-learn's Barnes-Hut threads spin-wait, and on a busy
    machine (torch's own threads, other jobs) that took 100 s instead of 1.5 s for
    150 points; single-threaded, 2,000 points take seconds.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = len(emb.labels)
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    with threadpool_limits(limits=1, user_api="openmp"):
        emb.points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                          learning_rate="auto").fit_transform(emb.features.astype(np.float32))
    return emb


def draw_panels(embeddings: list[Embedding], path: str | os.PathLike, title: str = "") -> Path:
    """Side-by-side t-SNE panels, one per method, points coloured by class; the scores in each panel's title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(embeddings), figsize=(4 * len(embeddings), 4.3), squeeze=False)
    classes = sorted({int(c) for e in embeddings for c in np.unique(e.labels)})
    if len(classes) <= 20:  # qualitative tables index colours by integer
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        colour = {c: cmap(i) for i, c in enumerate(classes)}
    else:
        cmap = plt.get_cmap("turbo")
        colour = {c: cmap(i / (len(classes) - 1)) for i, c in enumerate(classes)}
    for ax, e in zip(axes[0], embeddings):
        if e.points is None:
            raise ConfigError(f"no t-SNE points for {e.method}; call project() first")
        ax.scatter(e.points[:, 0], e.points[:, 1], s=6, c=[colour[int(c)] for c in e.labels], linewidths=0)
        ax.set_title(f"{e.method}\nsilhouette {e.silhouette:.3f}  {KNN_K}-NN {e.knn_acc:.1f}%", fontsize=10)
        ax.set_xticks([]), ax.set_yticks([])
    if len(classes) <= 20:
        handles = [plt.Line2D([], [], marker="o", linestyle="", markersize=5, color=colour[c]) for c in classes]
        axes[0][-1].legend(handles, [str(c) for c in classes], title="class", fontsize=7, title_fontsize=8,
                           loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
