"""Trainers: one sub-package per workload plus the shared runtime, context and metrics.

Trainers never import optuna: they receive a :class:`trainers.context.TrialContext`.
"""
