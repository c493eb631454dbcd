"""The paper's table layout for a backbone: tasks in benchmark order, groups, labels.

The rows come from ``db`` (which owns every query); this module only adds
what alore's task registry knows: column order, task groups, display labels.
"""

from __future__ import annotations

from typing import Any

from alorectl import db
from alore.data import DEMO_TASKS, FGVC_DATASETS, SUITES, VTAB_TASKS
from alore.errors import AloreError, UnknownChoiceError

# Column headers as the paper's tables 1 and 2 print them.
LABELS = {
    "cifar": "CIFAR-100", "caltech101": "Caltech101", "dtd": "DTD", "oxford_flowers102": "Flowers102",
    "oxford_iiit_pet": "Pets", "svhn": "SVHN", "sun397": "Sun397", "patch_camelyon": "Camelyon",
    "eurosat": "EuroSAT", "resisc45": "Resisc45", "diabetic_retinopathy": "Retinopathy",
    "clevr_count": "Clevr-Count", "clevr_dist": "Clevr-Dist", "dmlab": "DMLab", "kitti": "KITTI-Dist",
    "dsprites_loc": "dSpr-Loc", "dsprites_ori": "dSpr-Ori", "smallnorb_azi": "sNORB-Azim",
    "smallnorb_ele": "sNORB-Ele", "cub": "CUB-200-2011", "nabirds": "NABirds", "oxford_flowers": "Oxford Flowers",
    "stanford_dogs": "Stanford Dogs", "stanford_cars": "Stanford Cars",
}
METHOD_ORDER = ["full", "linear", "adapter", "adaptformer", "vpt_shallow", "vpt", "bitfit", "lora", "ssf",
                "repadapter", "alore_attn", "alore"]


def known(suite: str) -> dict[str, Any]:
    return {**VTAB_TASKS, **DEMO_TASKS} if suite == "vtab" else dict(FGVC_DATASETS)


def check_choices(bind: Any, backbone: str, suite: str, simulated: bool = False) -> None:
    """An unknown suite, or a backbone without results, names the valid choices instead of an empty table."""
    if suite not in SUITES:
        raise UnknownChoiceError("suite", suite, SUITES)
    have = db.result_backbones(bind, simulated=simulated)
    if not have and simulated:
        raise AloreError("no simulated results recorded; make some with: alorectl bench scale demo --slots 2")
    if not have:
        hint = (" (only simulated results are recorded: alorectl leaderboard --simulated)"
                if db.result_backbones(bind, simulated=True) else "")
        raise AloreError(f"no results recorded yet; run a sweep first: alorectl sweep demo{hint}")
    if backbone not in have:
        raise UnknownChoiceError("backbone", backbone, have, hint="(the backbones with results)")
    suites = db.result_suites(bind, backbone, simulated=simulated)
    if suite not in suites:
        raise UnknownChoiceError(f"suite for backbone {backbone!r}", suite, suites, hint="(the suites it has results in)")


def build(bind: Any, backbone: str, suite: str, simulated: bool = False) -> db.Leaderboard:
    """The leaderboard of real sweeps' results, or (``simulated``) of simulated sweeps' only."""
    infos = known(suite)
    found = set(db.result_tasks(bind, backbone, suite=suite, simulated=simulated))
    order = [t for t in infos if t in found] + sorted(found - set(infos))
    groups = {t: infos[t].group for t in order if t in infos}
    return db.leaderboard(bind, backbone, suite=suite, task_order=order or None, groups=groups or None,
                          method_order=METHOD_ORDER, labels=LABELS, simulated=simulated)


def default_backbone(bind: Any, suite: str, simulated: bool = False) -> str:
    """The backbone to show when none is named: the one with results (in ``suite``, else in any suite);
    with several, an error that lists them."""
    have = db.result_backbones(bind, suite, simulated=simulated) or db.result_backbones(bind, simulated=simulated)
    if not have:
        raise AloreError("no results recorded yet; run a sweep first: alorectl sweep demo")
    if len(have) > 1:
        raise AloreError(f"results for {len(have)} backbones; pick one with --backbone: {', '.join(have)}")
    return have[0]
