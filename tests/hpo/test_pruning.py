"""MO-ASHA's rung logic on hand-made objective vectors, and the study-file [pruner] table."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest

from hpo.config import PrunerSpec, parse_study
from hpo.pruners import KINDS, Key, PrunerKind, _spec_class, get_kind
from hpo.pruning import (
    MOASHA,
    MOASHAPruner,
    epoch_values,
    epoch_values_key,
    epochs_saved,
    epsilon_net_order,
    nondominated_ranks,
    rank_at_rung,
    records_at,
    rung_epochs,
    to_minimisation,
)
from hpo.study import make_pruner, open_study
from hpo.worker import run_worker
from trainers.errors import UserError

MAXMAX = ("maximize", "maximize")


# -- rungs ------------------------------------------------------------------------------------
def test_rungs_are_min_epochs_times_powers_of_eta_below_the_last_epoch() -> None:
    assert rung_epochs(min_epochs=1, eta=3, max_epochs=9) == [1, 3]
    assert rung_epochs(min_epochs=1, eta=3, max_epochs=10) == [1, 3, 9]
    assert rung_epochs(min_epochs=2, eta=2, max_epochs=20) == [2, 4, 8, 16]
    assert rung_epochs(min_epochs=5, eta=3, max_epochs=5) == []
    rule = MOASHA(MAXMAX, min_epochs=1, eta=3)
    assert [e for e in range(1, 12) if rule.is_rung(e, max_epochs=10)] == [1, 3, 9]


# -- ranking ----------------------------------------------------------------------------------
def test_directions_and_missing_values_map_to_minimisation() -> None:
    got = to_minimisation([2.0, 3.0, None], ("maximize", "minimize", "minimize"))
    assert got.tolist() == [-2.0, 3.0, math.inf]
    assert to_minimisation([float("nan")], ("maximize",)).tolist() == [math.inf]


def test_nondominated_ranks_peel_fronts() -> None:
    pts = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [1.0, 1.0], [2.0, 2.0]])
    assert nondominated_ranks(pts).tolist() == [0, 0, 0, 1, 2]
    # equal points do not dominate each other
    assert nondominated_ranks(np.array([[1.0, 1.0], [1.0, 1.0]])).tolist() == [0, 0]


def test_epsilon_net_starts_balanced_then_takes_the_farthest() -> None:
    # a normalised front: two extremes and three points bunched in the middle
    pts = np.array([[0.0, 1.0], [0.45, 0.55], [0.5, 0.5], [0.55, 0.45], [1.0, 0.0]])
    order = epsilon_net_order(pts)
    assert order[0] == 2  # closest to the ideal point (0, 0)
    assert set(order[1:3]) == {0, 4}  # then the two extremes, not the middle's neighbours
    assert sorted(order) == [0, 1, 2, 3, 4]


def test_dominated_trial_is_ranked_after_every_front_member() -> None:
    records = {0: [1.0, 0.0], 1: [0.0, 1.0], 2: [0.5, 0.5], 3: [0.4, 0.4]}  # 3 < 2 in both
    order = rank_at_rung(records, MAXMAX)
    assert order[-1] == 3 and set(order[:3]) == {0, 1, 2}


def test_missing_values_rank_last() -> None:
    records = {0: [None, 5.0], 1: [0.1, 0.1], 2: [0.2, 0.0]}
    assert rank_at_rung(records, MAXMAX)[-1] == 0


def test_diversity_tie_break_keeps_the_spread_of_the_front() -> None:
    # Six front members, keep 3 (eta 2): a balanced one first, then both extremes, never
    # three neighbours from the middle of the front.
    records = {0: [0.0, 1.0], 1: [0.48, 0.52], 2: [0.5, 0.5], 3: [0.52, 0.48],
               4: [1.0, 0.0], 5: [0.49, 0.51]}
    rule = MOASHA(MAXMAX, eta=2, min_trials_at_rung=3)
    kept = [t for t in records if not rule.decide(t, 1, records).prune]
    assert len(kept) == 3
    assert 0 in kept and 4 in kept
    assert len(set(kept) & {1, 2, 3, 5}) == 1


# -- the stopping rule -----------------------------------------------------------------------
def test_dominated_trial_is_pruned_and_front_members_are_kept() -> None:
    rule = MOASHA(MAXMAX, eta=3, min_trials_at_rung=3)
    records = {0: [1.0, 0.2], 1: [0.2, 1.0], 2: [0.1, 0.1]}
    assert rule.decide(2, 1, records).prune  # dominated by both others
    decision = rule.decide(0, 1, records)
    assert (decision.n_at_rung, decision.n_kept) == (3, 1)
    # of the two front members exactly one is in the top 1/3, the other waits for company
    assert [rule.decide(t, 1, records).prune for t in (0, 1)].count(False) == 1


def test_with_too_few_trials_at_the_rung_the_trial_goes_on() -> None:
    rule = MOASHA(MAXMAX, eta=3, min_trials_at_rung=3)
    records = {0: [1.0, 1.0], 1: [0.0, 0.0]}  # 1 is dominated, but only 2 trials are there
    decision = rule.decide(1, 1, records)
    assert not decision.prune and decision.n_at_rung == 2


def test_the_best_trial_always_goes_on_even_when_eta_exceeds_the_count() -> None:
    rule = MOASHA(MAXMAX, eta=4, min_trials_at_rung=2)
    records = {0: [1.0, 1.0], 1: [0.0, 0.0]}
    assert not rule.decide(0, 1, records).prune
    assert rule.decide(1, 1, records).prune


def test_asynchronous_arrival_order_decides_who_is_judged_against_whom() -> None:
    """Each trial is judged when it arrives, against those already at the rung."""
    rule = MOASHA(MAXMAX, eta=2, min_trials_at_rung=2)
    good, bad = [1.0, 1.0], [0.0, 0.0]
    # good first: it goes on alone (too few), then bad arrives and is pruned
    at: dict[int, list[float | None]] = {0: good}
    assert not rule.decide(0, 1, at).prune
    at[1] = bad
    assert rule.decide(1, 1, at).prune
    # bad first: it goes on alone, and a later good trial does not undo that
    at = {1: bad}
    assert not rule.decide(1, 1, at).prune
    at[0] = good
    assert not rule.decide(0, 1, at).prune
    # nobody waits: a decision needs only the records present, never a missing trial


def test_decision_reason_names_rung_place_and_share() -> None:
    rule = MOASHA(MAXMAX, eta=3, min_trials_at_rung=3)
    d = rule.decide(2, 3, {0: [1.0, 0.2], 1: [0.2, 1.0], 2: [0.1, 0.1]})
    assert d.reason() == ("pruned by mo_asha at epoch 3: place 3 of 3 trials at this rung, "
                          "only the top 1 go on")


# -- stored vectors -----------------------------------------------------------------------------
def _frozen(number: int, attrs: dict, state: str = "RUNNING", user: dict | None = None) -> object:
    return SimpleNamespace(number=number, system_attrs=attrs, user_attrs=user or {},
                           state=optuna.trial.TrialState[state])


def test_records_at_reads_the_rung_and_drops_superseded_retries() -> None:
    k1, k3 = epoch_values_key(1), epoch_values_key(3)
    trials = [_frozen(0, {k1: [1.0, 2.0], k3: [1.5, 2.5]}, "COMPLETE"),
              _frozen(1, {k1: [0.5, 0.5]}, "FAIL"),
              _frozen(2, {k1: [0.5, 0.5], "retry_history": [1]}),  # retries trial 1
              _frozen(3, {})]
    assert records_at(trials, 1) == {0: [1.0, 2.0], 2: [0.5, 0.5]}
    assert records_at(trials, 3) == {0: [1.5, 2.5]}
    assert epoch_values(trials[0].system_attrs) == {1: [1.0, 2.0], 3: [1.5, 2.5]}


def test_epochs_saved_counts_pruned_trials_only() -> None:
    trials = [_frozen(0, {}, "PRUNED", {"epochs_planned": 9, "pruned_at_epoch": 1}),
              _frozen(1, {}, "PRUNED", {"epochs_planned": 9, "pruned_at_epoch": 3}),
              _frozen(2, {}, "PRUNED", {}),
              _frozen(3, {}, "COMPLETE", {"epochs_planned": 9, "pruned_at_epoch": 1})]
    assert epochs_saved(trials) == (3, 14)


# -- the [pruner] table ---------------------------------------------------------------------
def _raw(pruner: dict, objectives: int = 1) -> dict:
    metrics = [("loss", "minimize"), ("score", "maximize")][:objectives]
    return {"workload": "tests.hpo.toy_workload", "n_trials": 2,
            "objectives": [{"metric": m, "direction": d} for m, d in metrics],
            "pruner": pruner,
            "search_space": {"lr": {"type": "float", "low": 0.01, "high": 0.5}}}


def test_mo_asha_is_accepted_on_a_multi_objective_study() -> None:
    spec = parse_study(_raw({"name": "mo_asha", "min_epochs": 2, "eta": 2,
                             "min_trials_at_rung": 4}, objectives=2), path=Path("s.toml"))
    assert spec.pruner == PrunerSpec(name="mo_asha", min_epochs=2, eta=2, min_trials_at_rung=4)
    built = make_pruner(spec)  # a real Optuna pruner object that owns the MO-ASHA decision
    assert isinstance(built, MOASHAPruner) and isinstance(built, optuna.pruners.BasePruner)
    assert (built.min_epochs, built.eta, built.min_trials_at_rung) == (2, 2, 4)


@pytest.mark.parametrize("pruner, cls, attrs", [
    ({"name": "median", "n_startup_trials": 2, "n_warmup_steps": 3},
     optuna.pruners.MedianPruner, {"_n_startup_trials": 2, "_n_warmup_steps": 3}),
    ({"name": "percentile", "percentile": 40.0, "interval_steps": 2},
     optuna.pruners.PercentilePruner, {"_percentile": 40.0, "_interval_steps": 2}),
    ({"name": "successive_halving", "min_resource": 2, "reduction_factor": 4},
     optuna.pruners.SuccessiveHalvingPruner, {"_min_resource": 2, "_reduction_factor": 4}),
    ({"name": "hyperband", "min_resource": 1, "max_resource": 9, "reduction_factor": 3},
     optuna.pruners.HyperbandPruner, {"_min_resource": 1, "_max_resource": 9}),
])
def test_single_objective_pruners_get_their_options(pruner: dict, cls: type,
                                                     attrs: dict) -> None:
    spec = parse_study(_raw(pruner), path=Path("s.toml"))
    built = make_pruner(spec)
    assert type(built) is cls
    for key, value in attrs.items():
        assert getattr(built, key) == value


def test_pruner_problems_are_reported_together() -> None:
    with pytest.raises(UserError) as err:
        parse_study(_raw({"name": "median", "eta": 3, "n_warmup_steps": -1}, objectives=2),
                    path=Path("s.toml"))
    msg = str(err.value)
    assert msg.startswith("s.toml: 3 problems: ")
    assert ("[pruner.eta] does not apply to pruner 'median'; its keys: n_startup_trials, "
            "n_warmup_steps, interval_steps, n_min_trials") in msg
    assert "[pruner.name] 'median' needs a single objective" in msg and '"mo_asha"' in msg
    assert "[pruner.n_warmup_steps] must be >= 0, got -1" in msg


def test_bad_mo_asha_values_and_unknown_pruner() -> None:
    with pytest.raises(UserError) as err:
        parse_study(_raw({"name": "mo_asha", "eta": 1, "min_epochs": 0}), path=Path("s.toml"))
    assert "[pruner.min_epochs] must be >= 1, got 0" in str(err.value)
    assert "[pruner.eta] must be >= 2, got 1" in str(err.value)
    with pytest.raises(UserError, match=r"\[pruner.name\] got 'asha'; allowed: none, median, "
                                        r"percentile, successive_halving, hyperband, mo_asha"):
        parse_study(_raw({"name": "asha"}), path=Path("s.toml"))


# -- epochs and Optuna's steps --------------------------------------------------------------
EPOCHS = 5


@pytest.mark.parametrize("pruner, first_judged", [
    ({"name": "median", "n_warmup_steps": 0}, 1),
    ({"name": "median", "n_warmup_steps": 1}, 2),
    ({"name": "median", "n_warmup_steps": 2}, 3),
    ({"name": "percentile", "n_warmup_steps": 2}, 3),
    ({"name": "successive_halving", "min_resource": 2, "reduction_factor": 4}, 2),
])
def test_keys_count_epochs_as_the_readme_says(tmp_path: Path, pruner: dict,
                                              first_judged: int) -> None:
    """The first ``n_warmup_steps`` epochs are never judged; a successive-halving rung at
    ``min_resource`` judges after that many epochs. One fast trial finishes, then slow ones
    (worse at every epoch) are pruned at the first epoch their pruner may judge."""
    raw = _raw({**pruner, **({"n_startup_trials": 1} if "n_warmup_steps" in pruner else {})})
    raw.update(n_trials=4, trainer={"epochs": EPOCHS},
               enqueue=[{"name": "fast", "params": {"lr": 0.45}}]
               + [{"name": f"slow{i}", "params": {"lr": 0.01}} for i in range(3)])
    spec = parse_study(raw, path=tmp_path / "steps.toml")
    study = open_study(spec, f"sqlite:///{tmp_path / 'hpo.db'}", force=False, target=4,
                       quiet=True)
    assert run_worker(study, spec, output=tmp_path / "out", target=4, timeout=None,
                      announce=False) == 0
    trials = study.get_trials(deepcopy=False)
    assert trials[0].state == optuna.trial.TrialState.COMPLETE
    assert [t.user_attrs.get("pruned_at_epoch") for t in trials[1:]] == [first_judged] * 3
    # the step each epoch was reported at, so the dashboard's curve and the pruner agree
    first = get_kind(spec.pruner.name).step(1)
    assert sorted(trials[0].intermediate_values) == list(range(first, first + EPOCHS))


def test_percentile_family_steps_count_from_zero_the_halving_ones_from_one() -> None:
    assert [KINDS[n].step(1) for n in ("median", "percentile")] == [0, 0]
    assert [KINDS[n].step(3) for n in ("successive_halving", "hyperband", "none")] == [3, 3, 3]


# -- the registry ------------------------------------------------------------------------------
def test_the_spec_holds_every_kinds_keys_with_their_defaults() -> None:
    spec = PrunerSpec()
    assert spec.name == "none"
    for kind in KINDS.values():
        for key in kind.keys:
            assert getattr(spec, key.name) == key.default
            assert type(getattr(spec, key.name)) is key.type


def test_a_key_declared_twice_with_other_defaults_is_a_bug() -> None:
    def build(spec: object) -> optuna.pruners.BasePruner:
        return optuna.pruners.NopPruner()

    a = PrunerKind(name="a", keys=(Key("k", 1, 0),), build=build, single_objective=False)
    b = PrunerKind(name="b", keys=(Key("k", 2, 0),), build=build, single_objective=False)
    assert [f for f in _spec_class([a, a]).__dataclass_fields__] == ["name", "k"]
    with pytest.raises(TypeError, match="pruner key 'k' of 'b' differs"):
        _spec_class([a, b])


def test_out_of_range_percentile_names_the_range() -> None:
    with pytest.raises(UserError, match=r"\[pruner.percentile\] must be in \[0, 100\], "
                                        r"got 120.0"):
        parse_study(_raw({"name": "percentile", "percentile": 120}), path=Path("s.toml"))


def test_the_mo_asha_pruner_decides_from_the_stored_vectors() -> None:
    """``MOASHAPruner.prune(study, trial)``: at a rung, the trial's stored vector ranked
    against every trial that reached the rung, in the study's directions; off a rung, or with
    too few trials there, nothing is pruned."""
    from hpo.pruning import epoch_values_key

    study = optuna.create_study(directions=["maximize", "maximize"])
    pruner = MOASHAPruner(min_epochs=1, eta=3, min_trials_at_rung=3)

    def trial_with(vectors: dict[int, list[float]], planned: int = 9) -> optuna.trial.FrozenTrial:
        t = study.ask()
        t.set_user_attr("epochs_planned", planned)
        for epoch, vector in vectors.items():
            study._storage.set_trial_system_attr(t._trial_id, epoch_values_key(epoch), vector)
        return study._storage.get_trial(t._trial_id)

    best = trial_with({1: [3.0, 3.0]})
    assert pruner.prune(study, best) is False and pruner.last.n_at_rung == 1  # too few
    trial_with({1: [2.0, 2.0]})
    worst = trial_with({1: [1.0, 1.0]})
    assert pruner.prune(study, worst) is True
    assert pruner.last.reason() == ("pruned by mo_asha at epoch 1: place 3 of 3 trials at "
                                    "this rung, only the top 1 go on")
    assert pruner.prune(study, best) is False and pruner.last.position == 0
    off_rung = trial_with({1: [3.0, 3.0], 2: [0.0, 0.0]})  # epoch 2 is no rung (1, 3, 9)
    assert pruner.prune(study, off_rung) is False and pruner.last is None
