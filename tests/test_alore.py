"""ALoRE itself (paper section 3.2): the Kronecker fast path, sharing, placement, merge, expert analysis."""

from __future__ import annotations

import pytest
import torch

import alore
from alore.errors import AloreError, ConfigError
from alore.methods.alore import ALoReModule, SharedScales, expert_subsets, use_experts
from alore.methods.base import AffineAround


def adapted(**overrides) -> torch.nn.Module:
    model = alore.apply(alore.create_backbone("vit_test", 5).double(), "alore", **overrides)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def alore_modules(model: torch.nn.Module) -> list[ALoReModule]:
    return [m for m in model.modules() if isinstance(m, ALoReModule)]


@pytest.mark.parametrize("dim,n,rank", [(64, 4, 4), (48, 3, 2), (32, 1, 8), (768, 4, 4)])
def test_fast_path_equals_explicit_kronecker_product(dim: int, n: int, rank: int) -> None:
    scales = SharedScales(n).double()
    module = ALoReModule(dim, rank, scales, dropout=0.0).double()
    with torch.no_grad():
        module.up.normal_()
        scales.weight.normal_()
    x = torch.randn(3, 7, dim, dtype=torch.float64)
    explicit = x @ sum(torch.kron(scales.weight[i], module.down[i] @ module.up[i]) for i in range(n))
    assert torch.allclose(module.delta(x), explicit, rtol=1e-10, atol=1e-10)
    assert torch.allclose(module(x), x + explicit, rtol=1e-10, atol=1e-10)


def test_scales_are_shared_by_every_module_and_counted_once() -> None:
    model = alore.apply(alore.create_backbone("vit_test", 5), "alore")
    modules = alore_modules(model)
    assert len(modules) == 2 * 6  # before MHSA and before FFN in each of test_vit's 6 blocks
    assert all(m.scales is model.alore_experts for m in modules)
    d, r, n, layers = 64, 4, 4, 6
    assert alore.count_trainable(model) == 4 * d * r * layers + n**3  # table 10: 4·d·r·L + n³


def test_default_placement_is_before_mhsa_and_ffn() -> None:
    model = alore.apply(alore.create_backbone("vit_test", 5), "alore")
    wrapped = {name.split(".", 2)[2] for name, m in model.named_modules() if isinstance(m, AffineAround)}
    assert wrapped == {"attn.qkv", "mlp.fc1"}
    assert all(m.position == "pre" for m in model.modules() if isinstance(m, AffineAround))


@pytest.mark.parametrize("locations", [["after_attn"], ["after_ffn"], ["after_attn", "after_ffn"],
                                       ["before_attn", "after_attn", "before_ffn", "after_ffn"]])
def test_every_location_merges_exactly(locations: list[str]) -> None:
    model = adapted(locations=locations)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    plain = alore.merge(model).eval()
    with torch.no_grad():
        ref = model(x)
        assert ((plain(x) - ref).norm() / ref.norm()).item() < 1e-10


def test_first_k_layers_only() -> None:
    model = alore.apply(alore.create_backbone("vit_test", 5), "alore", layers=2)
    blocks = {name.split(".")[1] for name, m in model.named_modules() if isinstance(m, AffineAround)}
    assert blocks == {"0", "1"}
    with pytest.raises(ConfigError, match="layers=7 is out of range for a backbone with 6 blocks; choose 1..6"):
        alore.apply(alore.create_backbone("vit_test", 5), "alore", layers=7)


def test_experts_must_divide_the_feature_size() -> None:
    with pytest.raises(ConfigError, match=r"experts=5 does not divide the feature size d=64; valid choices: 1, 2, 4, 8"):
        alore.apply(alore.create_backbone("vit_test", 5), "alore", experts=5)


def test_unknown_location_lists_the_valid_ones() -> None:
    with pytest.raises(AloreError, match="unknown location 'middle'; valid choices: after_attn, after_ffn, before_attn"):
        alore.apply(alore.create_backbone("vit_test", 5), "alore", locations=["middle"])


def test_dropout_sits_before_the_residual_add() -> None:
    scales = SharedScales(4)
    module = ALoReModule(16, 2, scales, dropout=0.5)
    with torch.no_grad():
        module.up.normal_()
    x = torch.randn(64, 16)
    module.train()
    out = module(x)
    # Dropped entries of the branch leave exactly the residual input there.
    assert (out == x).float().mean() > 0.3
    module.eval()
    assert torch.allclose(module(x), x + module.delta(x))


def test_expert_subsets_follow_table_22() -> None:
    subsets = expert_subsets(4)
    assert subsets["Single-2"] == [1]
    assert subsets["Increment-3"] == [0, 1, 2]
    assert subsets["Sliced-1"] == [1, 2, 3]
    assert len(subsets) == 12


def test_keeping_a_subset_of_experts_equals_zeroing_the_others() -> None:
    model = adapted()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        full = model(x)
        with use_experts(model, [0, 1, 2, 3]):
            assert torch.allclose(model(x), full)
        with use_experts(model, [2]):
            single = model(x)
        assert torch.allclose(model(x), full), "the full model is restored afterwards"
        # The same as a model whose other experts' scales are zero.
        model.alore_experts.weight[[0, 1, 3]] = 0.0
        assert torch.allclose(model(x), single)
    assert not torch.allclose(single, full)


def test_expert_index_out_of_range() -> None:
    with pytest.raises(AloreError, match="unknown expert index 4; valid choices: 0, 1, 2, 3"):
        with use_experts(adapted(), [4]):
            pass


@torch.no_grad()
def test_merge_on_the_real_vit_b_architecture_with_a_handful_of_tokens() -> None:
    model = alore.apply(alore.create_backbone("vit_b", 10), "alore")
    for p in model.parameters():
        if p.requires_grad:
            p.add_(0.02 * torch.randn_like(p))
    plain = alore.merge(model)
    assert set(plain.state_dict()) == set(alore.create_backbone("vit_b", 10, device="meta").state_dict())
    model.eval(), plain.eval()
    tokens = torch.randn(1, 6, 768)  # the blocks are where ALoRE acts; six tokens keep this cheap
    ref = model.norm(model.blocks(tokens))
    out = plain.norm(plain.blocks(tokens))
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5
