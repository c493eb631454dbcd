"""Each baseline computes what the public code behind the paper's row computes (DESIGN: method contract).

For every baseline a reference is written here from the equations of the file its module's
docstring names (rewritten in plain torch.nn.functional, not copied), and run in float64 on
timm's tiny test ViT with the same backbone weights and every method parameter moved away from
its init. The adapted model's tokens and logits must equal the reference's to 1e-10, in eval
mode and, where the method has a dropout, in train mode with the same random stream (so the
dropout sits where the reference puts it, with the mask shape the reference draws).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import alore
from alore.backbones import is_head_param

ATOL = 1e-10
P = 0.5  # dropout everywhere a method has one: masks that matter


class Ref(nn.Module):
    """A reference layer or block: ``fn(self, x)``, holding the timm modules it reuses (so train() reaches them)."""

    def __init__(self, fn: Callable[..., torch.Tensor], **modules: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        for name, module in modules.items():
            self.add_module(name, module)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.fn(self, x)


def setup(method: str, **overrides) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """(plain backbone, the same backbone adapted with every method tensor randomised, inputs)."""
    plain = alore.create_backbone("vit_test", 5, weights=None).double().eval()
    assert plain.global_pool == "token" and plain.num_prefix_tokens == 1 and not plain.no_embed_class
    adapted = alore.apply(copy.deepcopy(plain), method, **overrides).eval()
    added = [(n, p) for n, p in adapted.named_parameters() if p.requires_grad and not is_head_param(adapted, n)]
    assert added
    with torch.no_grad():
        for _, p in added:
            p.copy_(p + 0.3 * torch.randn_like(p))  # zero up-projections would hide the whole branch
    return plain, adapted, torch.randn(3, 3, 32, 32, dtype=torch.float64)


def assert_same(adapted: nn.Module, ref: nn.Module, x: torch.Tensor, train_too: bool = True,
                features: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None) -> None:
    features = features or (lambda model, inputs: model.forward_features(inputs))
    for train in (False, True) if train_too else (False,):
        adapted.train(train), ref.train(train)
        with torch.no_grad():
            torch.manual_seed(1)
            got = (adapted.forward_features(x), adapted(x))
            torch.manual_seed(1)
            want = (features(ref, x), ref(x))
        for g, w, what in zip(got, want, ("tokens", "logits")):
            err = (g - w).abs().max().item()
            assert err < ATOL, f"{what} differ from the reference by {err:.2e} (train={train})"


# ---- LoRA: microsoft/LoRA loralib/layers.py, MergedLinear(enable_lora=[True, False, True]) ------------------

def test_lora_matches_loralib_merged_linear_on_q_and_v() -> None:
    rank, alpha = 4, 12.0
    plain, adapted, x = setup("lora", rank=rank, alpha=alpha, dropout=P)
    ref, d = copy.deepcopy(plain), plain.embed_dim
    for i, blk in enumerate(ref.blocks):
        lora = adapted.blocks[i].attn.qkv
        lora_a = torch.cat(list(lora.lora_A))  # loralib stacks the enabled groups: (2r, d) and (2d, r)
        lora_b = torch.cat(list(lora.lora_B))

        def qkv(self, h, lora_a=lora_a, lora_b=lora_b):
            after_a = F.linear(F.dropout(h, P, self.training), lora_a)
            # the grouped 1x1 conv1d of MergedLinear: group g of B reads group g of A
            after_b = F.conv1d(after_a.transpose(-2, -1), lora_b.unsqueeze(-1), groups=2).transpose(-2, -1)
            zero = torch.zeros_like(after_b[..., :d])
            padded = torch.cat([after_b[..., :d], zero, after_b[..., d:]], dim=-1)  # zero_pad: rows of q and v
            return self.base(h) + padded * (alpha / rank)

        blk.attn.qkv = Ref(qkv, base=blk.attn.qkv)
    assert_same(adapted, ref, x)


# ---- SSF: dongzelian/SSF models/vision_transformer.py, ssf_ada after every operation ------------------------

def test_ssf_matches_ssf_ada_after_every_operation() -> None:
    plain, adapted, x = setup("ssf")
    ref = copy.deepcopy(plain)
    ops = [name for name, m in plain.named_modules()
           if isinstance(m, (nn.Linear, nn.LayerNorm, nn.Conv2d)) and not is_head_param(plain, name)]
    per_block = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
    assert sorted(ops) == sorted(["patch_embed.proj", "norm"] + [f"blocks.{i}.{op}" for i in range(len(plain.blocks))
                                                                 for op in per_block])
    for name in ops:
        wrapper = adapted.get_submodule(name)
        scale, shift = wrapper.scale, wrapper.shift

        def ssf_ada(self, h, scale=scale, shift=shift):
            y = self.op(h)
            if y.shape[-1] == scale.shape[0]:
                return y * scale + shift
            return y * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)  # the conv's channels

        ref.set_submodule(name, Ref(ssf_ada, op=ref.get_submodule(name)))
    assert_same(adapted, ref, x, train_too=False)


# ---- RepAdapter: luogen1996/RepAdapter repadapter.py, RepAdapter + forward_vit_block_adapter ----------------

def rep_adapter(h: torch.Tensor, module: nn.Module, scale: float, groups: int, training: bool) -> torch.Tensor:
    """``RepAdapter.forward``: Conv1d A, dropout, grouped Conv1d B, times s, plus x (channels first)."""
    d, r = module.dim, module.down.weight.shape[0]
    conv_a = module.down.weight.unsqueeze(-1)                      # (r, d, 1)
    conv_b = module.up_weight.reshape(d, r // groups).unsqueeze(-1)  # (d, r/g, 1): out channel o reads group o // (d/g)
    t = h.transpose(1, 2)
    a = F.conv1d(t, conv_a, module.down.bias)
    # An iid mask has the same law in either layout; drawn token-major it shares the implementation's random stream.
    a = F.dropout(a.transpose(1, 2).contiguous(), P, training).transpose(1, 2)
    t = F.conv1d(a, conv_b, module.up_bias, groups=groups) * scale + t
    return t.transpose(1, 2)


def test_repadapter_matches_the_official_repblock() -> None:
    scale = 5.0
    plain, adapted, x = setup("repadapter", scale=scale, dropout=P)
    ref = copy.deepcopy(plain)
    for i, blk in enumerate(ref.blocks):
        attn_ad, mlp_ad = adapted.blocks[i].attn.qkv.transform, adapted.blocks[i].mlp.fc1.transform
        # x + attn(A_attn(norm1(x))); x + mlp(A_mlp(norm2(x))): the adapters sit right after the norms
        blk.norm1 = Ref(lambda self, h, ad=attn_ad: rep_adapter(self.norm(h), ad, scale, 2, self.training),
                        norm=blk.norm1)
        blk.norm2 = Ref(lambda self, h, ad=mlp_ad: rep_adapter(self.norm(h), ad, scale, 2, self.training),
                        norm=blk.norm2)
    assert_same(adapted, ref, x)


# ---- VPT: KMnP/vpt src/models/vit_prompt/vit.py, incorporate_prompt + forward_deep_prompt ------------------

def vpt_tokens(model: nn.Module, x: torch.Tensor, prompts: list[torch.Tensor], training: bool) -> torch.Tensor:
    """VPT's encoder output, prompts kept to the end as VPT keeps them."""
    b, m = x.shape[0], prompts[0].shape[0]
    patches = model.patch_embed(x).flatten(1, 2)  # timm's patch embedding is channels-last here: (B, H, W, d)
    h = torch.cat([model.cls_token.expand(b, -1, -1), patches], dim=1) + model.pos_embed
    h = torch.cat([h[:, :1], F.dropout(prompts[0].expand(b, -1, -1), P, training), h[:, 1:]], dim=1)
    for i, blk in enumerate(model.blocks):
        if 0 < i < len(prompts):  # deep: the previous layer's prompt outputs are replaced
            h = torch.cat([h[:, :1], F.dropout(prompts[i].expand(b, -1, -1), P, training), h[:, 1 + m:]], dim=1)
        h = blk(h)
    return model.norm(h)


@pytest.mark.parametrize("method", ["vpt", "vpt_shallow"])
def test_vpt_matches_the_official_prompted_transformer(method: str) -> None:
    plain, adapted, x = setup(method, prompts=3, dropout=P)
    ref = copy.deepcopy(plain)
    prompts = [blk.prompts for blk in adapted.blocks if getattr(blk, "prompts", None) is not None]
    assert len(prompts) == (len(plain.blocks) if method == "vpt" else 1)
    m = prompts[0].shape[0]

    def features(model, inputs):  # VPT's tokens without the prompts: what timm pools from
        h = vpt_tokens(model, inputs, prompts, model.training)
        return torch.cat([h[:, :1], h[:, 1 + m:]], dim=1)

    ref.forward = lambda inputs: ref.head(vpt_tokens(ref, inputs, prompts, ref.training)[:, 0])  # x[:, 0]
    assert_same(adapted, ref, x, features=features)


@pytest.mark.parametrize("method", ["vpt", "vpt_shallow"])
def test_vpt_prompt_dropout_draws_a_mask_per_sample(method: str) -> None:
    m = 40
    model = alore.apply(alore.create_backbone("vit_test", 5, weights=None).double(), method, prompts=m, dropout=P)
    seen: list[torch.Tensor] = []
    model.blocks[0].base_layer.register_forward_pre_hook(lambda mod, args: seen.append(args[0][:, 1:1 + m].clone()))
    raw = model.blocks[0].prompts.detach()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64).expand(4, -1, -1, -1)  # one image, four times

    with torch.no_grad():
        model.train()
        model(x)
        dropped = seen[-1]
        kept = dropped != 0
        assert 0 < kept.sum() < kept.numel()
        assert not torch.equal(kept[0], kept[1]), "the samples of a batch share one prompt dropout mask"
        assert torch.equal(dropped[kept], (raw / (1 - P)).expand_as(dropped)[kept])  # kept prompts, rescaled

        model.eval()
        model(x)
        assert torch.equal(seen[-1], raw.expand(4, -1, -1)), "eval mode must not drop prompts"


# ---- Adapter: ZhangYuanhan-AI/NOAH model/module/adapter_super.py (default) and VPT's Pfeiffer_Block ---------

def sequential_adapter_block(blk: nn.Module, ad: nn.Module, act: Callable[[torch.Tensor], torch.Tensor]) -> Ref:
    def block(self, x):
        x = x + self.blk.attn(self.blk.norm1(x))
        y = self.blk.mlp(self.blk.norm2(x))
        z = F.dropout(act(F.linear(y, ad.down.weight, ad.down.bias)), P, self.training)
        return x + y + F.linear(z, ad.up.weight, ad.up.bias)  # the adapter's residual is the MLP output

    return Ref(block, blk=blk)


@pytest.mark.parametrize("style,act", [
    ("noah", lambda z: z * torch.sigmoid(1.702 * z)),  # NOAH's QuickGELU
    ("pfeiffer", F.gelu),                               # VPT's act_layer: exact GELU
])
def test_adapter_matches_its_reference_block(style: str, act: Callable) -> None:
    overrides = {"dropout": P} | ({} if style == "noah" else {"style": style})
    plain, adapted, x = setup("adapter", **overrides)
    ref = copy.deepcopy(plain)
    for i, blk in enumerate(list(ref.blocks)):
        ref.blocks[i] = sequential_adapter_block(blk, adapted.blocks[i].mlp.adapter, act)
    assert_same(adapted, ref, x)


def test_adapter_starts_where_noah_trains_from() -> None:
    """NOAH's VisionTransformer re-initialises every nn.Linear, its adapters too: trunc_normal(0.02), zero bias."""
    noah = alore.apply(alore.create_backbone("vit_test", 5), "adapter", bottleneck=32).blocks[0].mlp.adapter
    for linear in (noah.down, noah.up):
        assert torch.count_nonzero(linear.bias) == 0
        assert 0.017 < linear.weight.std().item() < 0.023 and linear.weight.abs().max() < 0.1
    xavier = alore.apply(alore.create_backbone("vit_test", 5), "adapter", bottleneck=32, init="xavier")
    xavier = xavier.blocks[0].mlp.adapter
    bound = (6 / (64 + 32)) ** 0.5  # xavier-uniform: fan_in + fan_out = 64 + 32
    assert 0.8 * bound < xavier.down.weight.abs().max() <= bound
    assert 0 < xavier.up.bias.abs().max() < 1e-5  # N(0, 1e-6)


# ---- AdaptFormer: ShoufaChen/AdaptFormer models/custom_modules.py Block (parallel), models/adapter.py ------

@pytest.mark.parametrize("reads", ["residual", "norm"])
def test_adaptformer_matches_the_released_block(reads: str) -> None:
    overrides = {"dropout": P} | ({} if reads == "residual" else {"input": reads})
    plain, adapted, x = setup("adaptformer", **overrides)
    ref = copy.deepcopy(plain)
    for i, blk in enumerate(list(ref.blocks)):
        ad = adapted.blocks[i].mlp.adapter

        def block(self, x, ad=ad):
            x = x + self.blk.attn(self.blk.norm1(x))
            branch_in = x if reads == "residual" else self.blk.norm2(x)  # released code: the residual stream
            z = F.dropout(F.relu(F.linear(branch_in, ad.down.weight, ad.down.bias)), P, self.training)
            adapt = F.linear(z, ad.up.weight, ad.up.bias) * 0.1  # ffn_adapter_scalar="0.1", no adapter LayerNorm
            return x + self.blk.mlp(self.blk.norm2(x)) + adapt

        ref.blocks[i] = Ref(block, blk=blk)
    assert_same(adapted, ref, x)
