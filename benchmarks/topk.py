"""Perturbed top-K: stts vs the naive published algorithm, forward+backward time and peak memory.

    python benchmarks/topk.py                    # the three sizes of the issue, CPU
    python benchmarks/topk.py --device cuda      # on a GPU
    python benchmarks/topk.py --quick            # smoke run

The naive algorithm is the one the STTS authors published (and the widely pasted snippet): it builds
the (B, S, K, N) one-hots with F.one_hot(...).float(), averages them, and backpropagates with the
diagonal estimator through einsums over the one-hots. stts is timed with both of its estimators.
Methods are timed in turn (round-robin) so that machine noise hits them alike; medians are reported.
Peak memory counts the tensors each method allocates (stts.measure: exact on CPU, CUDA's allocator
statistics on GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
import torch.nn.functional as F

from stts.measure import median, peak_memory
from stts.topk import perturbed_topk

SIZES = {  # name: (B, N, k, num_samples)
    "temporal": (64, 8, 4, 500),
    "anchor": (256, 9, 1, 500),
    "token": (8, 1568, 784, 100),
}


class NaivePerturbedTopK(torch.autograd.Function):
    """The published algorithm, written out: materialised one-hots, diagonal estimator."""

    @staticmethod
    def forward(ctx, scores, k, num_samples, sigma):
        B, N = scores.shape
        noise = torch.randn(B, num_samples, N, device=scores.device)
        perturbed = scores[:, None, :] + sigma * noise  # (B, S, N)
        idx = perturbed.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values  # (B, S, K)
        onehots = F.one_hot(idx, N).float()  # (B, S, K, N)
        ctx.save_for_backward(onehots, noise)
        ctx.sigma = sigma
        return onehots.mean(dim=1)  # (B, K, N)

    @staticmethod
    def backward(ctx, grad):
        onehots, noise = ctx.saved_tensors
        S = noise.shape[1]
        expected = torch.einsum("bskd,bsd->bkd", onehots, noise) / (S * ctx.sigma)  # (B, K, N)
        return torch.einsum("bkd,bkd->bd", grad, expected), None, None, None


def make_step(method: str, B: int, N: int, k: int, S: int, device: str):
    scores = torch.randn(B, N, device=device, requires_grad=True)
    grad = torch.randn(B, k, N, device=device)

    def step():
        if method == "naive (published)":
            P = NaivePerturbedTopK.apply(scores, k, S, 0.05)
        else:
            P = perturbed_topk(scores, k, num_samples=S, sigma=0.05, jacobian=method.split()[1])
        P.backward(grad)
        scores.grad = None

    return step


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(size: str, device: str, repeats: int, warmup: int) -> dict:
    B, N, k, S = SIZES[size]
    methods = ["naive (published)", "stts full", "stts diagonal"]
    steps = {m: make_step(m, B, N, k, S, device) for m in methods}
    peaks = {m: peak_memory(steps[m], device)[1] for m in methods}
    for _ in range(warmup):
        for m in methods:
            steps[m]()
    times = {m: [] for m in methods}
    for _ in range(repeats):
        for m in methods:  # round-robin
            sync(device)
            t0 = time.perf_counter()
            steps[m]()
            sync(device)
            times[m].append(time.perf_counter() - t0)
    naive_t, naive_mem = median(times[methods[0]]), peaks[methods[0]]
    rows = []
    for m in methods:
        t = median(times[m])
        rows.append(dict(method=m, median_ms=t * 1e3, peak_mb=peaks[m] / 2**20,
                         speedup_vs_naive=naive_t / t, memory_ratio_vs_naive=naive_mem / max(peaks[m], 1)))
    return dict(size=size, B=B, N=N, k=k, num_samples=S, repeats=repeats, rows=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="3 repeats, 1 warm-up")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.warmup = 3, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = os.getloadavg()
    results = []
    for size in args.sizes:
        # The naive token-level step takes seconds; fewer repeats keep the run short.
        reps = max(3, args.repeats // 3) if size == "token" else args.repeats
        results.append(run(size, args.device, reps, min(args.warmup, 1) if size == "token" else args.warmup))
    meta = dict(device=args.device, threads=args.threads, torch=torch.__version__, cpu=platform.processor() or
                platform.machine(), loadavg_before=load, loadavg_after=os.getloadavg())
    print(f"# perturbed top-K, forward+backward ({meta['device']}, {args.threads} threads, torch {torch.__version__},"
          f" load {load[0]:.2f} -> {meta['loadavg_after'][0]:.2f})\n")
    print("| size (B, N, k, S) | method | median ms | speed-up vs naive | peak MB | memory ratio vs naive |")
    print("|---|---|---:|---:|---:|---:|")
    for r in results:
        shape = f"{r['size']} ({r['B']}, {r['N']}, {r['k']}, {r['num_samples']})"
        for row in r["rows"]:
            print(f"| {shape} | {row['method']} | {row['median_ms']:.2f} | {row['speedup_vs_naive']:.2f}x | "
                  f"{row['peak_mb']:.2f} | {row['memory_ratio_vs_naive']:.1f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, results=results), f, indent=1)


if __name__ == "__main__":
    main()
