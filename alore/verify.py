"""Checking a received folder's files against what they claim, before anything is built from them or published.

An export folder (``alorectl export``), a sweep cell's result folder and a run folder may come from someone
else, so each file is checked before it is trusted:

* it is a regular file of the folder itself, opened without following a symbolic link (a planted link would
  publish or load a foreign file);
* a safetensors file is parsed by hand first, every size bounded before it is read: the header's length
  (:data:`MAX_HEADER`), each tensor's declared bytes against its dtype and shape, and the tensors together
  against the file's own size, so a file can never make us allocate more than it holds;
* its tensors have the names and shapes that its claim implies, worked out on the meta device (no memory):
  an adapter's metadata (backbone, method, options, classes) builds the adapted model, whose method tensors
  must be exactly the stored ones; merged weights are the plain backbone's state dict at the card's classes;
* a card agrees with its adapter and with the backbone it names, and its files with their recorded sha256.

Every refusal is a :class:`~alore.errors.WeightsError`: one line naming the file and what is wrong.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import AloreError, WeightsError

#: The longest safetensors header read (the safetensors library's own limit is 100 MB; alore's largest
#: backbone, ViT-H with an adapter, needs well under 1 MB).
MAX_HEADER = 8 << 20
#: The largest card / metrics / result JSON file read.
MAX_JSON = 4 << 20
#: Bytes per element of safetensors' dtypes.
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
               "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
#: The card's fields a loader passes on to timm as ``pretrained_cfg`` (the preprocessing).
PREPROCESSING_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")


# ---- files of the folder itself ----------------------------------------------------------------------

@contextlib.contextmanager
def opened(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """``path`` opened for reading: a regular file, never through a symbolic link (the last part of the path)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise WeightsError(f"refusing {path}: it is a symbolic link (to {os.readlink(path)}); a result or "
                               "export folder must hold its own files, not links to others") from None
        if err.errno == errno.ENOENT:
            raise WeightsError(f"{path} is missing") from None
        raise WeightsError(f"cannot read {path}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise WeightsError(f"refusing {path}: not a regular file")
        yield f


def exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` is there at all (a link counts: :func:`opened` then refuses it)."""
    return os.path.lexists(path)


def read_json(path: str | os.PathLike, missing_ok: bool = True) -> dict[str, Any]:
    """A JSON object from a file of the folder (at most :data:`MAX_JSON` bytes); ``{}`` when it is missing."""
    path = Path(path)
    if missing_ok and not exists(path):
        return {}
    with opened(path) as f:
        data = f.read(MAX_JSON + 1)
    if len(data) > MAX_JSON:
        raise WeightsError(f"refusing {path}: larger than {MAX_JSON >> 20} MiB, more than alore ever writes there")
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise WeightsError(f"cannot read {path}: not valid JSON ({type(err).__name__})") from None
    if not isinstance(value, dict):
        raise WeightsError(f"cannot read {path}: a JSON object expected, got {type(value).__name__}")
    return value


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with opened(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def copy(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy a file of a folder (never through a link) to ``target``, a new file."""
    with opened(source) as f, open(target, "xb") as out:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            out.write(chunk)
    return Path(target)


# ---- safetensors, parsed with every size bounded ------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Header:
    path: Path
    shapes: dict[str, tuple[int, ...]]   # tensor name -> shape
    dtypes: dict[str, str]
    metadata: dict[str, str]


def header(path: str | os.PathLike) -> Header:
    """The checked header of a safetensors file: bounded length, known dtypes, each tensor's bytes what its
    shape and dtype say, the tensors laid end to end over exactly the rest of the file."""
    with opened(path) as f:
        return _parse(f, Path(path))


def _parse(f: IO[bytes], path: Path) -> Header:
    size = os.fstat(f.fileno()).st_size
    head = f.read(8)
    if len(head) < 8:
        raise WeightsError(f"{path} is not a valid safetensors file (shorter than its 8-byte header length)")
    n = int.from_bytes(head, "little")
    if n > MAX_HEADER:
        raise WeightsError(f"refusing {path}: its safetensors header claims {n} bytes (at most {MAX_HEADER} "
                           "are read)")
    if 8 + n > size:
        raise WeightsError(f"{path} is not a valid safetensors file (its header claims {n} bytes, the file "
                           f"has {size}): truncated or not safetensors")
    raw = f.read(n)
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise WeightsError(f"{path} is not a valid safetensors file (its header is not JSON)") from None
    if not isinstance(doc, dict):
        raise WeightsError(f"{path} is not a valid safetensors file (its header is not a JSON object)")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WeightsError(f"{path} is not a valid safetensors file (its metadata is not a map of strings)")
    data_size = size - 8 - n
    shapes, dtypes, spans = {}, {}, []
    for name, entry in doc.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            ok = (dtype in DTYPE_BYTES and isinstance(shape, list)
                  and all(type(d) is int and d >= 0 for d in shape) and type(begin) is int and type(end) is int)
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise WeightsError(f"{path} is not a valid safetensors file (tensor {name!r}: bad dtype, shape or "
                               "offsets)")
        claimed = math.prod(shape) * DTYPE_BYTES[dtype]
        if not 0 <= begin <= end <= data_size or end - begin != claimed:
            raise WeightsError(f"refusing {path}: tensor {name!r} claims {claimed} bytes at [{begin}, {end}) of "
                               f"{data_size} bytes of data")
        shapes[name], dtypes[name] = tuple(shape), dtype
        spans.append((begin, end))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise WeightsError(f"refusing {path}: its tensors overlap or leave gaps in the data")
        position = end
    if position != data_size:
        raise WeightsError(f"refusing {path}: {data_size - position} bytes after its last tensor")
    return Header(path, shapes, dtypes, metadata)


def load(path: str | os.PathLike) -> dict[str, Any]:
    """The tensors of a checked safetensors file, read through the descriptor that was checked (no link)."""
    from safetensors.torch import load as load_bytes

    with opened(path) as f:  # one descriptor: the bytes read are the bytes checked
        _parse(f, Path(path))
        size = os.fstat(f.fileno()).st_size
        f.seek(0)
        return load_bytes(f.read(size))


# ---- what the tensors must be -------------------------------------------------------------------------

def _meta_model(backbone: str, num_classes: int, method: str | None = None, config: dict[str, Any] | None = None):
    """The backbone (adapted with ``method``) on the meta device: shapes without memory."""
    import torch

    from .api import apply
    from .backbones import create_backbone

    model = create_backbone(backbone, num_classes, device="meta")
    if method is not None:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            apply(model, method, **(config or {}))
    return model


def adapter_shapes(backbone: str, num_classes: int, method: str, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Names and shapes an adapter file of this backbone, method and options holds (see ``adapter_state_dict``)."""
    from .api import adapter_keys

    model = _meta_model(backbone, num_classes, method, config)
    keys = adapter_keys(model)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k in keys}


def plain_shapes(backbone: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the plain backbone's state dict (what merged weights hold)."""
    return {k: tuple(v.shape) for k, v in _meta_model(backbone, num_classes).state_dict().items()}


def compare(path: Path, found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], claim: str) -> None:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k} {found[k]} vs {expected[k]}" for k in expected if k in found and found[k] != expected[k]]
    if missing or unexpected or wrong:
        parts = [f"{label} {_few(items)}" for label, items in (("missing", missing), ("unexpected", unexpected),
                                                                ("shape mismatch", wrong)) if items]
        raise WeightsError(f"refusing {path}: its tensors are not those of {claim}: {'; '.join(parts)}")


def _cut(text: str, limit: int = 240) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_json(value: Any) -> Any:
    """``value`` as a JSON file records it (tuples become lists): what a card or metadata is compared with."""
    return json.loads(json.dumps(dict(value), default=str))


def _few(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


@dataclasses.dataclass(frozen=True)
class AdapterMeta:
    """What an adapter file says about itself, checked against its tensors."""

    path: Path
    backbone: str
    method: str
    config: dict[str, Any]
    task: str | None
    num_classes: int


def adapter(path: str | os.PathLike) -> AdapterMeta:
    """Check ``adapter.safetensors``: it parses (bounded), its metadata names a backbone, method and options,
    and its tensors are exactly that adapted model's method tensors."""
    from .backbones import resolve

    path = Path(path)
    head = header(path)
    try:
        meta = {k: json.loads(v) for k, v in head.metadata.items()}
        backbone, method = meta["backbone"], meta["method"]
        name, method_name = backbone["name"], method["name"]
        config = method.get("config") or {}
        classes = int(meta.get("num_classes") or backbone["num_classes"])
        task = meta.get("task")
        if not (isinstance(name, str) and isinstance(method_name, str) and isinstance(config, dict)
                and (task is None or isinstance(task, str)) and classes >= 1):
            raise TypeError
    except (KeyError, TypeError, ValueError, AttributeError):
        raise WeightsError(f"{path} has no alore metadata (backbone, method); it was not written by alore") from None
    claim = _cut(f"{name}/{method_name} with {config} and {classes} classes")
    try:
        spec = resolve(name)
        if backbone.get("timm_name", spec.timm_name) != spec.timm_name or \
                backbone.get("kwargs", _as_json(spec.kwargs)) != _as_json(spec.kwargs):
            raise WeightsError(f"refusing {path}: its metadata describes backbone {name} as "
                               f"{backbone.get('timm_name')} {backbone.get('kwargs')}, alore builds it as "
                               f"{spec.timm_name} {dict(spec.kwargs)}")
        expected = adapter_shapes(name, classes, method_name, config)
    except WeightsError:
        raise
    except Exception as err:  # an unknown backbone or method, an option it refuses: one line, never a trace
        raise WeightsError(f"refusing {path}: its metadata ({claim}) does not describe a model alore builds: "
                           f"{err if isinstance(err, AloreError) else type(err).__name__}") from None
    compare(path, head.shapes, expected, f"its metadata ({claim})")
    return AdapterMeta(path, name, method_name, dict(config), task, classes)


def merged(path: str | os.PathLike, backbone: str, num_classes: int) -> Header:
    """Check merged weights: they parse (bounded) and are the plain ``backbone``'s state dict at ``num_classes``."""
    path = Path(path)
    head = header(path)
    compare(path, head.shapes, plain_shapes(backbone, num_classes), f"{backbone} with {num_classes} classes")
    return head


def run_files(folder: str | os.PathLike, backbone: str, task: str, method: str, adapter_name: str,
              merged_name: str) -> AdapterMeta:
    """A result folder's adapter (and merged weights, when present) checked, and the adapter's metadata the
    result ``backbone``/``task``/``method`` it is published as."""
    folder = Path(folder)
    info = adapter(folder / adapter_name)
    claimed, stored = (backbone, task, method), (info.backbone, info.task, info.method)
    if stored != claimed:
        raise WeightsError(f"refusing {info.path}: it holds {'/'.join(map(str, stored))}, not the result "
                           f"{'/'.join(claimed)} it is recorded as")
    if exists(folder / merged_name):
        merged(folder / merged_name, info.backbone, info.num_classes)
    return info


def export_folder(folder: str | os.PathLike, card_name: str, adapter_name: str, merged_name: str) -> tuple[
        dict[str, Any], AdapterMeta]:
    """An export folder's card and files checked against each other: (card, adapter)."""
    from .backbones import resolve

    folder = Path(folder)
    card = read_json(folder / card_name, missing_ok=False)
    info = adapter(folder / adapter_name)
    where = folder / card_name
    for key, stored in (("backbone", info.backbone), ("method", info.method), ("task", info.task),
                        ("num_classes", info.num_classes), ("method_options", info.config)):
        if key in card and card[key] != stored:
            raise WeightsError(f"refusing {where}: its {key} {card[key]!r} is not the adapter's {stored!r}")
    spec = resolve(info.backbone)
    if card.get("timm_name", spec.timm_name) != spec.timm_name or \
            card.get("timm_kwargs", _as_json(spec.kwargs)) != _as_json(spec.kwargs):
        raise WeightsError(f"refusing {where}: its timm model {card.get('timm_name')!r} "
                           f"{card.get('timm_kwargs')} is not backbone {info.backbone}'s {spec.timm_name!r}")
    files = [adapter_name]
    if exists(folder / merged_name):
        merged(folder / merged_name, info.backbone, info.num_classes)
        files.append(merged_name)
    recorded = card.get("sha256") or {}
    if not isinstance(recorded, dict):
        raise WeightsError(f"refusing {where}: its sha256 is not a map of file names")
    for name in files:
        if name in recorded and sha256(folder / name) != recorded[name]:
            raise WeightsError(f"refusing {folder / name}: its sha256 is not the one {card_name} records; the file "
                               "was changed or replaced after the export")
    return card, info
