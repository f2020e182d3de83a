"""The search space of a study file: one :class:`Param` per ``[search_space.<name>]`` table."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Protocol

from trainers.config import unknown_key_problem

PARAM_TYPES = ("float", "int", "categorical")


class Problems(Protocol):
    """Where a parser adds what is wrong with a key (``hpo.config``'s collector)."""

    def add(self, key: str, message: str) -> None: ...


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Param:
    """One search-space dimension; ``kind`` is "float", "int" or "categorical"."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def to_json(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"type": self.kind, "choices": list(self.choices)}
        return {"type": self.kind, "low": self.low, "high": self.high, "log": self.log,
                "step": self.step}

    def midpoint(self) -> Any:
        """A value the sampler can draw from the middle of the range, used to validate the
        trainer config before any trial (the first choice of a categorical).

        The middle on the scale the sampler draws from: the geometric mean when ``log``,
        else the arithmetic mean, moved down onto the grid ``low + k * step`` when there is
        a step (an int's step is 1 at least), so it is always a legal point.
        """
        if self.kind == "categorical":
            return self.choices[0]
        assert self.low is not None and self.high is not None
        if self.log:
            middle = math.sqrt(self.low * self.high)
            return math.floor(middle) if self.kind == "int" else middle
        step = self.step if self.step is not None else (1 if self.kind == "int" else None)
        if step is None:
            return (self.low + self.high) / 2
        # points on the grid past low; rounded first so 0.3 / 0.1 = 2.9999... counts 3
        n_steps = math.floor(round((self.high - self.low) / step, 9))
        value = self.low + (n_steps // 2) * step
        return int(value) if self.kind == "int" else float(value)

    def grid_values(self) -> list[Any]:
        if self.kind == "categorical":
            return list(self.choices)
        assert self.low is not None and self.high is not None and self.step is not None
        n = int(round((self.high - self.low) / self.step))
        values = [self.low + i * self.step for i in range(n + 1)]
        return [int(v) for v in values] if self.kind == "int" else values




def parse_param(name: str, raw: Any, problems: Problems) -> Param | None:
    """The ``[search_space.<name>]`` table as a :class:`Param`, or None after adding its
    problems."""
    key = f"search_space.{name}"
    if not isinstance(raw, dict):
        problems.add(key, f"must be a table like {{ type = \"float\", low = 0.0, high = 1.0 }}, "
                          f"got {raw!r}")
        return None
    kind = raw.get("type")
    if kind not in PARAM_TYPES:
        problems.add(f"{key}.type", f"got {kind!r}; allowed: {', '.join(PARAM_TYPES)}")
        return None
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log",
                                                                  "step"}
    for extra in sorted(set(raw) - allowed):
        problems.add(key, unknown_key_problem(extra, sorted(allowed), where="key")
                     .removeprefix("key: "))
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            problems.add(f"{key}.choices", f"must be a non-empty list, got {choices!r}")
            return None
        if any(isinstance(c, dict | list) for c in choices):
            problems.add(f"{key}.choices", f"choices must be strings, numbers or booleans, "
                                           f"got {choices!r}")
            return None
        if len({json.dumps(c) for c in choices}) != len(choices):
            problems.add(f"{key}.choices", f"duplicate choices in {choices!r}")
            return None
        return Param(name=name, kind=kind, choices=tuple(choices))
    low, high = raw.get("low"), raw.get("high")
    log, step = raw.get("log", False), raw.get("step")
    ok = True
    for bound_name, bound in (("low", low), ("high", high)):
        if not is_number(bound) or (kind == "int" and not float(bound).is_integer()):
            what = "an integer" if kind == "int" else "a number"
            problems.add(f"{key}.{bound_name}", f"must be {what}, got {bound!r}")
            ok = False
        elif not math.isfinite(bound):
            problems.add(f"{key}.{bound_name}", f"must be finite, got {bound!r}")
            ok = False
    if not isinstance(log, bool):
        problems.add(f"{key}.log", f"must be true or false, got {log!r}")
        ok = False
    if step is not None and (not is_number(step) or step <= 0):
        problems.add(f"{key}.step", f"must be a positive number, got {step!r}")
        ok = False
    if not ok:
        return None
    if low > high:
        problems.add(key, f"low {low!r} > high {high!r}; low must not exceed high")
        return None
    if log and low <= 0:
        problems.add(f"{key}.low", f"log scale needs low > 0, got {low!r}")
        return None
    if log and step is not None and not (kind == "int" and step == 1):
        problems.add(key, "log and step cannot be combined (use one or the other)")
        return None
    if kind == "int":
        low, high = int(low), int(high)
        step = int(step) if step is not None else 1
    else:
        low, high = float(low), float(high)
    return Param(name=name, kind=kind, low=low, high=high, log=bool(log), step=step)
