"""Recipe: train CondorBrain on the synthetic options market.

setup (threads, seed, market, model, runner, resume) -> per epoch: shuffled anchors, one
runtime step per batch on the multi-task loss -> validation metrics -> report + checkpoint
-> final metrics.

The multi-task loss is the sum of three terms of comparable size: Huber loss on the strike
offsets standardised with the training split's mean and std, binary cross-entropy on the
probability of profit, and cross-entropy on the expiry regime. ``val_loss`` is that sum on
the validation split; ``strike_l1`` is the mean absolute error of the four offsets in % of
spot, ``prob_brier`` the Brier score of the predicted probability of profit, ``regime_acc``
the share of validation anchors whose regime bin was predicted right.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainers import attrs
from trainers.condor.config import TrainConfig
from trainers.condor.data import (
    N_FEATURES,
    N_REGIMES,
    CondorData,
    build_data,
    gather_targets,
    gather_windows,
)
from trainers.condor.model import CondorBrain
from trainers.context import TrialContext
from trainers.runtime import (
    PARTIAL,
    StepRunner,
    configure_threads,
    resume,
    resume_part,
    save_checkpoint,
    seed_everything,
    step_boundary,
)

# Per-epoch shuffles are seeded from (run seed, epoch) so a resumed run replays exactly the
# order an uninterrupted run would have used.
_EPOCH_SEED_STRIDE = 1_000_003
_EVAL_BATCH = 1024


def multitask_loss(
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    targets: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    strike_mean: torch.Tensor,
    strike_std: torch.Tensor,
) -> torch.Tensor:
    """Mean over the batch of Huber(strikes) + BCE(pop) + CE(regime)."""
    strike_pred, pop_logit, regime_logits = (o.float() for o in outputs)  # (B,4) (B,) (B,R)
    strikes, pop, regime = targets
    return (
        F.huber_loss(strike_pred, (strikes - strike_mean) / strike_std)
        + F.binary_cross_entropy_with_logits(pop_logit, pop)
        + F.cross_entropy(regime_logits, regime)
    )


def train(config: TrainConfig, ctx: TrialContext) -> dict[str, float]:
    # -- setup ---------------------------------------------------------------------------
    configure_threads()
    seed_everything(ctx.seed)
    data = build_data(
        n_paths=config.n_paths, n_days=config.n_days, seq_len=config.seq_len,
        horizon=config.horizon, ivr_window=config.ivr_window,
        val_fraction=config.val_fraction, data_seed=config.data_seed,
    )
    model = CondorBrain(
        n_features=N_FEATURES, d_model=config.d_model, layers=config.layers,
        d_state=config.d_state, n_regimes=N_REGIMES, scan_chunk=config.scan_chunk,
        grad_checkpointing=config.grad_checkpointing,
    )
    n_train = len(data.train_index)
    steps_per_epoch = -(-n_train // config.batch_size)
    runner = StepRunner(
        model, config.runtime(), ctx=ctx,
        total_steps=steps_per_epoch * config.epochs, batch_size=config.batch_size,
    )
    data = CondorData(**{k: runner.to_device(v) for k, v in vars(data).items()})
    train_strikes, train_pop, train_regime = gather_targets(data, data.train_index)
    scale = {"strike_mean": train_strikes.mean(dim=0), "strike_std": train_strikes.std(dim=0)}
    ctx.set_attr(attrs.N_PARAMS, sum(p.numel() for p in model.parameters()))
    ctx.set_attr(attrs.N_TRAIN, n_train)
    ctx.set_attr(attrs.N_VAL, len(data.val_index))
    ctx.set_attr(attrs.BASELINES, baselines(data, train_strikes, train_pop, train_regime))
    start_epoch, saved = resume(runner, ctx, config=config, optional=PARTIAL)

    def loss_on(index: torch.Tensor) -> torch.Tensor:
        return multitask_loss(runner.model(gather_windows(data, index)),
                              gather_targets(data, index), **scale)

    metrics: dict[str, float] = {}
    # -- loop ----------------------------------------------------------------------------
    for epoch in range(start_epoch, config.epochs):
        shuffle = torch.Generator().manual_seed(ctx.seed * _EPOCH_SEED_STRIDE + epoch)
        order = torch.randperm(n_train, generator=shuffle).to(runner.device)
        model.train()
        # A step checkpoint of this epoch: skip the steps it ran (the order is the same).
        part = resume_part(saved, epoch)
        part.state.setdefault("loss_sum", 0.0)
        for i, batch in enumerate(order.split(config.batch_size)):
            if i < part.steps:
                continue
            step_boundary(runner, ctx, config=config, part=part)
            index = data.train_index[batch]  # (B, 2) (path, anchor day)
            part.state["loss_sum"] += runner.step(
                len(batch), lambda s, index=index: loss_on(index[s])) * len(batch)
            part.steps = i + 1
        metrics = {**evaluate(model, data, runner=runner, scale=scale),
                   "train_loss": part.state["loss_sum"] / n_train}
        ctx.report(epoch + 1, metrics)
        ctx.log(f"epoch {epoch + 1}/{config.epochs} " +
                " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        save_checkpoint(runner, ctx, config=config, epoch=epoch + 1)

    # -- cleanup -------------------------------------------------------------------------
    if not metrics:  # resumed from a run that had already finished every epoch
        metrics = {k: v for k, v in ctx.history[-1].items() if k != "epoch"}
    return metrics


def evaluate(
    model: CondorBrain, data: CondorData, *, runner: StepRunner, scale: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Validation metrics over every validation anchor (sums first, then one division)."""
    sums = {"val_loss": 0.0, "strike_l1": 0.0, "prob_brier": 0.0, "regime_acc": 0.0}
    model_was_training = model.training
    model.eval()
    with runner.eval_context():
        for index in data.val_index.split(_EVAL_BATCH):
            outputs = runner.model(gather_windows(data, index))
            strikes, pop, regime = targets = gather_targets(data, index)
            strike_pred = outputs[0].float() * scale["strike_std"] + scale["strike_mean"]
            n = len(index)
            sums["val_loss"] += float(multitask_loss(outputs, targets, **scale)) * n
            sums["strike_l1"] += float((strike_pred - strikes).abs().mean(dim=1).sum())
            prob = torch.sigmoid(outputs[1].float())
            sums["prob_brier"] += float((prob - pop).pow(2).sum())
            sums["regime_acc"] += float((outputs[2].argmax(dim=1) == regime).sum())
    model.train(model_was_training)
    return {k: v / len(data.val_index) for k, v in sums.items()}


def baselines(
    data: CondorData, train_strikes: torch.Tensor, train_pop: torch.Tensor,
    train_regime: torch.Tensor,
) -> dict[str, float]:
    """Scores of input-blind predictions fitted on the training split, on the validation
    split: the per-offset median, the base rate of profit, the most common regime."""
    strikes, pop, regime = gather_targets(data, data.val_index)
    majority = torch.bincount(train_regime, minlength=N_REGIMES).argmax()
    return {
        "strike_l1": float((strikes - train_strikes.median(dim=0).values).abs().mean()),
        "prob_brier": float((pop - train_pop.mean()).pow(2).mean()),
        "regime_acc": float((regime == majority).float().mean()),
    }
