"""After a driver kill, Tune's restored trial list can lack a trial the restored searcher had suggested: the
searcher re-issues such an entry (search or final) under the same key and params, and nothing else."""

from __future__ import annotations

import pickle

from ray.tune.search import Searcher

from alorectl.sweep import plan as planning
from alorectl.sweep.experiment import Limiter
from alorectl.sweep.searcher import SweepSearcher

from plans import drain, make_plan


def restored(s: SweepSearcher, tmp_path) -> SweepSearcher:
    s.save(str(tmp_path / "state.json"))
    back = pickle.loads(pickle.dumps(s))  # what Tune does with the searcher in tuner.pkl ...
    back.restore(str(tmp_path / "state.json"))  # ... then its saved state
    return back


def test_lost_search_entry_is_reissued_with_same_key_and_params_held_one_is_not(tmp_path) -> None:
    plan = make_plan(methods=["ssf"], tasks=["digits"], trials=4)
    s = SweepSearcher(plan)
    issued = [(f"t{n}", planning.TrialSpec.from_config(s.suggest(f"t{n}"))) for n in range(4)]
    s.on_trial_complete("t0", {"val_acc": 50.0, "epoch": plan.cells[0].run.epochs})
    back = restored(s, tmp_path)
    # Tune restored t0 (done), t1 and t3 (running); t2 was suggested but is not in its trial list.
    assert back.reconcile({"t0", "t1", "t3"}) == ["t2"]
    again = planning.TrialSpec.from_config(back.suggest("n1"))
    lost = issued[2][1]
    assert (again.cell, again.key, again.seed, again.params) == (lost.cell, lost.key, lost.seed, lost.params)
    # Nothing else is re-issued: t1 and t3 (held) are not suggested again, and the search is complete.
    assert back.suggest("n2") is None
    for tid in ("t1", "t3", "n1"):
        back.on_trial_complete(tid, {"val_acc": 51.0, "epoch": plan.cells[0].run.epochs})
    rest, end = drain(back)
    assert end == Searcher.FINISHED
    keys = [sp.key for _, sp in issued] + [again.key] + [sp.key for _, sp in rest]
    # search-02 twice (lost, then re-issued), every other key of the cell once.
    expected = [f"search-{i:02d}" for i in range(4)] + ["search-02"] + [f"final-s{x}" for x in plan.cells[0].seeds]
    assert sorted(keys) == sorted(expected)

def test_lost_final_entry_is_reissued_with_same_seed_and_chosen_params(tmp_path) -> None:
    plan = make_plan(methods=["ssf"], tasks=["digits"], trials=2)
    s = SweepSearcher(plan)
    for n in range(2):
        s.suggest(f"s{n}")
        s.on_trial_complete(f"s{n}", {"val_acc": 50.0 + n, "epoch": plan.cells[0].run.epochs})
    finals = [(f"f{n}", planning.TrialSpec.from_config(s.suggest(f"f{n}"))) for n in range(len(plan.cells[0].seeds))]
    assert all(sp.phase == planning.FINAL for _, sp in finals)
    back = restored(s, tmp_path)
    held = {"s0", "s1"} | {tid for tid, _ in finals[1:]}
    assert back.reconcile(held) == ["f0"]
    again = planning.TrialSpec.from_config(back.suggest("g0"))
    assert (again.key, again.seed, again.params, again.chosen_val_acc) == \
        (finals[0][1].key, finals[0][1].seed, finals[0][1].params, finals[0][1].chosen_val_acc)
    assert back.suggest("g1") is None  # the other finals are held: not re-issued
    for tid in ["g0"] + [tid for tid, _ in finals[1:]]:
        back.on_trial_complete(tid, {"test_acc": 60.0, "epoch": plan.cells[0].run.epochs})
    assert back.suggest("g2") == Searcher.FINISHED


def test_limiter_drops_the_lost_trial_from_its_live_trials(tmp_path) -> None:
    plan = make_plan(methods=["ssf"], tasks=["digits"], trials=4)
    limiter = Limiter(SweepSearcher(plan), max_concurrent=2)
    limiter.suggest("t0"), limiter.suggest("t1")
    assert limiter.suggest("t2") is None  # two live: the limit
    state = limiter.get_state()
    limiter.searcher.save(str(tmp_path / "state.json"))
    back = pickle.loads(pickle.dumps(limiter))
    back.searcher.restore(str(tmp_path / "state.json"))
    back.set_state(state)
    back.reconcile({"t0"})  # Tune holds t0 only
    assert back.live_trials == {"t0"}
    lost = planning.TrialSpec.from_config(back.suggest("n1"))  # a free slot, and the lost entry again
    assert lost.key == "search-01"


def test_a_trial_the_database_holds_as_ended_is_taken_as_run_not_issued_again(tmp_path, monkeypatch) -> None:
    """Tune's snapshot of the searcher can lag the database (a driver killed right after a trial ended): on
    restore, a trial the database holds as ended (RECORDED) is taken as run, with the params and value that
    ran, and never issued to Tune again; selection sees its value."""
    from alorectl.sweep import searcher as searching

    plan = make_plan(methods=["ssf"], tasks=["digits"], trials=2)
    cp = plan.cells[0]
    s = SweepSearcher(plan)
    first = planning.TrialSpec.from_config(s.suggest("s0"))
    s.on_trial_complete("s0", {"val_acc": 50.0, "epoch": cp.run.epochs})
    back = restored(s, tmp_path)  # the snapshot: search-00 done, nothing else issued
    other = next(dict(zip(cp.space, v)) for v in __import__("itertools").product(*cp.space.values())
                 if dict(zip(cp.space, v)) != first.params)
    database = {"search-01": {"status": "done", "params": other, "value": 70.0, "epochs": cp.run.epochs},
                f"final-s{cp.seeds[0]}": {"status": "done", "params": other, "value": 70.0, "epochs": cp.run.epochs}}
    monkeypatch.setattr(searching, "RECORDED", lambda cell, key, phase: database.get(key))
    issued, end = drain(back)
    keys = [spec.key for _, spec in issued]
    assert "search-01" not in keys and f"final-s{cp.seeds[0]}" not in keys, keys
    assert keys == [f"final-s{seed}" for seed in cp.seeds[1:]]  # only what never ran
    assert all(spec.params == other for _, spec in issued), "the final runs use the recorded best (val 70)"
    assert end == Searcher.FINISHED
    entry = back.state.cells[cp.cell.key].search[1]
    assert (entry.params, entry.value, entry.status) == (other, 70.0, "done")


class FakeTrial:  # hashable by identity, as Tune's Trial is
    def __init__(self, status: str, trial_id: str, config: dict, num_failures: int = 0) -> None:
        self.status, self.trial_id, self.config, self.num_failures = status, trial_id, config, num_failures


class Controller:
    """What Tune's controller shows a scheduler: every trial in the experiment's order, the live ones, and
    stop_trial. Counts the reads of the whole list."""

    def __init__(self, trials: list) -> None:
        self.trials, self.reads = trials, 0

    def get_trials(self) -> list:
        self.reads += 1
        return self.trials

    def get_live_trials(self) -> set:
        return {t for t in self.trials if t.status not in ("TERMINATED", "ERROR")}

    def stop_trial(self, trial) -> None:
        trial.status = "TERMINATED"


def test_the_sweeps_scheduler_starts_the_newest_pending_trial_without_reading_every_trial_each_step() -> None:
    """Newest first: a worker freed by an ended trial goes to the trial issued in its place, not to the oldest
    pending trial, whose own worker is the furthest into starting and which Tune would cancel (SkipRecorded)."""
    import random

    from alorectl.sweep.experiment import Asha, Fifo

    cp = make_plan(methods=["ssf"], tasks=["digits"], trials=4).cells[0]
    config = planning.TrialSpec(cp.cell, planning.SEARCH, 0, cp.seeds[0], {}, cp.run).to_config()

    def newest_pending_else_first_paused(trials: list) -> FakeTrial | None:
        pending = [t for t in trials if t.status == "PENDING"]
        return pending[-1] if pending else next((t for t in trials if t.status == "PAUSED"), None)

    rng = random.Random(0)
    waiting_many = 0
    for case in range(300):
        statuses = rng.choices(["PENDING", "PAUSED", "RUNNING", "TERMINATED", "ERROR"],
                               weights=[1, 1, 6, 20, 1], k=rng.randrange(1, 60))
        trials = [FakeTrial(status=s, trial_id=f"{rng.getrandbits(32):08x}", config=config) for s in statuses]
        want = newest_pending_else_first_paused(trials)
        for scheduler in (Fifo(), Asha(metric="val_acc", mode="max", max_t=10, grace_period=1)):
            controller = Controller(trials)
            assert scheduler.choose_trial_to_run(controller) is want, (case, statuses)
            pending, paused = statuses.count("PENDING"), statuses.count("PAUSED")
            if pending <= 1 and (pending == 1 or paused <= 1):  # at most one waiting: the whole list is never read
                assert controller.reads == 0, (case, statuses)
            else:
                waiting_many += 1
    assert waiting_many > 20  # the cases where the experiment's order decides were drawn too

    # Step by step, as in a sweep: each ended trial is replaced by a new one, which is chosen without a read.
    trials = [FakeTrial(status="PENDING", trial_id=f"t{i}", config=config) for i in range(4)]
    controller, scheduler = Controller(trials), Fifo()
    assert scheduler.choose_trial_to_run(controller) is trials[-1]  # the first call: the experiment's order
    reads = controller.reads
    assert scheduler.choose_trial_to_run(controller) is trials[-1] and controller.reads == reads, "read once"
    for i in range(4, 30):
        trials[rng.randrange(len(trials))].status = "TERMINATED"
        trials.append(FakeTrial(status="PENDING", trial_id=f"t{i}", config=config))
        assert scheduler.choose_trial_to_run(controller) is trials[-1], i
    assert controller.reads == reads, "one new trial per call: the whole list is not read"


def test_a_trial_retried_after_its_node_died_starts_before_newer_trials() -> None:
    """Newest first must not starve a retry: a trial whose node died is pending again with Tune's failure count
    raised; it goes before every trial issued after it (oldest retry first), and newest first resumes after."""
    from alorectl.sweep.experiment import Fifo

    cp = make_plan(methods=["ssf"], tasks=["digits"], trials=4).cells[0]
    config = planning.TrialSpec(cp.cell, planning.SEARCH, 0, cp.seeds[0], {}, cp.run).to_config()
    trials = [FakeTrial(status="PENDING", trial_id=f"t{i}", config=config) for i in range(4)]
    controller, scheduler = Controller(trials), Fifo()
    assert scheduler.choose_trial_to_run(controller) is trials[-1]
    for t in trials:  # all four started
        t.status = "RUNNING"
    trials[0].status, trials[0].num_failures = "PENDING", 1  # its node died
    trials[2].status, trials[2].num_failures = "PENDING", 1
    trials += [FakeTrial(status="PENDING", trial_id=f"t{i}", config=config) for i in range(4, 8)]  # issued since
    assert scheduler.choose_trial_to_run(controller) is trials[0]
    trials[0].status = "RUNNING"
    assert scheduler.choose_trial_to_run(controller) is trials[2]
    trials[2].status = "RUNNING"
    assert scheduler.choose_trial_to_run(controller) is trials[-1]  # then the newest again
