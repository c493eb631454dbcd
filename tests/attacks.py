"""What the trust-boundary tests plant in a work folder."""


class Planted:
    """What an attacker writes as tuner.pkl: unpickling it creates a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---- result and export folders that lie about their files (alore.verify refuses each) ------------------------

def write_result(folder, method: str = "alore", task: str = "digits", classes: int = 10, **options) -> dict:
    """A result folder as a finished run leaves it (adapter.safetensors, merged.safetensors for a method that
    merges, metrics.json) for a random demo backbone: the files are real, only the training is left out."""
    import dataclasses
    import json
    from pathlib import Path

    import alore
    from alore import state
    from alore.api import adapter_state_dict, merge, save_weights
    from alore.methods import get_method

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = alore.apply(alore.create_backbone("demo", classes), method, **options)
    info = state.of(model)
    meta = {"backbone": dataclasses.asdict(info.backbone), "method": info.method_info(), "task": task,
            "num_classes": classes}
    save_weights(adapter_state_dict(model), folder / "adapter.safetensors", meta)
    if get_method(method).mergeable:
        save_weights(merge(model).state_dict(), folder / "merged.safetensors", meta)
    metrics = {"task": task, "num_classes": classes, "test_acc": 50.0, "seed": 42, "suite": "vtab"}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return meta


def rewrite(path, change) -> None:
    """Rewrite the safetensors file ``path`` with ``change(tensors, metadata)`` applied (both dicts, in place)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)


def huge_tensor_claim(path) -> None:
    """A header that declares one tensor of 2**40 float32 (4 TiB) in a file of a few bytes."""
    import json

    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 4 << 40]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)


def huge_header(path) -> None:
    """A file whose first 8 bytes claim a 1 TiB header."""
    path.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
