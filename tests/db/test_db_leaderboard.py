"""The leaderboard on hand-made results: layout, means, best per column, renderers."""

from __future__ import annotations

import csv
import io
import json
from statistics import mean

import pytest
from sqlalchemy import Engine

from alorectl.db import find_result, leaderboard, to_csv, to_json, to_markdown, to_records, to_rows
from alorectl.db.leaderboard import detail_rows
from alorectl.db.writes import record_result, upsert_sweep

GROUPS = {
    "cifar": "Natural",
    "dtd": "Natural",
    "eurosat": "Specialized",
    "camelyon": "Specialized",
    "clevr_count": "Structured",
    "dmlab": "Structured",
}
TASKS = list(GROUPS)
LABELS = {"cifar": "CIFAR-100", "dtd": "DTD"}

# method -> task -> (test accuracy, trainable params); None: not run yet.
RESULTS: dict[str, dict[str, tuple[float, int] | None]] = {
    "alore": {"cifar": (70.0, 150_000), "dtd": (60.0, 150_000), "eurosat": (95.0, 150_000),
              "camelyon": (85.0, 150_000), "clevr_count": (50.0, 150_000), "dmlab": (40.0, 150_000)},
    "lora": {"cifar": (68.0, 290_000), "dtd": (62.0, 300_000), "eurosat": (94.0, 300_000),
             "camelyon": (86.5, 300_000), "clevr_count": (48.0, 300_000), "dmlab": (45.0, 300_000)},
    "vpt": {"cifar": (65.0, 100_000), "dtd": None, "eurosat": (90.0, 100_000),
            "camelyon": (80.0, 100_000), "clevr_count": (52.0, 100_000), "dmlab": (38.0, 100_000)},
}  # fmt: skip


def _write(engine: Engine, sweep: str, results=RESULTS, backbone: str = "vit_b", suite: str = "vtab") -> int:
    sweep_id = upsert_sweep(engine, sweep, suite=suite)
    for method, per_task in results.items():
        for task, value in per_task.items():
            if value is None:
                continue
            acc, params = value
            record_result(
                engine, sweep_id=sweep_id, backbone=backbone, task=task, method=method, suite=suite,
                test_acc_mean=acc, test_acc_std=0.1, seeds=[0, 1, 2], val_acc=acc + 1, trainable_params=params,
                config={"lr": 1e-3, "method": method}, epochs=100, mlflow_run_id=f"run-{method}-{task}",
            )  # fmt: skip
    return sweep_id


def _expected(method: str) -> dict[str, float | None]:
    """The row's derived numbers, computed here from RESULTS the long way."""
    acc = {t: (v[0] if v else None) for t, v in RESULTS[method].items()}
    groups: dict[str, float | None] = {}
    for g in ("Natural", "Specialized", "Structured"):
        values = [acc[t] for t in TASKS if GROUPS[t] == g]
        groups[g] = None if None in values else mean(values)
    all_mean = None if None in acc.values() else mean(acc.values())
    group_mean = None if None in groups.values() else mean(groups.values())
    params = [v[1] for v in RESULTS[method].values() if v]
    return {**acc, **groups, "all_mean": all_mean, "group_mean": group_mean, "params_m": mean(params) / 1e6}


@pytest.fixture
def board(engine: Engine):
    _write(engine, "vtab-1")
    return leaderboard(engine, "vit_b", suite="vtab", task_order=TASKS, groups=GROUPS,
                       method_order=["vpt", "alore"], labels=LABELS)  # fmt: skip


def test_layout_is_the_papers_table_2(board) -> None:
    header, rows = to_rows(board)
    assert header == [
        "Method", "CIFAR-100", "DTD", "eurosat", "camelyon", "clevr_count", "dmlab",
        "Natural", "Specialized", "Structured", "All Mean", "Group Mean", "Params(M)",
    ]  # fmt: skip
    # method_order first, the rest sorted.
    assert [r[0] for r in rows] == ["vpt", "alore", "lora"]
    assert board.group_names == ("Natural", "Specialized", "Structured")


@pytest.mark.parametrize("method", list(RESULTS))
def test_means_and_params(board, method: str) -> None:
    row = next(r for r in board.rows if r.method == method)
    expected = _expected(method)
    got = {**row.tasks, **row.group_means, "all_mean": row.all_mean, "group_mean": row.group_mean,
           "params_m": row.params_m}  # fmt: skip
    assert got == pytest.approx(expected)


def test_known_numbers(board) -> None:
    _, rows = to_rows(board)
    by_method = {r[0]: r for r in rows}
    # lora: All Mean (68+62+94+86.5+48+45)/6 = 67.25, Group Mean (65+90.25+46.5)/3 = 67.25,
    # params (290k + 5*300k)/6 = 0.2983M.
    assert by_method["lora"][10:] == ["67.25", "67.25", "0.30"]
    assert by_method["alore"][7:] == ["65.00", "90.00", "45.00", "66.67", "66.67", "0.15"]
    # vpt lacks dtd: its Natural, All Mean and Group Mean are not shown.
    assert by_method["vpt"][1:3] == ["65.0", "-"]
    assert by_method["vpt"][7:] == ["-", "85.00", "45.00", "-", "-", "0.10"]


def test_best_per_column(board) -> None:
    best = {key: set(methods) for key, methods in board.best.items()}
    assert best == {
        "cifar": {"alore"}, "dtd": {"lora"}, "eurosat": {"alore"}, "camelyon": {"lora"},
        "clevr_count": {"vpt"}, "dmlab": {"lora"},
        "Natural": {"alore", "lora"},  # 65.00 each: a tie marks both
        "Specialized": {"lora"}, "Structured": {"lora"},
        "all_mean": {"lora"}, "group_mean": {"lora"},
    }  # fmt: skip
    assert "params_m" not in board.best  # fewer parameters is not "better" per se


def test_ties_are_judged_at_the_displayed_precision(engine: Engine) -> None:
    _write(engine, "s", {"a": {"cifar": (70.04, 1)}, "b": {"cifar": (70.01, 1)}, "c": {"cifar": (69.94, 1)}})
    assert set(leaderboard(engine, "vit_b").best["cifar"]) == {"a", "b"}  # 70.0, 70.0, 69.9


def test_markdown_marks_best_in_bold_and_lists_what_reproduces_each_cell(board) -> None:
    text = to_markdown(board)
    table, details = text.split("\n\n")
    lines = table.splitlines()
    assert lines[0].startswith("| Method | CIFAR-100 | DTD |")
    assert "| lora | 68.0 | **62.0** |" in table
    assert "| **67.25** | **67.25** | 0.30 |" in lines[4]
    assert "| alore | CIFAR-100 | 70.00 | 0.10 | 0 1 2 | 100 | 71.00 | 150000 |" in details
    assert '`{"lr":0.001,"method":"alore"}`' in details and "run-alore-cifar" in details
    assert to_markdown(board, details=False) == table


def test_csv(board) -> None:
    rows = list(csv.reader(io.StringIO(to_csv(board))))
    assert rows[0][0] == "Method" and len(rows) == 4
    assert rows[3][:3] == ["lora", "68.0", "62.0*"]
    plain = list(csv.reader(io.StringIO(to_csv(board, mark_best=False))))
    assert plain[3][:3] == ["lora", "68.0", "62.0"]
    details = list(csv.reader(io.StringIO(to_csv(board, details=True))))
    assert details[0] == detail_rows(board)[0] and len(details) == 1 + 17  # 18 results, vpt lacks dtd


def test_json_is_one_object_per_method(board) -> None:
    records = json.loads(to_json(board))
    assert [r["method"] for r in records] == ["vpt", "alore", "lora"]
    lora = records[2]
    assert lora["tasks"] == {t: v[0] for t, v in RESULTS["lora"].items()}
    assert lora["all_mean"] == pytest.approx(67.25) and lora["group_mean"] == pytest.approx(67.25)
    assert lora["group_means"]["Specialized"] == pytest.approx(90.25)
    assert lora["params_m"] == pytest.approx(1_790_000 / 6 / 1e6)
    assert "all_mean" in lora["best"] and "cifar" not in lora["best"]
    cell = lora["cells"]["cifar"]
    assert cell["config"] == {"lr": 1e-3, "method": "lora"}
    assert (cell["seeds"], cell["epochs"], cell["n_seeds"], cell["sweep"]) == ([0, 1, 2], 100, 3, "vtab-1")
    assert records[0]["tasks"]["dtd"] is None and "dtd" not in records[0]["cells"]
    assert to_records(board) == records


def test_the_most_recent_result_wins_not_the_best(engine: Engine) -> None:
    _write(engine, "old", {"alore": {"cifar": (75.0, 1)}})
    new = _write(engine, "new", {"alore": {"cifar": (71.0, 1)}})
    board = leaderboard(engine, "vit_b")
    entry = board.rows[0].entries["cifar"]
    assert (entry.test_acc_mean, entry.sweep) == (71.0, "new")
    # Re-recording the old sweep's cell (a resumed or rerun sweep) makes it the latest.
    _write(engine, "old", {"alore": {"cifar": (74.0, 1)}})
    assert leaderboard(engine, "vit_b").rows[0].tasks["cifar"] == 74.0
    # The newer sweep's row still exists, it is just not the latest.
    kept = find_result(engine, "vit_b", "cifar", "alore", sweep="new")
    assert (kept.sweep_id, kept.test_acc_mean) == (new, 71.0)


def test_backbone_and_suite_filter(engine: Engine) -> None:
    _write(engine, "vtab", {"alore": {"cifar": (70.0, 1)}})
    _write(engine, "fgvc", {"alore": {"cub": (88.0, 1)}}, suite="fgvc")
    _write(engine, "large", {"alore": {"cifar": (80.0, 1)}}, backbone="vit_l")
    assert leaderboard(engine, "vit_b", suite="vtab").tasks == ("cifar",)
    assert leaderboard(engine, "vit_b", suite="fgvc").tasks == ("cub",)
    assert leaderboard(engine, "vit_b").tasks == ("cifar", "cub")
    assert leaderboard(engine, "vit_l").rows[0].tasks == {"cifar": 80.0}
    assert leaderboard(engine, "swin_b").rows == ()


def test_without_groups_there_is_one_mean_column(engine: Engine) -> None:
    # FGVC, the paper's table 1: tasks, Mean, Params(M).
    _write(engine, "fgvc", {"alore": {"cub": (89.9, 270_000), "nabirds": (87.1, 270_000)}}, suite="fgvc")
    board = leaderboard(engine, "vit_b", suite="fgvc", task_order=["cub", "nabirds", "flowers"])
    header, rows = to_rows(board)
    assert header == ["Method", "cub", "nabirds", "flowers", "Mean", "Params(M)"]
    assert rows == [["alore", "89.9", "87.1", "-", "-", "0.27"]]


def test_groups_must_cover_the_tasks(engine: Engine) -> None:
    with pytest.raises(ValueError, match="tasks without a group: extra"):
        leaderboard(engine, "vit_b", task_order=["cifar", "extra"], groups={"cifar": "Natural"})


def test_empty_database(engine: Engine) -> None:
    board = leaderboard(engine, "vit_b", task_order=TASKS, groups=GROUPS)
    # Every column that can have a best is there, and none has one.
    columns = [*TASKS, "Natural", "Specialized", "Structured", "all_mean", "group_mean"]
    assert board.rows == () and board.best == dict.fromkeys(columns, frozenset())
    assert to_markdown(board).count("\n") == 1  # header and alignment only
    assert json.loads(to_json(board)) == []
