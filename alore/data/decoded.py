"""Decode once: splits held as uint8 tensors, normalized and augmented per batch.

VTAB-1k trains on 800-1000 images for 100 epochs, so decoding JPEGs every
epoch would dominate the run. A split is decoded once (PIL, in a thread pool:
PIL releases the GIL while decoding and resizing) into ``uint8 (N, 3, S, S)``,
moved to the training device, and every later epoch only indexes it. Per-batch
work (normalization; for FGVC training, random-resized-crop + flip) runs
batched on that device.

Storage per suite:

* VTAB: resized straight to ``image_size²`` with bicubic, as NOAH's
  ``transforms.Resize((224, 224), interpolation=3)``; no augmentation (paper 4.1).
* FGVC: shorter side resized to ``round(image_size * 256 / 224)`` (bilinear,
  torchvision's default) and center-cropped to that square; training batches
  take ``RandomResizedCrop(image_size, scale=(0.08, 1))`` + horizontal flip of
  it, evaluation batches its center ``image_size²``.

Test splits above :data:`STREAM_THRESHOLD` images (dSprites has 73,728) are not
held: :class:`StreamedSplit` decodes them chunk by chunk at every pass, so
memory stays bounded by ``chunk_size`` images.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ConfigError, DataError
from .splits import Items, read_protocol, require_root, task_info
from .tasks import TaskInfo, check_suite

STREAM_THRESHOLD = 20_000  # eval splits larger than this are streamed (~3 GB of uint8 at 224²)
CHUNK_SIZE = 4_096
FGVC_RESIZE_RATIO = 256 / 224

ProgressFn = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How images are stored and normalized; mean/std come from the backbone's pretrained_cfg."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop: bool = False  # FGVC: store a larger square and crop per batch

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ConfigError(f"image_size must be a positive integer, got {self.image_size!r}")
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ConfigError(f"{name} must have 3 values (RGB), got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        if min(self.std) <= 0:
            raise ConfigError(f"std must be positive, got {self.std!r}")

    @classmethod
    def for_suite(cls, suite: str, image_size: int, mean: Sequence[float], std: Sequence[float]) -> Preprocess:
        return cls(image_size, tuple(mean), tuple(std), crop=check_suite(suite) == "fgvc")

    @property
    def stored_size(self) -> int:
        return round(self.image_size * FGVC_RESIZE_RATIO) if self.crop else self.image_size


def open_rgb(path: Path) -> Image.Image:
    """The image at ``path`` fully decoded as RGB; a DataError naming the path otherwise."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")  # convert() forces the full decode inside the try
    except FileNotFoundError:
        raise DataError(f"{path}: image file missing") from None
    except Exception as err:  # corrupt files raise OSError, SyntaxError, ValueError, zlib.error, ...
        detail = " ".join(str(err).split())
        raise DataError(f"{path}: cannot decode image ({type(err).__name__}: {detail})") from None


def decode_image(path: Path, pre: Preprocess) -> np.ndarray:
    """One image as stored: uint8 ``(3, S, S)`` with ``S = pre.stored_size``."""
    im = open_rgb(path)
    s = pre.stored_size
    if pre.crop:
        w, h = im.size
        # torchvision Resize(int): the shorter side becomes s, the longer keeps the ratio.
        nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = int(round((nw - s) / 2)), int(round((nh - s) / 2))
        im = im.crop((left, top, left + s, top + s))
    else:
        im = im.resize((s, s), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def default_workers() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Center ``size²`` of a ``(B, C, H, W)`` batch (torchvision's CenterCrop offsets)."""
    h, w = images.shape[-2:]
    top, left = int(round((h - size) / 2)), int(round((w - size) / 2))
    return images[..., top : top + size, left : left + size]


def _crop_boxes(
    n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, ...]:
    """torchvision RandomResizedCrop.get_params, vectorized over ``n`` images: (top, left, h, w)."""
    device = generator.device if generator is not None else torch.device("cpu")
    attempts = 10
    area = height * width
    target = area * torch.empty(n, attempts, device=device).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n, attempts, device=device).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator
    )
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)  # first valid attempt per image
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    # No valid attempt: torchvision falls back to a center crop clamped to the ratio range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    has = valid.any(dim=1)
    w = torch.where(has, w, torch.full_like(w, fw))
    h = torch.where(has, h, torch.full_like(h, fh))
    top = torch.where(has, torch.floor(torch.rand(n, device=device, generator=generator) * (height - h + 1)),
                      torch.full_like(h, (height - fh) // 2))
    left = torch.where(has, torch.floor(torch.rand(n, device=device, generator=generator) * (width - w + 1)),
                       torch.full_like(w, (width - fw) // 2))
    return top, left, h, w


def random_resized_crop_flip(
    images: torch.Tensor,
    size: int,
    generator: torch.Generator | None = None,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
) -> torch.Tensor:
    """RandomResizedCrop(size) + RandomHorizontalFlip for a whole batch in one ``grid_sample``.

    ``images`` is ``(B, C, H, W)``; the result is float ``(B, C, size, size)`` on the
    same device, in the input's value range. Crop boxes are sampled as torchvision
    samples them; the resize is bilinear without antialiasing.
    """
    b, _, height, width = images.shape
    top, left, h, w = _crop_boxes(b, height, width, scale, ratio, generator)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    flip = torch.rand(b, device=gen_device, generator=generator) < flip_p
    # affine_grid (align_corners=False) maps output [-1, 1] onto the crop box's pixel edges.
    theta = torch.zeros(b, 2, 3, device=gen_device)
    theta[:, 0, 0] = (w / width) * torch.where(flip, -1.0, 1.0)
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    theta = theta.to(images.device)
    grid = F.affine_grid(theta, [b, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclasses.dataclass
class DecodedSplit:
    """A split decoded once: ``images`` uint8 ``(N, 3, S, S)``, ``labels`` int64 ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor
    preprocess: Preprocess

    @classmethod
    def decode(
        cls, items: Items, preprocess: Preprocess, *, workers: int | None = None,
        on_progress: ProgressFn | None = None,
    ) -> DecodedSplit:
        n, s = len(items), preprocess.stored_size
        images = torch.empty((n, 3, s, s), dtype=torch.uint8)
        labels = torch.tensor([label for _, label in items], dtype=torch.int64).reshape(n)
        view = images.numpy()  # threads write disjoint rows of the tensor's memory

        def fill(i: int) -> None:
            view[i] = decode_image(items[i][0], preprocess)

        step = max(1, n // 100)  # report about 100 times, not per image
        workers = workers or default_workers()
        if workers == 1 or n <= 1:
            for i in range(n):
                fill(i)
                if on_progress and ((i + 1) % step == 0 or i + 1 == n):
                    on_progress(i + 1, n)
            return cls(images, labels, preprocess)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
            try:
                for done, _ in enumerate(pool.map(fill, range(n)), 1):
                    if on_progress and (done % step == 0 or done == n):
                        on_progress(done, n)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # a bad file: stop, don't decode the rest
                raise
        return cls(images, labels, preprocess)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> DecodedSplit:
        return dataclasses.replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        train_transform: bool = False,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(float32 (B, 3, size, size) normalized, int64 (B,))`` on the split's device.

        ``train_transform`` applies the suite's training augmentation (FGVC:
        random-resized-crop + flip; VTAB has none). ``generator`` (on any device)
        drives the shuffle and the augmentation, so a seeded run repeats exactly.
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        pre, n, device = self.preprocess, len(self), self.device
        gen_device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=gen_device) if shuffle else torch.arange(n)
        order = order.to(device)
        std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1)
        # (x / 255 - mean) / std folded into one multiply-subtract.
        mul = 1.0 / (255.0 * std)
        sub = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1) / std
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if drop_last and idx.numel() < batch_size:
                break
            x = self.images.index_select(0, idx)
            if train_transform and pre.crop:
                x = random_resized_crop_flip(x, pre.image_size, generator)
            else:
                x = center_crop(x, pre.image_size).float()
            yield x.mul_(mul).sub_(sub), self.labels.index_select(0, idx)


def _offset(on_progress: ProgressFn | None, offset: int, total: int) -> ProgressFn | None:
    """A progress hook reporting a sub-task's progress as part of a larger total."""
    if on_progress is None:
        return None
    return lambda done, _n: on_progress(offset + done, total)


def iter_chunks(
    items: Items, preprocess: Preprocess, chunk_size: int = CHUNK_SIZE, *,
    workers: int | None = None, on_progress: ProgressFn | None = None,
) -> Iterator[DecodedSplit]:
    """Decode ``items`` lazily, ``chunk_size`` at a time: memory never holds more than one chunk."""
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be positive, got {chunk_size}")
    for start in range(0, len(items), chunk_size):
        chunk = items[start : start + chunk_size]
        yield DecodedSplit.decode(
            chunk, preprocess, workers=workers, on_progress=_offset(on_progress, start, len(items))
        )


@dataclasses.dataclass
class StreamedSplit:
    """An evaluation split too large to hold: decoded chunk by chunk at every pass."""

    items: Items
    preprocess: Preprocess
    chunk_size: int = CHUNK_SIZE
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    workers: int | None = None
    on_progress: ProgressFn | None = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.items], dtype=torch.int64, device=self.device)

    def to(self, device: torch.device | str) -> StreamedSplit:
        return dataclasses.replace(self, device=torch.device(device))

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
        train_transform: bool = False, drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Evaluation batches in file order; a chunk's last batch may be short."""
        if shuffle or train_transform or drop_last:
            raise ValueError("a streamed split is for evaluation: no shuffle, augmentation or drop_last")
        for chunk in iter_chunks(
            self.items, self.preprocess, self.chunk_size, workers=self.workers, on_progress=self.on_progress
        ):
            chunk = chunk.to(self.device)
            yield from chunk.batches(batch_size)
            del chunk  # drop it before the next chunk is decoded: one chunk at a time


def load_split(
    items: Items, preprocess: Preprocess, *, stream_threshold: int = STREAM_THRESHOLD,
    chunk_size: int = CHUNK_SIZE, workers: int | None = None, on_progress: ProgressFn | None = None,
) -> DecodedSplit | StreamedSplit:
    """Held (decoded now) when ``len(items) <= stream_threshold``, else streamed."""
    if len(items) > stream_threshold:
        return StreamedSplit(items, preprocess, chunk_size, workers=workers)
    return DecodedSplit.decode(items, preprocess, workers=workers, on_progress=on_progress)


@dataclasses.dataclass
class TaskData:
    """One task under one protocol, ready for the training loop."""

    suite: str
    protocol: str
    info: TaskInfo
    preprocess: Preprocess
    train: DecodedSplit
    eval: DecodedSplit | StreamedSplit

    @property
    def num_classes(self) -> int:
        return self.info.num_classes


def load_task(
    root: Path,
    suite: str,
    task: str,
    protocol: str,
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str | None = None,
    workers: int | None = None,
    stream_threshold: int = STREAM_THRESHOLD,
    chunk_size: int = CHUNK_SIZE,
    on_progress: ProgressFn | None = None,
) -> TaskData:
    """Read ``task``'s splits for ``protocol`` and decode them once (train, and eval unless streamed).

    ``image_size``, ``mean`` and ``std`` come from the backbone
    (``model.pretrained_cfg``); ``device`` is where the decoded tensors live.
    ``on_progress(done, total)`` counts the images decoded now.
    """
    root = require_root(root)
    info = task_info(suite, task, root)
    train_items, eval_items = read_protocol(root, suite, task, protocol, num_classes=info.num_classes)
    pre = Preprocess.for_suite(suite, image_size, mean, std)
    held_eval = len(eval_items) <= stream_threshold
    total = len(train_items) + (len(eval_items) if held_eval else 0)
    train = DecodedSplit.decode(train_items, pre, workers=workers, on_progress=_offset(on_progress, 0, total))
    evaluation = load_split(
        eval_items, pre, stream_threshold=stream_threshold, chunk_size=chunk_size, workers=workers,
        on_progress=_offset(on_progress, len(train_items), total),
    )
    if device is not None:
        train, evaluation = train.to(device), evaluation.to(device)
    return TaskData(suite, protocol, info, pre, train, evaluation)
