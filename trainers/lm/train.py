"""Recipe: train a byte-level GPT (softmax attention) or its OKADFA variant.

setup (threads, seed, corpus, model, runner, resume) -> per epoch: ``iters_per_epoch``
optimizer steps on random training windows (``accumulation`` runtime calls each) ->
validation loss on fixed windows -> report + checkpoint -> final metrics.

Loss: next-byte cross-entropy in nats, plus ``ortho_weight`` times the orthogonality
penalty of the attention projections when ``attention = "okadfa"`` (``train_loss`` includes
it; ``val_loss`` and ``perplexity = exp(val_loss)`` are pure cross-entropy).
``tokens_per_s`` counts training tokens (inputs) per second of training steps.
"""

from __future__ import annotations

import math
import time

import torch

from trainers import attrs
from trainers.context import TrialContext
from trainers.lm.config import TrainConfig
from trainers.lm.data import (
    VOCAB_SIZE,
    TextData,
    eval_starts,
    load_text,
    unigram_cross_entropy,
    windows,
)
from trainers.lm.model import GPT, next_byte_loss
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

# Per-epoch window draws are seeded from (run seed, epoch): a resumed run sees exactly the
# windows an uninterrupted one would have seen.
_EPOCH_SEED_STRIDE = 1_000_003


def train(config: TrainConfig, ctx: TrialContext) -> dict[str, float]:
    # -- setup ---------------------------------------------------------------------------
    configure_threads()
    seed_everything(ctx.seed)
    data = load_text(corpus=config.corpus, max_bytes=config.corpus_max_bytes,
                     val_fraction=config.val_fraction, block_size=config.block_size)
    model = GPT(
        vocab_size=VOCAB_SIZE, block_size=config.block_size, d_model=config.d_model,
        layers=config.layers, heads=config.heads, d_ff=config.ff_width,
        attention=config.attention, n_features=config.n_features, chunk=config.attn_chunk,
        dropout=config.dropout, grad_checkpointing=config.grad_checkpointing,
    )
    calls_per_step = config.accumulation  # runtime calls per optimizer step
    runner = StepRunner(
        model, config.runtime(), ctx=ctx,
        total_steps=config.total_steps * calls_per_step, batch_size=config.batch_size,
    )
    ctx.set_attr(attrs.N_PARAMS, sum(p.numel() for p in model.parameters()))
    ctx.set_attr(attrs.CORPUS_SOURCE, data.source)
    ctx.set_attr(attrs.CORPUS_BYTES, len(data.train) + len(data.val))
    ctx.set_attr(attrs.UNIFORM_VAL_LOSS, math.log(VOCAB_SIZE))
    ctx.set_attr(attrs.UNIGRAM_VAL_LOSS, unigram_cross_entropy(data.train, data.val))
    start_epoch, saved = resume(runner, ctx, config=config,
                                extra={"train_seconds": 0.0, "train_tokens": 0},
                                optional=PARTIAL)
    train_seconds, train_tokens = float(saved["train_seconds"]), int(saved["train_tokens"])

    def loss_on(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = next_byte_loss(runner.model(x), y)
        if config.attention == "okadfa" and config.ortho_weight > 0:
            loss = loss + config.ortho_weight * model.orthogonality_penalty()
        return loss

    metrics: dict[str, float] = {}
    # -- loop ----------------------------------------------------------------------------
    for epoch in range(start_epoch, config.n_epochs):
        steps = min(config.iters_per_epoch, config.total_steps - epoch * config.iters_per_epoch)
        gen = torch.Generator().manual_seed(ctx.seed * _EPOCH_SEED_STRIDE + epoch)
        starts = torch.randint(len(data.train) - config.block_size - 1,
                               (steps * calls_per_step, config.batch_size), generator=gen)
        model.train()
        # A step checkpoint of this epoch: skip the calls it ran (the windows are the same).
        part = resume_part(saved, epoch)
        part.state.setdefault("loss_sum", 0.0)
        started = time.perf_counter()
        for i, call_starts in enumerate(starts):  # (B,) window starts of one runtime call
            if i < part.steps:
                continue
            step_boundary(runner, ctx, config=config, part=part, extra={
                "train_seconds": train_seconds + time.perf_counter() - started,
                "train_tokens": train_tokens})
            x, y = runner.to_device(*windows(data.train, call_starts, config.block_size))
            part.state["loss_sum"] += runner.step(len(call_starts),
                                                  lambda s, x=x, y=y: loss_on(x[s], y[s]))
            part.steps = i + 1
        loss_sum = part.state["loss_sum"]
        if runner.device.type == "cuda":
            torch.cuda.synchronize(runner.device)  # time the work, not its queueing
        train_seconds += time.perf_counter() - started
        train_tokens += starts.numel() * config.block_size

        val_loss = evaluate(model, data, runner=runner, config=config)
        metrics = {
            "val_loss": val_loss,
            "perplexity": math.exp(min(val_loss, 50.0)),  # cap: exp overflows past ~709
            "tokens_per_s": train_tokens / max(train_seconds, 1e-9),
            "train_loss": loss_sum / len(starts),
        }
        ctx.report(epoch + 1, metrics)
        ctx.log(f"epoch {epoch + 1}/{config.n_epochs} " +
                " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        save_checkpoint(runner, ctx, config=config, epoch=epoch + 1,
                        extra={"train_seconds": train_seconds, "train_tokens": train_tokens})

    # -- cleanup -------------------------------------------------------------------------
    if not metrics:  # resumed from a run that had already finished every epoch
        metrics = {k: v for k, v in ctx.history[-1].items() if k != "epoch"}
    return metrics


def evaluate(model: GPT, data: TextData, *, runner: StepRunner, config: TrainConfig) -> float:
    """Mean next-byte cross-entropy over fixed, evenly spaced validation windows."""
    starts = eval_starts(len(data.val), block_size=config.block_size,
                         n_windows=config.eval_windows)
    total = 0.0
    model_was_training = model.training
    model.eval()
    with runner.eval_context():
        for batch in starts.split(config.batch_size):
            x, y = runner.to_device(*windows(data.val, batch, config.block_size))
            total += float(next_byte_loss(runner.model(x), y)) * len(batch)
    model.train(model_was_training)
    return total / len(starts)
