"""One contract for every method on every small backbone (in the spirit of PEFT's custom-model tests):
apply -> exactly the intended parameters train -> forward/backward -> merge -> same outputs, plain timm keys."""

from __future__ import annotations

import pytest
import timm
import torch

import alore
from alore.backbones import BACKBONES, data_config, is_head_param
from alore.errors import AloreError, ConfigError, NotMergeableError, UnknownChoiceError

SMALL = ["vit_test", "swin_test", "convnext_test"]
# Combinations the architecture rules out, and the error that says so.
UNSUPPORTED = {
    ("swin_test", "vpt"), ("swin_test", "vpt_shallow"),
    ("convnext_test", "vpt"), ("convnext_test", "vpt_shallow"), ("convnext_test", "alore_attn"),
}
TEST_CASES = [(b, m) for b in SMALL for m in sorted(alore.METHODS)]
# Whether each method, with its defaults, starts as the backbone. Every method must say (see
# test_every_method_declares_whether_it_starts_as_the_backbone), and both answers are checked.
STARTS_AS_IDENTITY = {
    "alore": True, "alore_attn": True, "repadapter": True, "lora": True, "adaptformer": True,  # zero up-projections
    "bitfit": True, "linear": True, "full": True,  # nothing added
    "adapter": False,  # NOAH's adapter trains from trunc_normal(0.02) weights: its branch is not 0 at init
    "ssf": False,  # gamma ~ N(1, 0.02), beta ~ N(0, 0.02), as the official SSF code
    "vpt": False, "vpt_shallow": False,  # the prompts are extra tokens the attention sees from the start
}


def backbone(name: str, classes: int = 5) -> torch.nn.Module:
    model = alore.create_backbone(name, classes).double()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("gamma"):  # ConvNeXt layer scale starts at 1e-6 and would hide every block
                p.fill_(1.0)
    return model


def inputs(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    size = data_config(model)["image_size"]
    return torch.randn(batch, 3, size, size, dtype=torch.float64)


def plain_keys(name: str, classes: int = 5) -> set[str]:
    return set(alore.create_backbone(name, classes, device="meta").state_dict())


def plain_params(name: str, classes: int = 5) -> set[str]:
    return {n for n, _ in alore.create_backbone(name, classes, device="meta").named_parameters()}


def randomize_trainable(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("bb,method", TEST_CASES)
def test_method_contract(bb: str, method: str) -> None:
    model = backbone(bb)
    if (bb, method) in UNSUPPORTED:
        with pytest.raises(AloreError, match="valid choices"):
            alore.apply(model, method)
        return
    x = inputs(model)
    model.eval()
    with torch.no_grad():
        before = model(x)
    alore.apply(model, method)

    # Exactly the intended parameters train: the head, the method's own, and (bitfit/full) chosen backbone ones.
    keys = plain_params(bb)
    head = {n for n in keys if is_head_param(model, n)}
    trainable_backbone = {n.replace(".base_layer", "") for n, p in model.named_parameters()
                          if p.requires_grad and n.replace(".base_layer", "") in keys - head}
    added = [(n, p) for n, p in model.named_parameters() if n.replace(".base_layer", "") not in keys]
    assert all(p.requires_grad for _, p in added), "every parameter the method adds must train"
    assert head and all(p.requires_grad for n, p in model.named_parameters() if n in head)
    if method == "full":
        assert trainable_backbone == keys - head
    elif method == "bitfit":
        assert trainable_backbone and all(n.endswith("bias") for n in trainable_backbone)
        assert not added
    else:
        assert not trainable_backbone, f"{method} must freeze the backbone, trains {sorted(trainable_backbone)[:3]}"
        assert bool(added) == (method != "linear")
    assert alore.count_trainable(model) == sum(p.numel() for n, p in model.named_parameters()
                                               if p.requires_grad and n not in head)

    with torch.no_grad():
        unchanged = torch.allclose(model(x), before, rtol=0, atol=1e-10)
    assert unchanged == STARTS_AS_IDENTITY[method], \
        f"{method} {'starts' if unchanged else 'does not start'} as the backbone, STARTS_AS_IDENTITY says otherwise"

    # Move the method away from its identity init, or any merge would look right, and zero-initialised
    # factors would hide a missing gradient (d/dA of B·A is 0 while B = 0).
    randomize_trainable(model)

    # Forward/backward reaches every trainable tensor with a nonzero gradient.
    model.train()
    model(x).logsumexp(-1).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not no_grad, f"{method}: no gradient reaches {no_grad[:4]}"

    model.eval()
    with torch.no_grad():
        adapted = model(x)
    assert not torch.allclose(adapted, before, atol=1e-6), "randomized method must change the outputs"

    if not alore.METHODS[method].mergeable:
        with pytest.raises(NotMergeableError, match=f"'{method}'.*mergeable methods: alore"):
            alore.merge(model)
        return
    plain = alore.merge(model).eval()
    spec = BACKBONES[bb]
    fresh = timm.create_model(spec.timm_name, num_classes=5, **spec.kwargs).double().eval()
    fresh.load_state_dict(plain.state_dict(), strict=True)  # the plain timm architecture, same keys
    with torch.no_grad():
        out = fresh(x)
    rel = ((out - adapted).norm() / adapted.norm()).item()
    assert rel < 1e-5, f"merged and adapted outputs differ: relative error {rel:.2e}"
    assert type(plain) is type(fresh) and not any(isinstance(m, alore.methods.Wrapper) for m in plain.modules())


def test_every_method_declares_whether_it_starts_as_the_backbone() -> None:
    assert set(STARTS_AS_IDENTITY) == set(alore.METHODS)


@pytest.mark.parametrize("method,overrides,identity", [
    ("adapter", {"style": "pfeiffer"}, True),   # VPT's adapter, zero up-projection
    ("adapter", {"init": "zero_up"}, True),
    ("adapter", {"init": "xavier"}, False),     # NOAH adapter_super.py's own init
    ("adaptformer", {"input": "norm"}, True),
])
def test_options_that_change_the_init(method: str, overrides: dict, identity: bool) -> None:
    model = backbone("vit_test").eval()
    x = inputs(model)
    with torch.no_grad():
        before = model(x)
        after = alore.apply(model, method, **overrides)(x)
    assert torch.allclose(after, before, rtol=0, atol=1e-10) == identity


def test_apply_rejects_unknown_method_and_option() -> None:
    model = alore.create_backbone("vit_test", 3)
    with pytest.raises(UnknownChoiceError, match="unknown method 'alora'; valid choices: adapter, adaptformer, alore"):
        alore.apply(model, "alora")
    with pytest.raises(UnknownChoiceError, match="unknown option.*'ranks'.*valid choices:.*rank"):
        alore.apply(model, "alore", ranks=4)


def test_apply_twice_is_refused() -> None:
    model = alore.apply(alore.create_backbone("vit_test", 3), "alore")
    with pytest.raises(ConfigError, match="already adapted with 'alore'"):
        alore.apply(model, "lora")


def test_merge_needs_an_adapted_model() -> None:
    with pytest.raises(ConfigError, match="alore.apply"):
        alore.merge(alore.create_backbone("vit_test", 3))


@pytest.mark.parametrize("method,overrides,message", [
    ("alore", {"rank": 0}, "rank must be >= 1, got 0"),
    ("alore", {"dropout": 1.5}, "dropout must be in \\[0, 1\\), got 1.5"),
    ("repadapter", {"groups": 3}, "groups=3 must divide bottleneck=8"),
    ("lora", {"targets": ["q", "x"]}, "unknown LoRA target 'x'; valid choices: fc1, fc2, k, proj, q, v"),
    ("vpt", {"prompts": 0}, "prompts must be >= 1"),
    ("adapter", {"style": "houlsby"}, "unknown adapter style 'houlsby'; valid choices: noah, pfeiffer"),
    ("adapter", {"init": "kaiming"}, "unknown adapter init 'kaiming'; valid choices: trunc_normal, xavier, zero_up"),
    ("adaptformer", {"input": "fc1"}, "unknown AdaptFormer input 'fc1'; valid choices: norm, residual"),
])
def test_bad_config_values_name_the_value(method: str, overrides: dict, message: str) -> None:
    with pytest.raises(AloreError, match=message):
        alore.apply(alore.create_backbone("vit_test", 3), method, **overrides)
