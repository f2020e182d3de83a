"""The pruners a study file can name in [pruner]: one module per kind, registered here.

Each module defines one :class:`PrunerKind` as ``KIND``: the [pruner] keys it reads (with
their defaults and allowed ranges), whether it needs a single objective, the Optuna step each
epoch is reported at, and how its Optuna pruner is built. The rest of the service uses them
only through this registry: :mod:`hpo.config` validates the [pruner] table with
:func:`pruner_problems` into a :data:`PrunerSpec` (whose fields are the union of every
kind's keys), :mod:`hpo.study` builds the pruner with :func:`get_kind`, and
:mod:`hpo.objective` reports at :meth:`PrunerKind.step`. Optuna's pruners are used as they
are; the shared MO-ASHA machinery (per-epoch records, the rung rule) is :mod:`hpo.pruning`.

Adding a pruner: write ``hpo/pruners/<name>.py`` defining ``KIND = PrunerKind(...)``, add its
module to ``_MODULES`` below, and give its name and keys a line in docs/study-files.md "Pruning"
section (tests/test_docs.py checks). A key shared with another kind is the same :class:`Key`
(import it from that kind's module), so both read it with one default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from hpo.pruners import (
    hyperband,
    median,
    mo_asha,
    none,
    percentile,
    successive_halving,
    wilcoxon,
)
from hpo.pruners._base import Key, PrunerKind
from trainers.errors import UserError

__all__ = ["KINDS", "PRUNER_KEYS", "SINGLE_OBJECTIVE_PRUNERS", "Key", "PrunerKind",
           "PrunerSpec", "get_kind", "pruner_problems"]

# Registration order is the order error messages and the README list them in.
_MODULES = (none, median, percentile, successive_halving, hyperband, mo_asha, wilcoxon)
KINDS: dict[str, PrunerKind] = {m.KIND.name: m.KIND for m in _MODULES}
# The [pruner] keys each kind reads; any other key is an error, never silently ignored.
PRUNER_KEYS: dict[str, tuple[str, ...]] = {name: k.key_names for name, k in KINDS.items()}
SINGLE_OBJECTIVE_PRUNERS = tuple(name for name, k in KINDS.items() if k.single_objective)


def _spec_class(kinds: Iterable[PrunerKind]) -> type:
    """The frozen dataclass of a parsed [pruner] table: ``name`` and every kind's keys."""
    keys: dict[str, Key] = {}
    for kind in kinds:
        for key in kind.keys:
            if keys.setdefault(key.name, key) != key:
                raise TypeError(f"pruner key {key.name!r} of {kind.name!r} differs from the "
                                f"one declared before ({keys[key.name]}); share the Key")
    fields = [("name", str, dataclasses.field(default="none"))]
    fields += [(k.name, k.type, dataclasses.field(default=k.default)) for k in keys.values()]
    cls = dataclasses.make_dataclass("PrunerSpec", fields, frozen=True)
    cls.__module__ = __name__  # where pickle finds it
    cls.__doc__ = ("The [pruner] table; which keys apply depends on ``name`` (PRUNER_KEYS).\n\n"
                   "Steps and resources are epochs (trainers report once per epoch, 1-based).")
    return cls


PrunerSpec = _spec_class(KINDS.values())


def get_kind(name: str) -> PrunerKind:
    kind = KINDS.get(name)
    if kind is None:
        raise UserError(f"unknown pruner {name!r}; allowed: {', '.join(KINDS)}")
    return kind


def pruner_problems(spec: Any, raw: Mapping[str, Any], *,
                    n_objectives: int) -> list[tuple[str, str]]:
    """(key, problem) for a parsed [pruner] table ``spec`` read from ``raw``: an unknown
    name, a key of another kind, a single-objective kind in a multi-objective study, and
    every value out of its range. Keys no kind reads are reported by the parser itself."""
    name = spec.name
    kind = KINDS.get(name)
    if kind is None:
        return [("pruner.name", f"got {name!r}; allowed: {', '.join(KINDS)}")]
    problems = []
    for key in sorted(set(raw) - {"name"} - set(kind.key_names)):
        if key in PrunerSpec.__dataclass_fields__:
            problems.append((f"pruner.{key}", f"does not apply to pruner {name!r}; its keys: "
                                              f"{', '.join(kind.key_names) or '(none)'}"))
    if kind.single_objective and n_objectives > 1:
        # "none", the kind that is always possible, is the last suggestion
        others = sorted((n for n, k in KINDS.items() if not k.single_objective),
                        key=lambda n: n == none.KIND.name)
        problems.append(("pruner.name", f"{name!r} needs a single objective (Optuna's "
                                        "trial.report refuses multi-objective studies); use "
                                        + " or ".join(f'"{n}"' for n in others)))
    for key in kind.keys:
        problem = key.problem(getattr(spec, key.name))
        if problem is not None:
            problems.append((f"pruner.{key.name}", problem))
    return problems
