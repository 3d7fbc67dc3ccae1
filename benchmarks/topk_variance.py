"""Perturbed top-K: gradient variance (and error against the exact gradient) of the variance reductions.

    python benchmarks/topk_variance.py                       # all settings, S = 100 and 500, then the cost
    python benchmarks/topk_variance.py --no-cost --json benchmarks/results/topk_variance.json
    python benchmarks/topk_variance.py --no-variance --repeats 41     # time and memory only
    python benchmarks/topk_variance.py --quick               # smoke run

For each setting (scores s, upstream gradient G), R independent estimates of dL/ds are drawn with S
noise samples each (R copies of the row in one batch), for both estimators (`jacobian` full and
diagonal) and every `variance_reduction`, all at the same S:
- variance: E||g - E[g]||^2, summed over the N coordinates (from the R estimates);
- MSE: E||g - grad||^2 against the exact gradient grad = d<G, E[Y(s + sigma Z)]>/ds, where N is small
  enough to compute E[Y] by quadrature over every K-subset (float64) and differentiate it by central
  differences. For the diagonal estimator the MSE includes its bias (it drops the Jacobian's
  off-diagonal terms), for the full one it is its variance (it is unbiased). At token level the
  gradient is estimated (the mean of 4R full + loo estimates at the largest S; its own expected
  squared error is subtracted), so the MSE there is an estimate too.
Figures are means over a few score vectors (min-max normalised random scores in [0, 1], as the
selectors' scorers give) and reported with their ratio to the plain estimator of the same `jacobian`.

Upstream gradients: "random", G ~ N(0, 1); "model", G = dL/dP of a small model on the kept tokens
(kept = P @ X, X (N, C) tokens with a non-zero mean, a per-token MLP, mean pooling, a linear
classifier, cross-entropy), evaluated at P = E[Y] (exact, or a 20000-sample estimate at token level).

Cost: forward + backward time (round-robin medians) and peak memory (stts.measure) of every variant at
the sizes of benchmarks/topk.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os

import torch

from stts.measure import cpu_name, median, peak_memory, time_round_robin
from stts.topk import VARIANCE_REDUCTIONS, perturbed_topk

# name: (N, K, sigma, score vectors, replicates R, exact gradient?)
SETTINGS = {
    "temporal": (8, 4, 0.1, 4, 2000, True),
    "anchor9": (9, 1, 0.1, 4, 2000, True),
    "anchor16": (16, 1, 0.1, 4, 2000, True),
    "token": (1568, 784, 0.05, 2, 100, False),
}
COST_SIZES = {"temporal": (64, 8, 4, 500), "anchor": (256, 9, 1, 500), "token": (8, 1568, 784, 100)}
JACOBIANS = ("full", "diagonal")


# ---------------------------------------------------------------------------------------------------
# Exact expectation by quadrature (float64), and its gradient.
# ---------------------------------------------------------------------------------------------------


def exact_expectation(s: torch.Tensor, k: int, sigma: float, points: int = 20001) -> torch.Tensor:
    """E[Y(s + sigma Z)] (K, N) for one score row s (N,), in float64.

    P(A is the top-k set) = int f_rest(t) P(min_A > t) dt, f_rest the density of the max of the other
    scores: F_rest(t) * sum_{j in rest} phi_j(t) / Phi_j(t), with F_rest = prod_{j in rest} Phi_j. All
    K-subsets at once, as sums of logs over a membership matrix. The grid reaches 10 sigma past the
    scores, where Phi >= 1e-23 stays far from float64 underflow.
    """
    s = s.double()
    n = s.numel()
    t = torch.linspace(float(s.min()) - 10 * sigma, float(s.max()) + 10 * sigma, points, dtype=torch.float64)
    z = (t[None, :] - s[:, None]) / sigma  # (N, T)
    log_cdf, log_sf = torch.special.log_ndtr(z), torch.special.log_ndtr(-z)
    mills = torch.exp(-0.5 * z**2 - log_cdf) / (sigma * math.sqrt(2 * math.pi))  # phi / Phi: (N, T)
    subsets = list(itertools.combinations(range(n), k))
    member = torch.zeros(len(subsets), n, dtype=torch.float64)  # (subsets, N): 1 where in A
    for a, A in enumerate(subsets):
        member[a, list(A)] = 1.0
    rest = 1.0 - member
    dens = torch.exp(rest @ log_cdf + member @ log_sf) * (rest @ mills)  # f_rest * P(min_A > t): (subsets, T)
    p = torch.trapezoid(dens, t) if k < n else torch.ones(len(subsets), dtype=torch.float64)
    out = torch.zeros(k, n, dtype=torch.float64)
    for a, A in enumerate(subsets):  # combinations are ascending: slot i holds the i-th kept index
        out[torch.arange(k), list(A)] += p[a]
    return out


def exact_jacobian(s: torch.Tensor, k: int, sigma: float, eps: float = 1e-4) -> torch.Tensor:
    """J[i, m, d] = dE[Y[i, m]]/ds_d (K, N, N) by central differences (eps 1e-4 vs 1e-3: 5e-5 apart)."""
    n = s.numel()
    return torch.stack([(exact_expectation(s + eps * e, k, sigma) - exact_expectation(s - eps * e, k, sigma))
                        / (2 * eps) for e in torch.eye(n, dtype=torch.float64)], dim=-1)


def exact_gradients(J: torch.Tensor, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(true gradient sum_{i,m} G[i,m] J[i,m,d], the diagonal estimator's expectation sum_i G[i,d] J[i,d,d])."""
    G = G.double()
    return torch.einsum("km,kmd->d", G, J), torch.einsum("kd,kdd->d", G, J)


# ---------------------------------------------------------------------------------------------------
# Upstream gradients.
# ---------------------------------------------------------------------------------------------------


def model_upstream(P: torch.Tensor, gen: torch.Generator, channels: int = 32, classes: int = 10) -> torch.Tensor:
    """dL/dP (K, N) of a small model on the soft-kept tokens, at the indicator P (K, N)."""
    K, N = P.shape
    X = torch.randn(N, channels, generator=gen) + 0.5  # tokens; features are not zero-mean
    w1 = torch.randn(channels, 64, generator=gen) / math.sqrt(channels)
    w2 = torch.randn(64, channels, generator=gen) / 8
    head = torch.randn(channels, classes, generator=gen) / math.sqrt(channels)
    label = torch.randint(classes, (1,), generator=gen)
    P = P.float().clone().requires_grad_(True)
    kept = P @ X  # (K, C)
    h = kept + torch.nn.functional.gelu(kept @ w1) @ w2  # a residual MLP per kept token
    logits = h.mean(dim=0) @ head  # (classes,)
    torch.nn.functional.cross_entropy(logits[None], label).backward()
    return P.grad  # (K, N)


def minmax(x: torch.Tensor) -> torch.Tensor:
    return (x - x.min()) / (x.max() - x.min())


# ---------------------------------------------------------------------------------------------------
# Variance and MSE.
# ---------------------------------------------------------------------------------------------------


def estimates(s, G, k, sigma, S, jacobian, variance_reduction, R, seed, chunk_elems=2**25) -> torch.Tensor:
    """R independent estimates (R, N) of the gradient at one score row s (N,) for upstream G (K, N)."""
    n = s.numel()
    gen = torch.Generator().manual_seed(seed)
    rows = max(1, min(R, chunk_elems // (S * n)))
    out = []
    for start in range(0, R, rows):
        r = min(rows, R - start)
        x = s.float().expand(r, n).clone().requires_grad_(True)
        P = perturbed_topk(x, k, num_samples=S, sigma=sigma, jacobian=jacobian,
                           variance_reduction=variance_reduction, generator=gen)
        P.backward(G.float().expand(r, -1, -1))
        out.append(x.grad.double())
    return torch.cat(out)


def measure_setting(name: str, samples: list[int], seed: int, replicates: int | None) -> list[dict]:
    N, K, sigma, draws, R, exact = SETTINGS[name]
    R = replicates or R
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for draw in range(draws):
        s = minmax(torch.randn(N, generator=gen, dtype=torch.float64))
        if exact:
            EY, J = exact_expectation(s, K, sigma), exact_jacobian(s, K, sigma)
        else:
            EY = perturbed_topk(s.float()[None], K, num_samples=20000, sigma=sigma, generator=gen)[0]
        for g_kind in ("random", "model"):
            G = torch.randn(K, N, generator=gen) if g_kind == "random" else model_upstream(EY, gen)
            if exact:
                grad_true, diag_mean = exact_gradients(J, G)
                ref_noise = 0.0
            else:
                # No exact gradient: the mean of 4R more full + loo estimates (unbiased) at the largest S
                # stands in; ref_noise = E||reference - grad||^2 is subtracted from the squared errors.
                ref = estimates(s, G, K, sigma, max(samples), "full", "loo", 4 * R, seed=10**6 + draw)
                grad_true, ref_noise = ref.mean(dim=0), float(ref.var(dim=0).sum()) / (4 * R)
            for S, jacobian, vr in itertools.product(samples, JACOBIANS, VARIANCE_REDUCTIONS):
                g = estimates(s, G, K, sigma, S, jacobian, vr, R, seed=1000 * draw + S)
                row = dict(setting=name, N=N, K=K, sigma=sigma, G=g_kind, S=S, jacobian=jacobian,
                           variance_reduction=vr, draw=draw, R=R,
                           variance=float(g.var(dim=0).sum()))
                row["mse"] = float(((g - grad_true) ** 2).sum(dim=1).mean()) - ref_noise
                row["grad_norm2"] = float((grad_true**2).sum()) - ref_noise
                row["mse_estimated"] = not exact
                if exact:
                    target = grad_true if jacobian == "full" else diag_mean
                    # Is the mean where it should be? |mean - own target| in standard errors (max over d).
                    # The standard error is floored at 1e-3 of the largest target entry: a coordinate
                    # that no sample keeps has a diagonal estimate of exactly 0 (se 0) whatever R.
                    se = (g.std(dim=0) / math.sqrt(R)).clamp_min(1e-3 * float(target.abs().max()))
                    row["bias_z"] = float(((g.mean(dim=0) - target).abs() / se).max())
                rows.append(row)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean over the score draws, and ratios to the plain estimator of the same jacobian."""
    keys = sorted({(r["setting"], r["G"], r["S"], r["jacobian"], r["variance_reduction"]) for r in rows},
                  key=lambda k: (list(SETTINGS).index(k[0]), k[1], k[2], JACOBIANS.index(k[3]),
                                 VARIANCE_REDUCTIONS.index(k[4])))
    out = {}
    for key in keys:
        group = [r for r in rows if (r["setting"], r["G"], r["S"], r["jacobian"], r["variance_reduction"]) == key]
        m = dict(zip(("setting", "G", "S", "jacobian", "variance_reduction"), key))
        m["variance"] = sum(r["variance"] for r in group) / len(group)
        m["mse"] = sum(r["mse"] for r in group) / len(group)
        m["relative_mse"] = sum(r["mse"] / r["grad_norm2"] for r in group) / len(group)
        m["mse_estimated"] = group[0]["mse_estimated"]
        if "bias_z" in group[0]:
            m["max_bias_z"] = max(r["bias_z"] for r in group)
        out[key] = m
    for key, m in out.items():
        plain = out[key[:4] + ("none",)]
        m["variance_ratio"] = plain["variance"] / m["variance"]  # > 1: the variant has less variance
        m["mse_ratio"] = plain["mse"] / m["mse"]
    return list(out.values())


# ---------------------------------------------------------------------------------------------------
# Cost.
# ---------------------------------------------------------------------------------------------------


def measure_cost(repeats: int) -> list[dict]:
    rows = []
    for size, (B, N, k, S) in COST_SIZES.items():
        scores = torch.randn(B, N, requires_grad=True)
        G = torch.randn(B, k, N)

        def step(jacobian, vr):
            def run():
                perturbed_topk(scores, k, num_samples=S, sigma=0.05, jacobian=jacobian,
                               variance_reduction=vr).backward(G)
                scores.grad = None
            return run

        fns = {(j, vr): step(j, vr) for j in JACOBIANS for vr in VARIANCE_REDUCTIONS}
        reps = max(3, repeats // 3) if size == "token" else repeats
        times = time_round_robin(fns, warmup=1 if size == "token" else 3, repeats=reps)
        peaks = {key: peak_memory(fn)[1] for key, fn in fns.items()}
        for (j, vr) in fns:
            t, plain_t = median(times[(j, vr)]), median(times[(j, "none")])
            rows.append(dict(size=size, B=B, N=N, k=k, S=S, jacobian=j, variance_reduction=vr, repeats=reps,
                             median_ms=t * 1e3, time_ratio=t / plain_t, peak_mb=peaks[(j, vr)] / 2**20,
                             memory_ratio=peaks[(j, vr)] / peaks[(j, "none")]))
    return rows


# ---------------------------------------------------------------------------------------------------


def print_tables(summary: list[dict], cost: list[dict], meta: dict) -> None:
    if summary:
        print_variance(summary, meta)
        print_compact(summary)
    if cost:
        print(f"\n# perturbed top-K cost: forward + backward, sigma 0.05 ({meta['cpu']}, {meta['threads']} threads, "
              f"load {meta['loadavg_before'][0]:.2f} -> {meta['loadavg_after'][0]:.2f}; median ms, peak MB of "
              "tensors allocated)\n")
        print("| size (B, N, k, S) | jacobian | variance reduction | median ms | time vs plain | peak MB | "
              "memory vs plain |")
        print("|---|---|---|---:|---:|---:|---:|")
        for c in cost:
            print(f"| {c['size']} ({c['B']}, {c['N']}, {c['k']}, {c['S']}) | {c['jacobian']} | "
                  f"{c['variance_reduction']} | {c['median_ms']:.2f} | {c['time_ratio']:.2f}x | "
                  f"{c['peak_mb']:.2f} | {c['memory_ratio']:.2f}x |")


def print_variance(summary: list[dict], meta: dict) -> None:
    print(f"# perturbed top-K gradient variance ({meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}, "
          f"load {meta['loadavg_before'][0]:.2f} -> {meta['loadavg_after'][0]:.2f})\n")
    print("Variance: E||g - E g||^2 summed over coordinates; ratio = plain / variant (same jacobian, same S).")
    print("MSE against the exact gradient (~: token level, against the mean of 4R full + loo estimates, its own")
    print("noise subtracted); relative = MSE / ||grad||^2. Max bias: |mean - expectation| in standard errors.\n")
    print("| setting | G | S | jacobian | variance reduction | variance | ratio | MSE | relative MSE | ratio "
          "| max bias (SE) |")
    print("|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for m in summary:
        est = "~" if m["mse_estimated"] else ""
        bias = f"{m['max_bias_z']:.1f}" if "max_bias_z" in m else "-"
        mse = f"{est}{m['mse']:.4g} | {est}{m['relative_mse']:.4g} | {m['mse_ratio']:.2f}x | {bias}"
        print(f"| {m['setting']} | {m['G']} | {m['S']} | {m['jacobian']} | {m['variance_reduction']} | "
              f"{m['variance']:.4g} | {m['variance_ratio']:.2f}x | {mse} |")


def print_compact(summary: list[dict]) -> None:
    """One line per (setting, G, S): relative MSE of each estimator, and variance ratios."""
    by = {(m["setting"], m["G"], m["S"], m["jacobian"], m["variance_reduction"]): m for m in summary}
    print("\n# compact: relative MSE against the exact gradient (~: against the estimated one), and variance "
          "ratio plain / variant; loo+antithetic is omitted (it equals antithetic at even S)\n")
    print("| setting | G | S | full: none | loo | antithetic | diagonal: none | loo | antithetic "
          "| variance ratio full loo / anti | diagonal loo / anti |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (setting, g, S) in dict.fromkeys(k[:3] for k in by):
        cells, ratios = [], []
        for j in JACOBIANS:
            for vr in ("none", "loo", "antithetic"):
                m = by[(setting, g, S, j, vr)]
                cells.append(("~" if m["mse_estimated"] else "") + f"{m['relative_mse']:.3g}")
            ratios.append(" / ".join(f"{by[(setting, g, S, j, vr)]['variance_ratio']:.2f}x"
                                     for vr in ("loo", "antithetic")))
        print(f"| {setting} | {g} | {S} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--samples", nargs="+", type=int, default=[100, 500], help="S values compared")
    parser.add_argument("--replicates", type=int, help="R estimates per score vector (default: per setting)")
    parser.add_argument("--repeats", type=int, default=15, help="timing rounds")
    parser.add_argument("--no-cost", action="store_true", help="skip the time and memory measurement")
    parser.add_argument("--no-variance", action="store_true", help="only the time and memory measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="S = 20, 50 replicates, 3 timing rounds")
    parser.add_argument("--json", help="also write every figure (per score draw too) to this file")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.replicates, args.repeats = [20], 50, 3
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    settings = [] if args.no_variance else args.settings
    rows = [r for name in settings for r in measure_setting(name, args.samples, args.seed, args.replicates)]
    summary = summarise(rows)
    cost = [] if args.no_cost else measure_cost(args.repeats)
    meta = dict(cpu=cpu_name(), threads=args.threads, torch=torch.__version__, seed=args.seed,
                loadavg_before=load, loadavg_after=os.getloadavg())
    print_tables(summary, cost, meta)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, summary=summary, rows=rows, cost=cost), f, indent=1)


if __name__ == "__main__":
    main()
