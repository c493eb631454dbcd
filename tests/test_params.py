"""Parameter accounting (appendix C, table 10) on the real architectures, and `alorectl params`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import alore
from alorectl.cli import app

runner = CliRunner()


def count(backbone: str, method: str, **overrides) -> int:
    model = alore.create_backbone(backbone, 100, device="meta")
    return alore.count_trainable(alore.apply(model, method, **overrides))


@pytest.mark.parametrize("backbone,method,millions", [
    ("vit_b", "alore", 0.15), ("vit_b", "alore_attn", 0.07),   # table 2
    ("vit_l", "alore", 0.39), ("vit_h", "alore", 0.66),         # table 3
    ("swin_b", "alore", 0.19), ("convnext_b", "alore", 0.29),   # table 5
    ("vit_b", "lora", 0.29), ("vit_b", "adapter", 0.16), ("vit_b", "adaptformer", 0.16),
    ("vit_b", "bitfit", 0.10), ("vit_b", "linear", 0.0),        # table 2
])
def test_counts_match_the_paper(backbone: str, method: str, millions: float) -> None:
    assert round(count(backbone, method) / 1e6, 2) == millions


def test_counts_follow_the_table_10_formulas_on_vit_b() -> None:
    d, L = 768, 12
    assert count("vit_b", "alore") == 4 * d * 4 * L + 4**3
    assert count("vit_b", "alore", rank=1) == 4 * d * 1 * L + 4**3        # table 6a: 0.04M
    assert count("vit_b", "alore", experts=32) == 4 * d * 4 * L + 32**3   # table 6b: 0.18M
    assert count("vit_b", "lora") == 2 * 2 * d * 8 * L                     # 2·w·d·r·L, w = 2 (q, v)
    assert count("vit_b", "vpt") == 10 * d * L                             # m·d·L
    assert count("vit_b", "vpt_shallow") == 10 * d                         # m·d
    assert count("vit_b", "ssf") == 2 * 11 * d * L + 2 * 2 * d             # 2·o·d·L (+ patch embed and final norm)
    assert count("vit_b", "adapter") == L * (2 * d * 8 + 8 + d)            # one bottleneck-8 adapter per block
    assert count("vit_b", "repadapter") == 2 * L * (d * 8 + 8 + d * 8 // 2 + d)
    assert count("vit_b", "full") == 85_798_656                            # 85.8M, the head excluded


def test_params_cli_json() -> None:
    result = runner.invoke(app, ["params", "--backbone", "vit_b", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["method"]: r for r in json.loads(result.stdout)}
    assert set(rows) == set(alore.METHODS)
    assert rows["alore"]["trainable_params"] == 147_520 and rows["alore"]["mergeable"] is True
    assert rows["vpt"]["mergeable"] is False and rows["adapter"]["mergeable"] is False


@pytest.mark.parametrize("backbone,not_applicable", [
    ("swin_b", {"vpt": "needs a ViT backbone", "vpt_shallow": "needs a ViT backbone"}),
    ("convnext_b", {"vpt": "needs a ViT backbone", "vpt_shallow": "needs a ViT backbone",
                    "alore_attn": "unknown location for convnext blocks 'before_attn'"}),
])
def test_params_cli_lists_every_method_with_honest_na_rows(backbone: str, not_applicable: dict) -> None:
    result = runner.invoke(app, ["params", "--backbone", backbone, "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["method"]: r for r in json.loads(result.stdout)}
    assert set(rows) == set(alore.METHODS)
    for name, row in rows.items():
        if name in not_applicable:
            assert row["supported"] is False and row["trainable_params"] is None
            assert not_applicable[name] in row["reason"]
        else:
            assert row["supported"] is True and row["reason"] is None and row["trainable_params"] >= 0
    assert round(rows["alore"]["trainable_params"] / 1e6, 2) == {"swin_b": 0.19, "convnext_b": 0.29}[backbone]
    table = runner.invoke(app, ["params", "--backbone", backbone])
    assert table.exit_code == 0 and "n/a" in table.stdout and "n/a vpt: vpt needs a ViT backbone" in table.stdout


def test_params_cli_table_and_method_filter() -> None:
    result = runner.invoke(app, ["params", "--backbone", "vit_b", "-m", "alore,alore_attn"])
    assert result.exit_code == 0
    assert "147,520" in result.stdout and "73,792" in result.stdout and "lora" not in result.stdout


@pytest.mark.parametrize("args,message", [
    (["params", "--backbone", "vit_q"], "unknown backbone 'vit_q'; valid choices:"),
    (["params", "-m", "alora"], "unknown method 'alora'; valid choices: adapter"),
])
def test_params_cli_bad_input_is_one_line_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_check_merge_cli_on_a_small_backbone() -> None:
    result = runner.invoke(app, ["check-merge", "--backbone", "vit_test", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {r["method"] for r in rows} == set(alore.mergeable_methods())
    assert all(r["ok"] and r["relative_error"] < 1e-4 for r in rows)
    nonmerge = runner.invoke(app, ["check-merge", "--backbone", "vit_test", "--methods", "vpt"])
    assert nonmerge.exit_code == 2 and "cannot be folded" in nonmerge.stderr


def test_bench_inference_prints_ratios() -> None:
    result = runner.invoke(app, ["bench", "inference", "--backbone", "vit_test", "--methods", "alore,vpt",
                                 "--batch-size", "2", "--steps", "1", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["model"] for r in rows] == ["backbone", "alore (unmerged)", "alore (merged)", "vpt (unmerged)"]
    assert rows[0]["ratio"] == 1.0 and all(r["images_per_s"] > 0 for r in rows)


def test_bench_train_prints_ratios_to_lora() -> None:
    result = runner.invoke(app, ["bench", "train", "--backbone", "vit_test", "--methods", "alore,lora",
                                 "--batch-size", "4", "--steps", "1", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["method"]: r for r in json.loads(result.stdout)}
    assert rows["lora"]["step_ratio"] == 1.0 and rows["alore"]["baseline"] == "lora"
    assert 0.0 < rows["alore"]["loading_share"] < 1.0 and rows["alore"]["peak_mib"] is None  # no CUDA here


@pytest.mark.slow  # two sweeps on local Ray
def test_bench_sweep_measures_both_slot_counts(demo_dir) -> None:
    import ray

    result = runner.invoke(app, ["bench", "sweep", "--tasks", "digits", "--methods", "linear,bitfit", "--trials", "1",
                                 "--epochs", "1", "--data", str(demo_dir), "--json"])
    ray.shutdown()
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout[result.stdout.index("["):])
    assert [r["slots"] for r in rows] == [1, 2]
    for r in rows:
        assert r["trials"] == 4 and r["makespan_s"] > 0
        assert 0.0 < r["occupancy"] <= 1.0 and 0.0 < r["overhead_share"] < 1.0
    assert rows[1]["speedup"] == rows[0]["makespan_s"] / rows[1]["makespan_s"]
