"""The workloads the service can drive, looked up by the name a study file gives."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainers.context import TrialContext
from trainers.errors import UserError

if TYPE_CHECKING:
    from trainers.heldout import HeldOut

# name -> package; each package exposes ``WORKLOAD``. Imported lazily: a study of one
# workload must not pay for (or break on) another workload's imports.
_PACKAGES = {
    "atft_gat": "trainers.atft_gat",
    "condor": "trainers.condor",
    "lm": "trainers.lm",
    "denoise": "trainers.denoise",
}


@dataclass(frozen=True)
class Workload:
    """A trainable workload.

    Attributes:
        config_cls: frozen dataclass of every training setting; study parameters and fixed
            settings are its field names, and so are the standalone CLI flags.
        train: ``train(config, ctx) -> metrics``; metrics are finite floats (or NaN when a
            metric is undefined), keyed by the names in ``metrics``.
        metrics: every metric ``train`` returns -> its natural direction ("maximize" or
            "minimize"), used to validate study objectives.
        heldout: the optional held-out capability (``trainers.heldout.HeldOut``): how to
            predict a saved trial on the study's test period and score it, so that
            ``hpo.evaluate`` can open that period. None: the workload holds out none.
        preflight: ``preflight(config)`` raises ``UserError`` for every problem of the data
            that can be found without training; ``hpo.run`` calls it with the study's
            settings before it writes anything (a study, a trial, a directory).
        default_objectives: ``default_objectives(settings) -> [(metric, direction), ...]``,
            the objectives of a study file that lists none (``settings``: its [data],
            [portfolio] and [trainer] tables). None: a study must list its objectives.
        init_study: ``init_study(panel_path, name) -> text`` of a study file that runs on a
            user's panel, or a one-line ``UserError`` listing every problem of the panel
            (``python -m hpo.init``). None: the workload has no such writer.
        steps: ``steps(config) -> int``, how many times a trial of ``config`` reports to the
            study (``ctx.report``: its pruners' steps), e.g. its epochs, or its folds under
            walk-forward validation. None: the config's ``epochs`` field when it has one, else
            unknown (pruners that need the number, such as Hyperband's, then take their own).
        portfolio_fields: the config fields a study file may set in its ``[portfolio]`` table
            (the long-short book's settings); () for a workload that builds no book.

    ``hpo`` reads a workload only through these attributes and the methods below: it never
    probes a config object for attributes.
    """

    name: str
    config_cls: type
    train: Callable[[Any, TrialContext], dict[str, float]]
    metrics: Mapping[str, str]
    description: str = ""
    heldout: HeldOut | None = None
    preflight: Callable[[Any], None] | None = None
    default_objectives: Callable[[Mapping[str, Any]], list[tuple[str, str]]] | None = None
    init_study: Callable[[Any, str], str] | None = None
    steps: Callable[[Any], int] | None = None
    portfolio_fields: tuple[str, ...] = ()

    def reported_steps(self, config: Any) -> int | None:
        """How many times a trial of ``config`` reports (``steps``; module docstring)."""
        if self.steps is not None:
            return int(self.steps(config))
        if "epochs" in {f.name for f in dataclasses.fields(self.config_cls)}:
            epochs = config.epochs
            return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None
        return None



def workload_names() -> list[str]:
    return sorted(_PACKAGES)


def get_workload(name: str) -> Workload:
    """A built-in workload by name, or a user's own by dotted module path.

    A module such as ``mylab.workloads.ranker`` that defines ``WORKLOAD = Workload(...)``
    plugs a custom model into the service without changing it.
    """
    if name in _PACKAGES:
        return importlib.import_module(_PACKAGES[name]).WORKLOAD
    if "." in name:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise UserError(f"workload module {name!r} cannot be imported ({exc}); check "
                            "the name and that it is on PYTHONPATH") from None
        workload = getattr(module, "WORKLOAD", None)
        if not isinstance(workload, Workload):
            raise UserError(f"workload module {name!r} defines no WORKLOAD = Workload(...)")
        return workload
    raise UserError(
        f"unknown workload {name!r}; available: {', '.join(workload_names())} "
        "(or a dotted module path that defines WORKLOAD)"
    )
