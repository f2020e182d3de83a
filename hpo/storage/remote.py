"""``grpc://HOST:PORT`` storage: Optuna's gRPC storage proxy client, with heartbeats.

Behind ``python -m hpo.proxy`` (Optuna's ``run_grpc_proxy_server`` over the service storage),
hundreds of workers share the proxy's few database connections. Optuna's proxy client
(``GrpcStorageProxy``) carries every storage call but no heartbeat: its protocol has no such
call, so a crashed worker's trial would stay RUNNING for ever. This client adds them with the
storage API the protocol has, without changing anything Optuna does:

- ``record_heartbeat`` writes the trial system attr ``hpo:heartbeat`` (the worker's clock,
  seconds since the epoch), every ``heartbeat_interval`` seconds, from Optuna's own heartbeat
  thread;
- ``_get_stale_trial_ids`` returns the RUNNING trials whose last heartbeat is older than
  ``grace_period``; Optuna's ``fail_stale_trials`` (called by every worker before it starts a
  trial) fails them and runs the retry callback, as on PostgreSQL.

Worker clocks must agree to well within ``grace_period`` (NTP does); on PostgreSQL the
database's clock is used instead. A trial whose worker died before its first heartbeat has no
attr and is never judged stale (as on PostgreSQL without the service's first-heartbeat hook).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna._experimental import warn_experimental_argument
from optuna.storages import GrpcStorageProxy
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from trainers.errors import UserError

SCHEME = "grpc://"
HEARTBEAT_ATTR = "hpo:heartbeat"
DEFAULT_PORT = 13000
READY_TIMEOUT_S = 10.0


def parse_grpc_url(url: str) -> tuple[str, int]:
    """``grpc://HOST:PORT`` -> (host, port); a malformed URL is a UserError."""
    rest = url[len(SCHEME):].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"storage {url!r} must look like grpc://HOST:PORT, e.g. "
                        f"grpc://127.0.0.1:{DEFAULT_PORT} (the address of python -m hpo.proxy)")
    return host, int(port)


class HeartbeatGrpcStorageProxy(GrpcStorageProxy, BaseHeartbeat):
    """Optuna's gRPC proxy client with heartbeats (module docstring)."""

    def __init__(self, *, host: str, port: int, heartbeat_interval: int | None = None,
                 grace_period: int | None = None,
                 heartbeat_stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None]
                 | None = None) -> None:
        # The checks (and messages) of Optuna's RDBStorage, before anything connects.
        if heartbeat_interval is not None and heartbeat_interval <= 0:
            raise ValueError("The value of `heartbeat_interval` should be a positive integer.")
        if heartbeat_interval is not None:
            warn_experimental_argument("heartbeat_interval")
        if grace_period is not None and grace_period <= 0:
            raise ValueError("The value of `grace_period` should be a positive integer.")
        super().__init__(host=host, port=port)
        self.heartbeat_interval = heartbeat_interval
        # Optuna's RDBStorage default: twice the interval.
        self.grace_period = grace_period or (2 * heartbeat_interval if heartbeat_interval
                                             else None)
        self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        if self.grace_period is None:
            return []
        now = time.time()
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return [t._trial_id for t in running
                if isinstance(beat := t.system_attrs.get(HEARTBEAT_ATTR), int | float)
                and now - beat > self.grace_period]

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(
            self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.heartbeat_stale_trial_callback


def open_grpc_storage(url: str, *, heartbeat_interval: int | None = None,
                      grace_period: int | None = None,
                      heartbeat_stale_trial_callback: Any = None) -> HeartbeatGrpcStorageProxy:
    """The client of the proxy at ``url``, once it answers; a UserError when it does not."""
    host, port = parse_grpc_url(url)
    storage = HeartbeatGrpcStorageProxy(
        host=host, port=port, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
        heartbeat_stale_trial_callback=heartbeat_stale_trial_callback)
    try:
        storage.wait_server_ready(timeout=READY_TIMEOUT_S)
    except ConnectionError:
        storage.close()
        raise UserError(f"no storage proxy answers at {url} within {READY_TIMEOUT_S:g} s; start "
                        "it with python -m hpo.proxy --storage URL --host HOST --port PORT") \
            from None
    return storage
