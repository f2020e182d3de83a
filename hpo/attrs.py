"""Every user-attr key the service itself writes or reads, in one place.

Study attrs describe the study as a whole; trial attrs are written by the objective around the
trainer's own (the keys trainers write live in :mod:`trainers.attrs`, which ``hpo`` reads).
Test figures never go into a trial's attrs: samplers and pruners read those.
"""

from __future__ import annotations

# -- study user attrs -------------------------------------------------------------------------
FINGERPRINT = "fingerprint"  # hash of the study definition; a changed file is refused
SPEC = "spec"  # the fingerprinted content, to describe what changed
TARGET = "n_trials_target"  # finished trials the study aims for, shared by every worker
WORKLOAD = "workload"
DESCRIPTION = "description"
TEST_REPORT = "test_report"  # the held-out report's summary (hpo.heldout)
# Append-only: one entry per look at the test period (time, finished trials, front, chosen,
# report id); hpo.evaluate refuses a new look without --reopen once it holds one.
TEST_OPENINGS = "test_openings"
# Append-only: one entry per refit of the chosen configuration (hpo.refit): id, time, trial,
# dates, epochs, seed, model SHA-256, directory; hpo.predict --model refit uses the newest.
REFITS = "refits"

# -- trial user attrs written by the objective and the worker ---------------------------------
OUTPUT_DIR = "output_dir"
WORKER = "worker"  # host:pid of the process that ran the trial
SEED = "seed"
HISTORY = "history"  # every epoch's reported metrics
PROGRESS = "progress"  # the running trial's latest progress record (trainers.progress)
EPOCH = "epoch"  # the last epoch reported
EPOCHS_PLANNED = "epochs_planned"
PRUNED_AT = "pruned_at_epoch"
PRUNE_REASON = "prune_reason"
FAIL_REASON = "fail_reason"
# The signal that stopped the trial (SIGTERM, SIGINT); None on a trial that was not stopped.
STOPPED_BY = "stopped_by"
# {"count", "times"}: the SIGTERMs (preemptions) of the trial and the trials it retries.
PREEMPTED = "preempted"
# The environment fault (full disk, read-only filesystem) that stopped the trial; it was
# queued again, not charged (hpo.faults).
ENVIRONMENT_FAULT = "environment_fault"
RETRY_OF = "retry_of"
RESUMED_FROM = "resumed_from"
TRAIN_SECONDS = "train_seconds"
MO_ASHA = "mo_asha"
SURPLUS = "surplus"  # a trial started after the study-wide target was met
ENQUEUED_NAME = "enqueued_name"
ENQUEUED_OVERRIDES = "enqueued_overrides"

# -- Optuna's own system attrs the service reads ----------------------------------------------
RETRY_HISTORY = "retry_history"  # optuna.storages.RetryFailedTrialCallback
