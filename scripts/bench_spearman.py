"""Benchmark: forward + backward of the Spearman loss on float32 (dates x stocks) batches.

Compares three soft ranks inside the same loss (standardise -> soft rank -> Pearson with the
target's hard ranks -> mean over dates):

- ours:      ``losses.spearman_loss`` (permutahedron projection, sort + PAV, O(n log n));
- pairwise:  r_i = 1/2 + sum_j sigmoid(z_i - z_j) on the same scaled scores z (O(n^2) time and
             memory: a (dates, n, n) tensor);
- torchsort: ``torchsort.soft_rank`` on the same z with the same strength, when it is installed
             (it is not a project dependency; null otherwise).

Timing: wall clock of one forward + backward, median of ``--repeats`` after one warm-up call.
Ours and torchsort run interleaved in this process (ours, torchsort, ours, ...) so that a busy
machine slows both alike. torch keeps its default thread count. The process CPU time of the same
calls (``*_cpu_ms``, all threads) is recorded too: on a shared machine it moves much less than
the wall clock, which helps when comparing with pairwise, measured minutes apart.

Memory ("peak extra"): each method runs again in a fresh subprocess that resets the kernel's
peak-RSS mark (``/proc/self/clear_refs`` <- 5) after building its inputs, runs the warm-up and
three timed calls, then reads ``VmHWM`` from ``/proc/self/status``: peak RSS minus the RSS just
before the first call. RSS sees torch's, numpy's and scipy's allocations alike (tracemalloc would
see none of torch's). Where clear_refs is unavailable it falls back to ``ru_maxrss``.

The pairwise (64, 8000) case needs ~32 GB, so by default it runs on ``--pairwise-rows`` dates and
its time and memory are extrapolated linearly in the number of dates (the JSON says so).

Example::

    python scripts/bench_spearman.py                      # both shapes, ~2-3 minutes
    python scripts/bench_spearman.py --shapes 64x4000 --pairwise-rows 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO))

from losses import DEFAULT_STRENGTH, hard_rank, spearman_loss  # noqa: E402

# The pairwise (dates, n, n) float32 tensors, forward + backward, need about 2 x 4 n^2 bytes per
# date: 64 x 4000 -> ~8 GB, 64 x 8000 -> ~32 GB. Above this many bytes per run we shrink the batch.
PAIRWISE_FULL_LIMIT_BYTES = 12 * 2**30


def _scaled(pred: torch.Tensor) -> torch.Tensor:
    """The scores every method ranks: the row standardised to the spread of the ranks 1..n."""
    n = pred.shape[-1]
    centred = pred - pred.mean(dim=1, keepdim=True)
    return centred / centred.std(dim=1, keepdim=True, unbiased=False) * ((n * n - 1) / 12) ** 0.5


def _pearson_loss(r: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    rc, qc = r - r.mean(dim=1, keepdim=True), q - q.mean(dim=1, keepdim=True)
    corr = (rc * qc).sum(dim=1) / torch.sqrt((rc * rc).sum(dim=1) * (qc * qc).sum(dim=1))
    return (1 - corr).mean()


def _pairwise_soft_rank(z: torch.Tensor, strength: float) -> torch.Tensor:
    # (dates, n, n): sigmoid((z_i - z_j) / strength), summed over j; the diagonal adds the 1/2.
    z = z / strength  # (dates, n): scale before the (dates, n, n) difference, not after
    return torch.sigmoid(z[:, :, None] - z[:, None, :]).sum(dim=2) + 0.5


def make_step(method: str, pred: torch.Tensor, target: torch.Tensor, strength: float):
    """One forward + backward of the loss with ``method``'s soft rank."""
    if method == "ours":

        def step():
            pred.grad = None
            spearman_loss(pred, target, strength=strength).backward()

        return step
    if method == "pairwise":
        soft = _pairwise_soft_rank
    elif method == "torchsort":
        import torchsort

        def soft(z, s):
            return torchsort.soft_rank(z, regularization_strength=s)

    else:
        raise ValueError(f"unknown method {method!r}: expected ours, pairwise or torchsort")

    def step():
        pred.grad = None
        q = hard_rank(target)  # the targets' ranks are recomputed per call, as ours does
        _pearson_loss(soft(_scaled(pred), strength), q).backward()

    return step


def _inputs(rows: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(rows, n, generator=g)
    pred = (0.1 * target + torch.randn(rows, n, generator=g)).requires_grad_()
    return pred, target


def _time(step, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU milliseconds (all threads) of each call."""
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        step()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return wall, cpu


# --------------------------------------------------------------------------- memory worker


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        return True
    except OSError:
        return False


def _peak_bytes(reset_ok: bool) -> int:
    if reset_ok:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


def worker(method: str, rows: int, n: int, repeats: int, strength: float) -> dict:
    """Runs in a fresh process: time and peak extra RSS of ``method`` on (rows, n)."""
    pred, target = _inputs(rows, n)
    step = make_step(method, pred, target, strength)
    reset_ok = _reset_peak()
    before = _rss_bytes()
    times, cpu = _time(step, 1 + repeats)
    peak = _peak_bytes(reset_ok) - before
    return {
        "warmup_ms": times[0],
        "times_ms": times[1:],
        "median_ms": statistics.median(times[1:]),
        "median_cpu_ms": statistics.median(cpu[1:]),
        "peak_extra_mb": peak / 2**20,
        "memory_method": "VmHWM after clear_refs" if reset_ok else "ru_maxrss",
    }


def run_worker(method: str, rows: int, n: int, repeats: int, strength: float) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", method, f"{rows}x{n}", "--repeats", str(repeats)]
    cmd += ["--strength", str(strength)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"  {method} {rows}x{n} failed: {proc.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main


def _have_torchsort() -> bool:
    try:
        import torchsort  # noqa: F401
    except Exception:  # ImportError, or a broken build raising anything at import
        return False
    return True


def bench_shape(rows: int, n: int, args: argparse.Namespace, torchsort_ok: bool) -> dict:
    print(f"== {rows} x {n} (float32, forward + backward) ==", flush=True)
    # Interleaved timing of the fast methods in this process.
    fast = ["ours"] + (["torchsort"] if torchsort_ok else [])
    pred, target = _inputs(rows, n)
    steps = {m: make_step(m, pred, target, args.strength) for m in fast}
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {m: [] for m in fast}
    cpu: dict[str, list[float]] = {m: [] for m in fast}
    for _ in range(args.repeats):
        for m in fast:
            wall_ms, cpu_ms = _time(steps[m], 1)
            times[m] += wall_ms
            cpu[m] += cpu_ms
    result: dict = {"shape": [rows, n]}
    for m in fast:
        result[f"{m}_ms"] = statistics.median(times[m])
        result[f"{m}_cpu_ms"] = statistics.median(cpu[m])
        result[f"{m}_times_ms"] = times[m]
    if not torchsort_ok:
        result["torchsort_ms"] = None
        result["torchsort_peak_mb"] = None
        result["torchsort_note"] = "torchsort is not installed (or failed to import)"

    for m in fast:
        mem = run_worker(m, rows, n, 3, args.strength)
        result[f"{m}_peak_mb"] = None if mem is None else mem["peak_extra_mb"]
        if mem is not None:
            result["memory_method"] = mem["memory_method"]

    # Pairwise: shrink the batch where the full one would not fit, then scale up by dates.
    if args.skip_pairwise:
        result.update(pairwise_ms=None, pairwise_peak_mb=None, pairwise_note="skipped")
    else:
        full_bytes = 2 * 4 * rows * n * n
        p_rows = rows if full_bytes <= PAIRWISE_FULL_LIMIT_BYTES else min(args.pairwise_rows, rows)
        mem = run_worker("pairwise", p_rows, n, args.pairwise_repeats, args.strength)
        factor = rows / p_rows
        if mem is None:
            result.update(pairwise_ms=None, pairwise_peak_mb=None, pairwise_note="failed")
        else:
            result["pairwise_ms"] = mem["median_ms"] * factor
            result["pairwise_cpu_ms"] = mem["median_cpu_ms"] * factor
            result["pairwise_peak_mb"] = mem["peak_extra_mb"] * factor
            result["pairwise_rows_measured"] = p_rows
            result["pairwise_repeats"] = args.pairwise_repeats
            result["pairwise_extrapolated"] = p_rows != rows
            if p_rows != rows:
                result["pairwise_note"] = (
                    f"measured on {p_rows} of {rows} dates ({mem['median_ms']:.0f} ms, "
                    f"{mem['peak_extra_mb']:.0f} MB) and scaled linearly by {factor:g}: "
                    f"the full batch needs ~{full_bytes / 2**30:.0f} GiB"
                )
            else:
                result["pairwise_note"] = f"measured on all {rows} dates, median of repeats"
    if result.get("pairwise_ms"):
        result["speedup_vs_pairwise"] = result["pairwise_ms"] / result["ours_ms"]
        result["cpu_speedup_vs_pairwise"] = result["pairwise_cpu_ms"] / result["ours_cpu_ms"]
    if result.get("torchsort_ms"):
        result["ours_over_torchsort"] = result["ours_ms"] / result["torchsort_ms"]
    _print_row(result)
    return result


def _fmt(v, unit: str) -> str:
    return "n/a" if v is None else f"{v:,.1f} {unit}"


def _print_row(r: dict) -> None:
    print(f"  {'method':<10} {'wall (median)':>16} {'CPU (median)':>16} {'peak extra RSS':>16}")
    for m in ("ours", "torchsort", "pairwise"):
        wall_ms, cpu_ms = _fmt(r.get(f"{m}_ms"), "ms"), _fmt(r.get(f"{m}_cpu_ms"), "ms")
        peak_mb = _fmt(r.get(f"{m}_peak_mb"), "MB")
        print(f"  {m:<10} {wall_ms:>16} {cpu_ms:>16} {peak_mb:>16}")
    if r.get("pairwise_note"):
        print(f"  pairwise: {r['pairwise_note']}")
    if r.get("speedup_vs_pairwise"):
        print(
            f"  ours is {r['speedup_vs_pairwise']:,.0f}x faster than pairwise "
            f"({r['cpu_speedup_vs_pairwise']:,.0f}x in CPU time)"
        )
    if r.get("ours_over_torchsort"):
        print(f"  ours / torchsort time: {r['ours_over_torchsort']:.2f}")
    print(flush=True)


def _shape(text: str) -> tuple[int, int]:
    try:
        rows, n = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 64x4000, got {text!r}") from None
    if rows < 1 or n < 2:
        raise argparse.ArgumentTypeError(f"shape needs >= 1 date and >= 2 stocks, got {text!r}")
    return rows, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="64x4000,64x8000", help="comma-separated DATESxSTOCKS")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per method (median)")
    ap.add_argument("--pairwise-repeats", type=int, default=3, help="timed pairwise calls")
    ap.add_argument("--pairwise-rows", type=int, default=8, help="dates when pairwise won't fit")
    ap.add_argument("--skip-pairwise", action="store_true", help="leave out the O(n^2) baseline")
    ap.add_argument("--strength", type=float, default=DEFAULT_STRENGTH)
    ap.add_argument("--out", default=str(REPO / "output" / "bench" / "spearman.json"))
    ap.add_argument("--worker", nargs=2, metavar=("METHOD", "SHAPE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        rows, n = _shape(args.worker[1])
        print(json.dumps(worker(args.worker[0], rows, n, args.repeats, args.strength)))
        return 0

    shapes = [_shape(s) for s in args.shapes.split(",")]
    torchsort_ok = _have_torchsort()
    env = {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "load_average_start": os.getloadavg(),
        "strength": args.strength,
        "repeats": args.repeats,
        "timing": "wall clock of forward + backward, median; ours and torchsort interleaved; "
        "*_cpu_ms: process CPU time of the same calls (all threads), less sensitive to a busy "
        "machine",
        "memory": "peak RSS minus RSS before the first call, fresh subprocess per method",
    }
    print(
        f"torch {env['torch']}, {env['torch_threads']} threads, {env['cpus']} CPUs, "
        f"load {env['load_average_start'][0]:.1f}",
        flush=True,
    )
    results = [bench_shape(rows, n, args, torchsort_ok) for rows, n in shapes]
    env["load_average_end"] = os.getloadavg()

    headline = results[0]
    keys = ("shape", "ours_ms", "pairwise_ms", "torchsort_ms", "ours_peak_mb", "pairwise_peak_mb")
    report = {k: headline.get(k) for k in keys}
    report["torchsort_peak_mb"] = headline.get("torchsort_peak_mb")
    report["shapes"] = results
    report["environment"] = env
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
