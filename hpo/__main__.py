"""``python -m hpo <command> [options]``: the service's one front door.

Each command is the module of the same name (``python -m hpo run ...`` is ``python -m hpo.run
...``, same options, same exit codes); ``python -m hpo`` alone lists them. The Python API over
the same code is ``hpo.api``.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, what it does)
COMMANDS = {
    "init": ("hpo.init", "check a panel and write a study file that runs on it"),
    "run": ("hpo.run", "run or resume a study"),
    "status": ("hpo.status", "progress, ETA, Pareto front, failures"),
    "dashboard": ("hpo.dashboard", "optuna-dashboard on a study, with its artifacts"),
    "export": ("hpo.export", "every trial as CSV/JSON, and plots"),
    "evaluate": ("hpo.evaluate", "open the held-out test period, once"),
    "predict": ("hpo.predict", "score new dates with the chosen model"),
    "refit": ("hpo.refit", "retrain the chosen configuration through a date"),
    "monitor": ("hpo.monitor", "the live dates beside the baselines and validation"),
    "launch": ("hpo.launch", "workers on many hosts: SLURM or SSH"),
    "proxy": ("hpo.proxy", "Optuna's gRPC storage proxy for many workers"),
}
EXIT_USER = 2


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m hpo <command> [options]   (python -m hpo <command> --help)", "",
             "commands:"]
    lines += [f"  {name.ljust(width)}  {what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else EXIT_USER
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; commands: {', '.join(COMMANDS)} (python -m "
              "hpo lists them)", file=sys.stderr)
        return EXIT_USER
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv[0] = f"python -m hpo {name}"
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
