"""The study side of the service: study files, storage, objective, the run/status/export CLIs."""

import warnings

# Heartbeats, retry history and metric names are marked experimental in Optuna 5 but are the
# documented way to do what this service does; the warning on every call is noise to users.
warnings.filterwarnings("ignore", message=r".*(is experimental|is an experimental feature).*")
