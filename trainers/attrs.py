"""The user-attr keys trainers write through ``TrialContext.set_attr``, in one place.

``hpo`` reads some of them (the date split, above all); both sides import the key from here,
so a renamed key cannot leave a reader behind.
"""

from __future__ import annotations

# -- what the service reads back ---------------------------------------------------------------
DATE_SPLIT = "date_split"  # first/last ISO date of train, val, test: the study's, every trial
# The long-short book a ranking trial's trading figures were scored with (enter, exit,
# halflife): the PBO re-scores each trial's validation rows with its own book.
BOOK = "book"

# -- descriptive, shown by status/export ----------------------------------------------------------
SPLIT = "split"  # sizes of each period in this trial
DATA = "data"
GRAPH = "graph"
FEATURE_RANK_IC = "feature_rank_ic"
N_PARAMS = "n_params"
N_TRAIN = "n_train"
N_VAL = "n_val"
BASELINES = "baselines"
CORPUS_SOURCE = "corpus_source"
CORPUS_BYTES = "corpus_bytes"
UNIFORM_VAL_LOSS = "uniform_val_loss"
UNIGRAM_VAL_LOSS = "unigram_val_loss"
ZERO_OUTPUT_TEST_LOSS = "zero_output_test_loss"

# -- written by the step runner ----------------------------------------------------------------
OOM_RETRIES = "oom_retries"
MICRO_BATCH = "micro_batch"
TF32 = "tf32"
GRAD_CHECKPOINTING = "grad_checkpointing"
DEVICE = "device"
PRECISION = "precision"
OPTIMIZER_CLASS = "optimizer_class"
ACCUMULATION = "accumulation"
EFFECTIVE_BATCH = "effective_batch"
