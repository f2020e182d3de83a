"""The seeds ensemble of the chosen configuration (``[evaluate] seeds = N``).

A lightly trained model's test figures vary a great deal with its seed alone; part of what
looks like a weak configuration is the draw of one seed. After selection, the chosen trial's
configuration is trained again with ``N - 1`` further seeds on the trial's own training dates
(the workload's ``refit`` through the day before the validation period starts, the study's
purge respected: with the trial's seed that reproduces the trial's model bit for bit, so the
chosen model itself is member 0). The test period is scored by the mean of the N models'
per-date standardised scores (``trainers.heldout.ensemble_scores``), reported beside the single
model with the paired difference. Nothing here reads the test period before the members are
trained, and no choice is made on it.

Members live in ``<output>/<study>/seeds_<trial>/seed_<k>/`` and are reused by a later run with
the same trial, seeds and dates (each refit resumes or returns its finished model).
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial

from hpo import attrs
from hpo.records import trial_attrs
from trainers.errors import UserError
from trainers.heldout import HeldOut, Prediction, RefitRequest, ensemble_scores

MEMBERS = "seeds_{trial}"


def member_seeds(trial_seed: int, n: int) -> list[int]:
    """The trial's seed, then ``n - 1`` seeds derived from it (independent streams)."""
    extra = np.random.SeedSequence([trial_seed, 1]).generate_state(max(0, n - 1))
    return [int(trial_seed), *(int(s) % (2**31 - 1) for s in extra)]


def seeds_ensemble(chosen: FrozenTrial, heldout: HeldOut, model: Any, prediction: Prediction,
                   *, trial_dir: Path, out_dir: Path, cache_dir: Path, n_seeds: int
                   ) -> dict[str, Any]:
    """Train, predict and score the seeds ensemble (module docstring); the report's
    ``seeds_ensemble`` entry, or one with a ``reason`` when the workload or trial cannot."""
    base = {"n_seeds": n_seeds}
    if not heldout.supports("refit"):
        return {**base, "reason": "the workload cannot train a configuration again (no refit)"}
    if heldout.supports("members") and len(heldout.members(trial_dir)) > 1:
        return {**base, "reason": "a walk-forward trial is already an ensemble of its fold "
                                  "models: see test_models"}
    seed = chosen.user_attrs.get(attrs.SEED)
    if not isinstance(seed, int):
        raise UserError(f"trial {chosen.number} recorded no seed; its seeds ensemble cannot "
                        "include it")
    val_first = (prediction.split.get("val") or [None])[0]
    if not val_first:
        return {**base, "reason": "the study has no validation period to train before"}
    through = (date.fromisoformat(val_first) - timedelta(days=1)).isoformat()
    seeds = member_seeds(seed, n_seeds)
    frames = [prediction.frame]
    folder = out_dir / MEMBERS.format(trial=chosen.number)
    for k, member_seed in enumerate(seeds[1:], start=1):
        member_dir = folder / f"seed_{k}"
        heldout.refit(model, trial_dir, member_dir, RefitRequest(
            seed=member_seed, through=through, trial_attrs=trial_attrs(chosen),
            cache_dir=cache_dir, progress=False))
        member = heldout.load(member_dir)
        frames.append(heldout.predict(member_dir, member, cache_dir).frame)
    ensemble = ensemble_scores(frames)
    members = [heldout.score(f, model)[0] for f in frames]
    return {**base, "seeds": seeds, "fit_through": through, "trial": chosen.number,
            "members": "member 0 is the chosen trial's own model (its seed); the others its "
                       "configuration trained again with the seeds listed",
            "test": heldout.score(ensemble, model)[0],
            "members_test": [{k: m[k] for k in ("sharpe", "sharpe_net", "rank_ic")
                              if k in m} for m in members],
            "ensemble_minus_single": (heldout.compare(ensemble, prediction.frame, model)
                                      if heldout.supports("compare") else None),
            "_frame": ensemble}
