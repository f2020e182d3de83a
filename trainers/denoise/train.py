"""Recipe: train the two-layer tanh^3 denoiser on two-hot signals, track the weight blobs.

setup (threads, seed, data, model, runner, resume) -> per epoch: shuffled batches with fresh
noise, one runtime step each (+ Langevin noise for SGLD) -> test loss and blob diagnostics
-> report + checkpoint -> final metrics.
"""

from __future__ import annotations

import time

import torch

from trainers import attrs
from trainers.context import TrialContext
from trainers.denoise.blobs import blob_diagnostics
from trainers.denoise.config import TrainConfig
from trainers.denoise.data import DenoiseData, add_noise, build_data, clean_signals
from trainers.denoise.model import TwoLayerDenoiser, langevin_noise, squared_error
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

# Per-epoch generators are seeded from (run seed, epoch) so that a resumed run draws exactly
# the batches and noise an uninterrupted run would have drawn; the prime keeps the streams of
# neighbouring seeds apart.
_EPOCH_SEED_STRIDE = 1_000_003


def train(config: TrainConfig, ctx: TrialContext) -> dict[str, float]:
    # -- setup ---------------------------------------------------------------------------
    configure_threads()
    seed_everything(ctx.seed)
    data = build_data(
        d=config.d, sparsity=config.sparsity, noise_var=config.noise_var,
        n_train=config.n_train, n_test=config.n_test, data_seed=config.data_seed,
    )
    model = TwoLayerDenoiser(
        d=config.d, hidden=config.hidden, enc_init=config.enc_init, dec_init=config.dec_init
    )
    steps_per_epoch = -(-config.n_train // config.batch_size)
    runner = StepRunner(
        model, config.runtime(), ctx=ctx,
        total_steps=steps_per_epoch * config.epochs, batch_size=config.batch_size,
    )
    ctx.set_attr(attrs.N_PARAMS, sum(p.numel() for p in model.parameters()))
    # Predicting all zeros misses every hot coordinate by exactly 1: the trivial baseline.
    ctx.set_attr(attrs.ZERO_OUTPUT_TEST_LOSS, float(config.sparsity))
    start_epoch, saved = resume(runner, ctx, config=config, extra={"train_seconds": 0.0},
                                optional=PARTIAL)
    train_seconds = float(saved["train_seconds"])

    train_support = data.train_support.to(runner.device)
    metrics: dict[str, float] = {}
    # -- loop ----------------------------------------------------------------------------
    for epoch in range(start_epoch, config.epochs):
        epoch_seed = ctx.seed * _EPOCH_SEED_STRIDE + epoch
        order = torch.randperm(config.n_train, generator=torch.Generator().manual_seed(epoch_seed))
        noise_gen = torch.Generator(device=runner.device).manual_seed(epoch_seed)
        model.train()
        # A step checkpoint of this epoch: skip the steps it ran, with the noise generator
        # where it was (the order is the same).
        part = resume_part(saved, epoch)
        part.state.setdefault("loss_sum", 0.0)
        part.state.setdefault("n_seen", 0)
        if "noise" in part.state:
            noise_gen.set_state(part.state["noise"])
        started = time.perf_counter()
        for i, batch_idx in enumerate(order.split(config.batch_size)):
            if i < part.steps:
                continue
            part.state["noise"] = noise_gen.get_state()
            step_boundary(runner, ctx, config=config, part=part, extra={
                "train_seconds": train_seconds + time.perf_counter() - started})
            clean = clean_signals(train_support[batch_idx.to(runner.device)], d=config.d)
            noisy = add_noise(clean, noise_var=config.noise_var, generator=noise_gen)  # (B, d)
            loss = runner.step(
                len(batch_idx), lambda s, noisy=noisy, clean=clean: squared_error(
                    runner.model(noisy[s]), clean[s]
                ),
            )
            if config.optimizer == "sgld":
                langevin_noise(model, lr=runner.lr, temperature=config.sgld_temperature,
                               generator=noise_gen)
            part.state["loss_sum"] += loss * len(batch_idx)
            part.state["n_seen"] += len(batch_idx)
            part.steps = i + 1
        loss_sum, n_seen = part.state["loss_sum"], part.state["n_seen"]
        train_seconds += time.perf_counter() - started

        metrics = {
            "test_loss": evaluate(model, data, runner=runner, batch_size=config.batch_size),
            **blob_diagnostics(
                model.encoder, model.decoder, eps=config.blob_eps,
                min_samples=config.blob_min_samples, seed=config.data_seed,
            ),
            "train_loss": loss_sum / n_seen,
            "train_seconds": train_seconds,
        }
        ctx.report(epoch + 1, metrics)
        ctx.log(f"epoch {epoch + 1}/{config.epochs} " +
                " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        save_checkpoint(runner, ctx, config=config, epoch=epoch + 1,
                        extra={"train_seconds": train_seconds})

    # -- cleanup -------------------------------------------------------------------------
    ctx.set_attr(attrs.OOM_RETRIES, runner.oom_retries)
    if not metrics:  # resumed from a run that had already finished every epoch
        metrics = {k: v for k, v in ctx.history[-1].items() if k != "epoch"}
    return metrics


def evaluate(
    model: TwoLayerDenoiser, data: DenoiseData, *, runner: StepRunner, batch_size: int
) -> float:
    """Mean per-sample squared error on the fixed test set (same noise for every trial)."""
    noise_gen = torch.Generator(device=runner.device).manual_seed(data.test_noise_seed)
    total, model_was_training = 0.0, model.training
    model.eval()
    with runner.eval_context():
        for support in data.test_support.split(batch_size):
            support = runner.to_device(support)
            clean = clean_signals(support, d=data.d)
            noisy = add_noise(clean, noise_var=data.noise_var, generator=noise_gen)
            total += float(squared_error(runner.model(noisy), clean)) * len(support)
    model.train(model_was_training)
    return total / len(data.test_support)
