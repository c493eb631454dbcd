"""Backbones: short names for the paper's checkpoints, timm for everything.

A backbone is a timm model name plus creation arguments. The adapted model
remembers them (``model.alore``, :mod:`alore.state`) so that ``merge`` can build a fresh,
plain timm model of exactly the same architecture and load the folded weights
into it with ``strict=True``.

Weights come from one of three places:

* ``None`` or ``"random"`` (:data:`RANDOM`): random initialisation (tests,
  parameter counts, benchmarks; a user training on it says so on purpose);
* a timm pretrained tag (``"timm"`` or ``"hub"``): read by timm from the local
  huggingface hub cache, or downloaded where a network exists;
  :func:`fetch_pretrained` turns it into a local safetensors file once, which
  is what a cluster's trials then load;
* a local file (``.safetensors``, ``.pth``/``.bin``/``.pt`` loaded with
  ``weights_only=True``, or Google's original ``.npz``) for clusters without
  internet access.

Backbone names become file names (fetched weights, sweep folders), so every
name matches one safe pattern (:data:`NAME_PATTERN`) before anything uses it.

Local files are loaded by this module rather than through
``pretrained_cfg_overlay=dict(file=...)``: timm drops a mismatched head and then
loads with ``strict=False``, which would also accept a file that lacks half the
backbone. Here only the classifier's keys may be missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from . import state as alore_state
from .errors import ConfigError, UnknownChoiceError, WeightsError
from .files import atomic_path

#: ``weights="random"``: random initialisation on purpose (the same as ``None`` here).
RANDOM = "random"
#: ``weights="timm"`` (or ``"hub"``): timm's pretrained weights for the backbone's tag.
HUB = ("timm", "hub")


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone with timm."""

    timm_name: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""
    image_size: int | None = None  # when the model cannot tell (CNNs built for small inputs)


BACKBONES: dict[str, BackboneSpec] = {
    # The original Google ImageNet-21K checkpoints VPT and the paper use (no head).
    "vit_b": BackboneSpec("vit_base_patch16_224.orig_in21k", description="ViT-B/16, ImageNet-21K"),
    "vit_l": BackboneSpec("vit_large_patch16_224.orig_in21k", description="ViT-L/16, ImageNet-21K"),
    "vit_h": BackboneSpec("vit_huge_patch14_224.orig_in21k", description="ViT-H/14, ImageNet-21K"),
    "swin_b": BackboneSpec("swin_base_patch4_window7_224.ms_in22k", description="Swin-B, ImageNet-22K"),
    "convnext_b": BackboneSpec("convnext_base.fb_in22k", description="ConvNeXt-B, ImageNet-22K"),
    # Small real architectures for CI and the demo (32x32 inputs).
    "vit_test": BackboneSpec(
        "test_vit", dict(img_size=32, patch_size=8), description="timm test_vit, 32x32 input"
    ),
    "swin_test": BackboneSpec(
        "swin_tiny_patch4_window7_224",
        dict(img_size=32, patch_size=4, window_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4)),
        description="two-stage Swin, 32x32 input",
    ),
    "convnext_test": BackboneSpec("test_convnext", description="timm test_convnext", image_size=32),
    "demo": BackboneSpec(
        "vit_small_patch16_224",
        dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4),
        description="4-layer ViT on 32x32 images, pre-trained by `alorectl data demo`",
    ),
}

#: Small real architectures for CI and the demo: random unless given a file (the demo preset passes its own).
SMALL_TEST = ("vit_test", "swin_test", "convnext_test", "demo")

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")

#: Letters, digits, ``_`` and ``-``, with at most one ``.tag`` of the same (every timm name fits).
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)?")
NAME_RULE = "letters, digits, '_' and '-', with one optional '.tag'"


def resolve(name: str) -> BackboneSpec:
    """Map a short name, or any timm model name (``arch`` or ``arch.tag``), to a :class:`BackboneSpec`."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"invalid backbone name {name!r}: use a short name ({', '.join(sorted(BACKBONES))}) "
                          f"or a timm model name ({NAME_RULE})")
    if name in BACKBONES:
        return BACKBONES[name]
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        raise UnknownChoiceError("backbone", name, BACKBONES, hint="(or any timm model name)")
    if tag:
        tags = {n.partition(".")[2] for n in timm.models.get_arch_pretrained_cfgs(arch)}
        if tag not in tags:
            raise UnknownChoiceError(f"pretrained tag for {arch}", tag, tags or {"(none: use the bare name)"})
    return BackboneSpec(name)


def is_small_test(name: str) -> bool:
    """The small CI/demo backbones, which train from random weights unless given a file."""
    return name in SMALL_TEST


def pretrained_tag(name: str) -> str:
    """timm's model name with the pretrained tag the backbone uses, e.g. ``vit_base_patch16_224.orig_in21k``."""
    spec = resolve(name)
    arch, _, tag = spec.timm_name.partition(".")
    if tag:
        return spec.timm_name
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or not cfg.tag or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise WeightsError(f"timm has no pretrained weights for backbone {name!r} ({arch}); pass a weights file "
                           f"(.safetensors/.pth/.npz) or {RANDOM!r} with --weights")
    return f"{arch}.{cfg.tag}"


def _hub_error(name: str, tag: str, err: Exception, flag: str) -> WeightsError:
    import huggingface_hub.constants as hub

    why = "offline" if hub.HF_HUB_OFFLINE else f"{type(err).__name__}"
    return WeightsError(
        f"no pretrained weights for {name}: timm's {tag!r} is not in the local hub cache and cannot be downloaded "
        f"({why}); pass {flag}FILE (.safetensors/.pth/.npz), or {flag}{RANDOM} to train a random backbone on purpose")


def _offline_and_not_cached(tag: str) -> bool:
    """True when huggingface_hub is offline and holds no weights file of the tag's hub repo."""
    import huggingface_hub
    import huggingface_hub.constants as hub

    cfg = timm.models.get_pretrained_cfg(tag)
    if not hub.HF_HUB_OFFLINE or cfg is None or not cfg.hf_hub_id:
        return False  # online, or weights that come from a URL: timm decides
    repo, _, revision = cfg.hf_hub_id.partition("@")
    names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin",
                                                                  "open_clip_pytorch_model.bin"]
    return not any(isinstance(huggingface_hub.try_to_load_from_cache(repo, n, revision=revision or None), str)
                   for n in names)


def fetch_pretrained(name: str, dest_dir: Path, *, flag: str | None = None) -> Path:
    """A local safetensors file of the backbone's pretrained weights: ``dest_dir/<tag>.safetensors``.

    An existing file is returned as it is (no model is built: cheap for ViT-H).
    Otherwise timm resolves the tag's weights (the local huggingface hub cache
    first, a download where a network exists) and applies its own conversion
    (Google ``.npz`` → timm keys, position-embedding resampling for the spec's
    image size); the state dict is written atomically. The file loads back
    through ``create_backbone(name, K, weights=path)``. Without weights anywhere:
    one :class:`WeightsError` line naming the backbone, the tag and ``flag``
    (default ``--weights NAME=``, the sweep's form; ``alorectl train`` passes
    ``--weights ``).
    """
    flag = f"--weights {name}=" if flag is None else flag
    tag = pretrained_tag(name)
    dest_dir = Path(dest_dir)
    filename = re.sub(r"[^A-Za-z0-9_.-]", "_", tag).lstrip(".") + ".safetensors"
    path = dest_dir / filename
    if Path(os.path.normpath(path)).parent != Path(os.path.normpath(dest_dir)):  # NAME_PATTERN forbids it already
        raise ConfigError(f"pretrained weights file for {name!r} would leave {dest_dir}: {path}")
    if path.is_file():
        return path
    spec = resolve(name)
    if _offline_and_not_cached(tag):  # answer at once, not after building a ViT-H to load nothing into it
        raise _hub_error(name, tag, OSError("offline"), flag)
    try:
        model = timm.create_model(tag, pretrained=True, **spec.kwargs)
    except (OSError, RuntimeError) as err:  # huggingface_hub: not cached and no network (or a refused download)
        raise _hub_error(name, tag, err, flag) from None
    from safetensors.torch import save_file

    dest_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # another process fetching the same tag writes the same bytes
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
                  metadata={"backbone": name, "timm_tag": tag})
    return path


def weights_cache_dir() -> Path:
    """Where ``alorectl train`` keeps fetched pretrained weights: ``$ALORE_WEIGHTS_DIR`` or the user's cache."""
    if os.environ.get("ALORE_WEIGHTS_DIR"):
        return Path(os.environ["ALORE_WEIGHTS_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "alore" / "weights"


def build(spec: BackboneSpec, num_classes: int, pretrained: bool = False) -> nn.Module:
    """The plain timm model of ``spec`` (no alore bookkeeping, no local weights)."""
    return timm.create_model(spec.timm_name, pretrained=pretrained, num_classes=num_classes, **spec.kwargs)


def create_backbone(
    name: str,
    num_classes: int,
    weights: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Create a timm backbone with a fresh ``num_classes`` head.

    ``weights`` is None or ``"random"`` (random initialisation), ``"timm"``/``"hub"``
    (timm's pretrained weights for the tag, from the hub cache or a download), or
    a path to a local weights file. Pass ``device="meta"`` to build the
    architecture without allocating memory (parameter counts of ViT-H).
    """
    if num_classes < 0:
        raise WeightsError(f"num_classes must be >= 0, got {num_classes}")
    spec = resolve(name)
    if weights == RANDOM:
        weights = None
    hub = weights in HUB
    with torch.device(device) if device is not None else contextlib.nullcontext():
        try:
            model = build(spec, num_classes, pretrained=hub)
        except (OSError, RuntimeError) as err:  # timm/huggingface_hub: no network, no cache
            if not hub:
                raise
            raise _hub_error(name, pretrained_tag(name), err, "--weights ") from None
    if weights is not None and not hub:
        load_weights(model, weights)
    alore_state.attach(model, backbone=alore_state.Backbone(name, spec.timm_name, dict(spec.kwargs), num_classes))
    return model


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Module paths of the classifier, from timm's ``pretrained_cfg``."""
    classifier = model.pretrained_cfg.get("classifier", "head")
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


def is_head_param(model: nn.Module, param_name: str) -> bool:
    return any(param_name == p or param_name.startswith(p + ".") for p in head_prefixes(model))


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict without unpickling anything (safetensors, ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise UnknownChoiceError("weights file type", path.suffix or path.name, WEIGHT_SUFFIXES)
    try:
        # timm's reader: safetensors or torch.load(weights_only=True), unwraps 'state_dict'/'model'.
        with warnings.catch_warnings():  # torch's pickle-protocol chatter would add lines to a one-line error
            warnings.simplefilter("ignore")
            state = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as err:  # any decoding failure is a bad file, not a bug here
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise WeightsError(f"refused weights file {path}: it holds Python objects, not only tensors "
                               "(loaded with weights_only=True; save a state dict or use .safetensors)") from None
        raise WeightsError(f"{path} is not a valid {_format_name(path)} weights file "
                           f"({err.__class__.__name__})") from None
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a valid {_format_name(path)} weights file (no state dict of tensors)")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _format_name(path: Path) -> str:
    return {".safetensors": "safetensors", ".npz": "numpy .npz"}.get(path.suffix, f"PyTorch {path.suffix}")


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a local weights file; only the classifier's keys may be missing or differ."""
    path = Path(path)
    if path.suffix == ".npz":
        return _load_npz(model, path)
    state = read_weights_file(path)
    own = model.state_dict()
    # A checkpoint's own head (other classes, or 21k classes) is dropped, as timm does.
    state = {k: v for k, v in state.items() if not (is_head_param(model, k) and (k not in own or own[k].shape != v.shape))}
    missing = [k for k in own if k not in state and not is_head_param(model, k)]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and own[k].shape != v.shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            part for part in (
                f"missing {_few(missing)}" if missing else "",
                f"unexpected {_few(unexpected)}" if unexpected else "",
                f"shape mismatch {_few(wrong)}" if wrong else "",
            ) if part
        )
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        raise WeightsError(f"weights file {path} does not fit backbone {arch!r}: {detail}")
    model.load_state_dict(state, strict=False)


def _load_npz(model: nn.Module, path: Path) -> None:
    # Google's original ViT .npz checkpoints: timm's converter (custom_load) does the mapping.
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if not hasattr(model, "load_pretrained"):
        raise WeightsError(f"{path}: .npz weights are only supported for ViT backbones")
    try:  # a readable archive of arrays first, so a broken file is named as one (not as a misfit)
        import numpy as np

        with np.load(path, allow_pickle=False) as archive:
            if not archive.files:
                raise ValueError("no arrays")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise WeightsError(f"{path} is not a valid numpy .npz weights file ({err.__class__.__name__})") from None
    try:
        model.load_pretrained(str(path))
    except Exception as err:
        raise WeightsError(f"weights file {path} does not fit this ViT: {err.__class__.__name__}: {err}") from None


def _few(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def data_config(model: nn.Module) -> dict[str, Any]:
    """Input size and normalization the backbone was pre-trained with (timm's ``pretrained_cfg``)."""
    cfg = model.pretrained_cfg
    size = cfg.get("input_size", (3, 224, 224))[-1]
    info = alore_state.of(model).backbone
    name = info.name if info else None
    if name in BACKBONES and BACKBONES[name].image_size:
        size = BACKBONES[name].image_size
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is not None and getattr(patch_embed, "img_size", None):
        size = patch_embed.img_size[-1]  # overridden at creation (small test/demo backbones)
    return {"image_size": int(size), "mean": tuple(cfg.get("mean", (0.5,) * 3)),
            "std": tuple(cfg.get("std", (0.5,) * 3))}
