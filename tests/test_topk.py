"""perturbed_topk against a naive reference, exact expectations and finite differences."""

import itertools
import math

import numpy as np
import pytest
import torch

import stts
from stts.measure import TensorMemoryTracker
from stts.topk import hard_topk, linear_sigma_schedule, perturbed_topk


# ---------------------------------------------------------------------------------------------------
# Naive reference: the published algorithm written out with materialised one-hots (tiny sizes only).
# ---------------------------------------------------------------------------------------------------


def naive_noise(B, S, N, seed, device="cpu"):
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(B, S, N, generator=g, device=device, dtype=torch.float32)


def naive_onehots(scores, k, sigma, noise):
    perturbed = scores.float()[:, None, :] + sigma * noise  # (B, S, N)
    idx = perturbed.topk(k, dim=-1).indices.sort(dim=-1).values  # (B, S, K)
    return torch.nn.functional.one_hot(idx, scores.shape[1]).float()  # (B, S, K, N)


def naive_forward(scores, k, sigma, noise):
    return naive_onehots(scores, k, sigma, noise).mean(dim=1)  # (B, K, N)


def naive_grad_full(scores, k, sigma, noise, G):
    Y = naive_onehots(scores, k, sigma, noise)  # (B, S, K, N)
    S = noise.shape[1]
    jac = torch.einsum("bskn,bsd->bknd", Y, noise) / (S * sigma)  # (B, K, N, N): dP[k,n]/ds[d]
    return torch.einsum("bkn,bknd->bd", G, jac)


def naive_grad_diagonal(scores, k, sigma, noise, G):
    Y = naive_onehots(scores, k, sigma, noise)
    S = noise.shape[1]
    expected = torch.einsum("bskd,bsd->bkd", Y, noise) / (S * sigma)  # the authors' einsum
    return torch.einsum("bkd,bkd->bd", G, expected)


def run(scores, k, sigma, seed, G, jacobian, num_samples, device="cpu", variance_reduction="none"):
    s = scores.clone().to(device).requires_grad_(True)
    g = torch.Generator(device=device).manual_seed(seed)
    P = perturbed_topk(s, k, num_samples=num_samples, sigma=sigma, jacobian=jacobian, generator=g,
                       variance_reduction=variance_reduction)
    P.backward(G.to(device))
    return P.detach(), s.grad


VARIANTS = ["none", "loo", "antithetic", "loo+antithetic"]


def naive_noise_antithetic(B, S, N, seed, device="cpu"):
    """Sample j < S//2 is Z_j, sample j + S//2 is -Z_j, an odd S's last sample is one more fresh draw."""
    g = torch.Generator(device=device).manual_seed(seed)
    half = S // 2
    base = torch.randn(B, S - half, N, generator=g, device=device, dtype=torch.float32)
    samples = []
    for j in range(S):
        if j < half:
            samples.append(base[:, j])
        elif j < 2 * half:
            samples.append(-base[:, j - half])
        else:
            samples.append(base[:, half])
    return torch.stack(samples, dim=1)  # (B, S, N)


def naive_leave_out_baselines(f, antithetic):
    """b_j, literally: the mean of f_i over the samples i independent of sample j (i != j, and i not
    j's antithetic partner); 0 when there is none. f: (B, S) or (B, S, N)."""
    S, half = f.shape[1], f.shape[1] // 2
    b = torch.zeros_like(f)
    for j in range(S):
        partner = (j + half if j < half else j - half if j < 2 * half else None) if antithetic else None
        others = [i for i in range(S) if i != j and i != partner]
        if others:
            b[:, j] = f[:, others].mean(dim=1)
    return b


def naive_grad_variant(scores, k, sigma, noise, G, jacobian, variance_reduction):
    """Both estimators with materialised one-hots: sum_j (f_j - b_j) Z_j / (S sigma)."""
    Y = naive_onehots(scores, k, sigma, noise)  # (B, S, K, N)
    S = noise.shape[1]
    if jacobian == "full":
        f = torch.einsum("bkn,bskn->bs", G, Y)  # <G, Y_j>
    else:
        f = torch.einsum("bkd,bskd->bsd", G, Y)  # G at d where sample j kept d, one f per coordinate
    if "loo" in variance_reduction:
        f = f - naive_leave_out_baselines(f, "antithetic" in variance_reduction)
    if jacobian == "full":
        return torch.einsum("bs,bsd->bd", f, noise) / (S * sigma)
    return (f * noise).sum(dim=1) / (S * sigma)


def variant_noise(B, S, N, seed, variance_reduction, device="cpu"):
    if "antithetic" in variance_reduction:
        return naive_noise_antithetic(B, S, N, seed, device)
    return naive_noise(B, S, N, seed, device)


@pytest.mark.parametrize("B,N,k", [(3, 8, 4), (2, 9, 1), (2, 6, 6), (4, 12, 5)])
@pytest.mark.parametrize("jacobian", ["full", "diagonal"])
def test_matches_naive_reference(device, B, N, k, jacobian):
    torch.manual_seed(1)
    S, sigma, seed = 64, 0.3, 7
    scores = torch.randn(B, N)
    G = torch.randn(B, k, N)
    P, grad = run(scores, k, sigma, seed, G, jacobian, S, device)
    noise = naive_noise(B, S, N, seed, device)
    ref_P = naive_forward(scores.to(device), k, sigma, noise)
    torch.testing.assert_close(P, ref_P, atol=1e-6, rtol=0)
    if k == N:  # the identity: piecewise constant, true gradient exactly zero
        assert torch.all(grad == 0)
        return
    ref = (naive_grad_full if jacobian == "full" else naive_grad_diagonal)(
        scores.to(device), k, sigma, noise, G.to(device))
    torch.testing.assert_close(grad, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("B,N,k", [(3, 8, 4), (2, 9, 1), (4, 12, 5)])
@pytest.mark.parametrize("S", [2, 3, 7, 8])
@pytest.mark.parametrize("jacobian", ["full", "diagonal"])
@pytest.mark.parametrize("variance_reduction", VARIANTS)
def test_variance_reduction_matches_naive_reference(device, B, N, k, S, jacobian, variance_reduction):
    """The same noise, the literal definitions (leave-pair-out baselines included) on one-hots."""
    torch.manual_seed(2)
    sigma, seed = 0.3, 11
    scores, G = torch.randn(B, N), torch.randn(B, k, N)
    P, grad = run(scores, k, sigma, seed, G, jacobian, S, device, variance_reduction)
    noise = variant_noise(B, S, N, seed, variance_reduction, device)
    torch.testing.assert_close(P, naive_forward(scores.to(device), k, sigma, noise), atol=1e-6, rtol=0)
    ref = naive_grad_variant(scores.to(device), k, sigma, noise, G.to(device), jacobian, variance_reduction)
    torch.testing.assert_close(grad, ref, atol=1e-5, rtol=1e-5)
    if variance_reduction == "none":  # the general reference agrees with the published einsums
        old = (naive_grad_full if jacobian == "full" else naive_grad_diagonal)(
            scores.to(device), k, sigma, noise, G.to(device))
        torch.testing.assert_close(ref, old, atol=1e-5, rtol=1e-5)


def test_loo_baseline_cancels_a_constant_upstream_gradient():
    """G = c everywhere: <G, Y_j> = c*K for every sample and the true gradient is 0. The leave-one-out
    baseline removes it exactly; the plain estimator returns c*K/(S sigma) * sum_j Z_j."""
    scores, G = torch.randn(3, 10), torch.full((3, 4, 10), 2.5)
    _, plain = run(scores, 4, 0.5, 0, G, "full", 50)
    _, loo = run(scores, 4, 0.5, 0, G, "full", 50, variance_reduction="loo")
    assert plain.abs().max() > 0.1
    assert loo.abs().max() < 1e-5


def test_antithetic_pairs_vanish_where_the_noise_cannot_change_the_selection():
    """Score gaps of 1 and sigma 1e-3: every sample keeps the same set, the true gradient is 0 (to
    exp(-(1/2e-3)^2 / 2)), and each pair's (f(Z) - f(-Z)) Z is 0 up to float32 rounding of the sum
    (terms of ~50: ~1e-5); the plain sum is hundreds."""
    scores, G = torch.arange(8.0).repeat(2, 1), torch.randn(2, 3, 8)
    for jacobian in ("full", "diagonal"):
        _, plain = run(scores, 3, 1e-3, 0, G, jacobian, 64)
        _, anti = run(scores, 3, 1e-3, 0, G, jacobian, 64, variance_reduction="antithetic")
        assert plain.abs().max() > 1.0 and anti.abs().max() < 1e-3


def test_even_loo_plus_antithetic_is_antithetic():
    """The leave-pair-out baseline is shared by both members of a pair, so it cancels (S even)."""
    torch.manual_seed(0)
    scores, G = torch.randn(3, 9), torch.randn(3, 4, 9)
    for jacobian in ("full", "diagonal"):
        for S in (2, 8):
            _, a = run(scores, 4, 0.4, 5, G, jacobian, S, variance_reduction="antithetic")
            _, b = run(scores, 4, 0.4, 5, G, jacobian, S, variance_reduction="loo+antithetic")
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        _, a = run(scores, 4, 0.4, 5, G, jacobian, 7, variance_reduction="antithetic")
        _, b = run(scores, 4, 0.4, 5, G, jacobian, 7, variance_reduction="loo+antithetic")
        assert (a - b).abs().max() > 1e-3  # odd S: the unpaired sample gets a baseline


def test_estimators_differ():
    """The diagonal estimator drops the off-diagonal Jacobian: the two must not agree in general."""
    torch.manual_seed(0)
    scores, G = torch.randn(2, 8), torch.randn(2, 3, 8)
    _, full = run(scores, 3, 0.5, 0, G, "full", 200)
    _, diag = run(scores, 3, 0.5, 0, G, "diagonal", 200)
    assert (full - diag).abs().max() > 1e-2


def test_indicator_properties():
    torch.manual_seed(0)
    scores = torch.randn(5, 10)
    P = perturbed_topk(scores, 4, num_samples=100, sigma=0.5)
    torch.testing.assert_close(P.sum(-1), torch.ones(5, 4))  # each kept slot is a distribution
    assert torch.all(P.sum(1) <= 1 + 1e-6)  # a token is kept at most once per sample
    # Sorted indices: the expected kept position of slot i increases with i.
    pos = (P * torch.arange(10.0)).sum(-1)
    assert torch.all(pos[:, 1:] > pos[:, :-1])


# ---------------------------------------------------------------------------------------------------
# The full estimator is the gradient of the expectation: exact expectation by quadrature, then
# central finite differences, against a Monte Carlo estimate with many samples.
# ---------------------------------------------------------------------------------------------------


def _normal_cdf(x):
    return 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def exact_expected_indicator(scores, k, sigma):
    """E[Y(s + sigma Z)] for one row, exactly: P(set A is the top-k) = int f_max(rest)(t) P(min A > t) dt."""
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    t = np.linspace(s.min() - 10 * sigma, s.max() + 10 * sigma, 40001)
    cdf = {i: _normal_cdf((t - s[i]) / sigma) for i in range(n)}
    out = np.zeros((k, n))
    for A in itertools.combinations(range(n), k):
        rest = [j for j in range(n) if j not in A]
        F_rest = np.prod([cdf[j] for j in rest], axis=0)  # CDF of max over the rest
        f_rest = np.gradient(F_rest, t)
        surv = np.prod([1 - cdf[i] for i in A], axis=0)  # P(every member of A above t)
        p = np.trapezoid(f_rest * surv, t)
        for slot, idx in enumerate(sorted(A)):
            out[slot, idx] += p
    return out


def test_exact_expectation_matches_monte_carlo():
    """Sanity check of the quadrature oracle itself against the forward pass."""
    s = torch.tensor([[0.3, -0.2, 0.1, 0.0]])
    exact = exact_expected_indicator(s[0].numpy(), 2, 0.5)
    P = perturbed_topk(s, 2, num_samples=400_000, sigma=0.5, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(P[0].numpy(), exact, atol=3e-3)


def test_full_estimator_matches_finite_differences():
    s0 = np.array([0.3, -0.2, 0.1, 0.0])
    k, sigma, eps = 2, 0.5, 1e-3
    G = np.array([[1.0, -0.5, 0.2, 0.7], [-0.3, 0.9, -1.0, 0.4]])

    def F(s):  # <G, E[Y(s + sigma Z)]>
        return float((G * exact_expected_indicator(s, k, sigma)).sum())

    fd = np.array([(F(s0 + eps * e) - F(s0 - eps * e)) / (2 * eps) for e in np.eye(4)])
    _, grad = run(torch.from_numpy(s0[None]).float(), k, sigma, 0, torch.from_numpy(G[None]).float(), "full",
                  1_000_000)
    # Monte Carlo std here is about 0.003; the gradient entries are O(1).
    np.testing.assert_allclose(grad[0].numpy(), fd, atol=0.015)
    assert np.abs(fd).max() > 0.3  # the check is not vacuous


UNBIASED_S0, UNBIASED_K, UNBIASED_SIGMA = np.array([0.3, -0.2, 0.1, 0.0]), 2, 0.5
UNBIASED_G = np.array([[1.0, -0.5, 0.2, 0.7], [-0.3, 0.9, -1.0, 0.4]])


@pytest.fixture(scope="module")
def exact_jacobian():
    """J[i, n, d] = d E[Y[i, n]] / d s_d of the exact expectation, by central differences (eps 1e-3).

    Its error is below 1e-6 here (eps 1e-3 vs 2e-3: 9e-7 at most; a 4x finer quadrature: 1e-8).
    """
    eps = 1e-3
    cols = [(exact_expected_indicator(UNBIASED_S0 + eps * e, UNBIASED_K, UNBIASED_SIGMA)
             - exact_expected_indicator(UNBIASED_S0 - eps * e, UNBIASED_K, UNBIASED_SIGMA)) / (2 * eps)
            for e in np.eye(len(UNBIASED_S0))]
    return np.stack(cols, axis=-1)  # (K, N, N)


@pytest.mark.parametrize("jacobian", ["full", "diagonal"])
@pytest.mark.parametrize("variance_reduction,S", [("none", 4), ("loo", 4), ("antithetic", 4), ("antithetic", 3),
                                                  ("loo+antithetic", 4), ("loo+antithetic", 3)])
def test_every_variant_keeps_the_expectation(exact_jacobian, jacobian, variance_reduction, S):
    """Mean of R independent S-sample estimates (R copies of one row) vs the exact target.

    Targets (Stein's lemma, E[Y Z] = sigma * dE[Y]/ds): full, the gradient sum_{i,n} G[i,n] J[i,n,d];
    diagonal, the authors' truncation sum_i G[i,d] J[i,d,d]. Few samples per estimate make the
    biases a wrong baseline causes large (a baseline that includes sample j shrinks the estimate by
    1/S, one that includes j's antithetic partner inflates it by 1/(S-1)); R = 200k rows make the
    standard error <= 0.003. Tolerance: 5 standard errors (measured from the rows) + 1e-4 for the oracle,
    so a bias of 1.5% of the largest entry fails.
    """
    J = exact_jacobian
    if jacobian == "full":
        target = np.einsum("kn,knd->d", UNBIASED_G, J)
    else:
        target = np.einsum("kd,kdd->d", UNBIASED_G, J)
    R = 200_000
    scores = torch.from_numpy(UNBIASED_S0).float().expand(R, -1)
    G = torch.from_numpy(UNBIASED_G).float().expand(R, -1, -1)
    _, grad = run(scores, UNBIASED_K, UNBIASED_SIGMA, 0, G, jacobian, S, variance_reduction=variance_reduction)
    grad = grad.double().numpy()  # (R, N): independent estimates
    mean, se = grad.mean(axis=0), grad.std(axis=0) / math.sqrt(R)
    assert np.abs(target).max() > 0.3 and se.max() < 0.01  # the check is not vacuous
    np.testing.assert_array_less(np.abs(mean - target), 5 * se + 1e-4)


def test_antithetic_forward_is_unbiased():
    """The antithetic indicator (S = 3: a pair and an unpaired sample) averages to the exact expectation.

    R = 100k rows, each an independent estimate; tolerance 5 standard errors measured from the rows
    (<= 1.6e-3, as entries lie in [0, 1]) plus 1e-6 for the oracle.
    """
    R = 100_000
    s = torch.tensor([[0.3, -0.2, 0.1, 0.0]]).expand(R, -1)
    exact = exact_expected_indicator(s[0].numpy(), 2, 0.5)
    P = perturbed_topk(s, 2, num_samples=3, sigma=0.5, variance_reduction="antithetic",
                       generator=torch.Generator().manual_seed(0)).double().numpy()  # (R, K, N)
    se = P.std(axis=0) / math.sqrt(R)
    np.testing.assert_array_less(np.abs(P.mean(axis=0) - exact), 5 * se + 1e-6)


# ---------------------------------------------------------------------------------------------------
# Edge cases, dtypes, devices, memory.
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, -1, 9])
def test_bad_k_names_k_and_n(k):
    with pytest.raises(ValueError, match=rf"k={k}.*N=8"):
        perturbed_topk(torch.randn(2, 8), k)
    with pytest.raises(ValueError, match=rf"k={k}.*N=8"):
        hard_topk(torch.randn(2, 8), k)


def test_bad_arguments():
    with pytest.raises(ValueError, match="jacobian"):
        perturbed_topk(torch.randn(2, 8), 2, jacobian="exact")
    with pytest.raises(ValueError, match="sigma"):
        perturbed_topk(torch.randn(2, 8), 2, sigma=-1.0)
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        perturbed_topk(torch.randn(2, 3, 8), 2)
    with pytest.raises(TypeError, match="floating"):
        perturbed_topk(torch.arange(8)[None], 2)


def test_sigma_zero_is_hard_topk_with_zero_gradient():
    torch.manual_seed(0)
    s = torch.randn(4, 10, requires_grad=True)
    P = perturbed_topk(s, 3, sigma=0.0)
    ref = torch.zeros(4, 3, 10)
    for b in range(4):  # one-hots of the 3 best, in index order (Python sorting)
        for slot, i in enumerate(sorted(sorted(range(10), key=lambda i: -s[b, i].item())[:3])):
            ref[b, slot, i] = 1.0
    torch.testing.assert_close(P, ref)
    P.backward(torch.randn(4, 3, 10))
    assert torch.all(s.grad == 0)


def test_k_equals_n_is_identity():
    s = torch.randn(3, 5, requires_grad=True)
    P = perturbed_topk(s, 5, num_samples=10, sigma=0.5)
    torch.testing.assert_close(P, torch.eye(5).expand(3, 5, 5))
    P.sum().backward()
    assert torch.all(s.grad == 0)


@pytest.mark.parametrize("variance_reduction", VARIANTS)
def test_deterministic_cases_give_zero_gradient_with_every_variant(variance_reduction):
    """sigma 0 (hard top-k) and k == N (identity): piecewise constant, true gradient exactly 0."""
    s = torch.randn(3, 6, requires_grad=True)
    for k, sigma in [(2, 0.0), (6, 0.5)]:
        P = perturbed_topk(s, k, num_samples=5, sigma=sigma, variance_reduction=variance_reduction)
        ref = torch.zeros(3, k, 6).scatter_(2, hard_topk(s.detach(), k)[:, :, None], 1.0)
        torch.testing.assert_close(P, ref)
        P.backward(torch.randn(3, k, 6))
        assert torch.all(s.grad == 0)
        s.grad = None


def test_sample_counts_of_the_variants():
    """S = 1: antithetic has no pair and is the plain draw; a leave-one-out baseline has nothing to
    average and is refused."""
    torch.manual_seed(0)
    scores, G = torch.randn(2, 8), torch.randn(2, 3, 8)
    for jacobian in ("full", "diagonal"):
        P, a = run(scores, 3, 0.5, 4, G, jacobian, 1)
        Q, b = run(scores, 3, 0.5, 4, G, jacobian, 1, variance_reduction="antithetic")
        assert torch.equal(P, Q) and torch.equal(a, b)
    for vr in ("loo", "loo+antithetic"):
        with pytest.raises(ValueError, match=r"loo.*num_samples >= 2.*got 1"):
            perturbed_topk(scores, 3, num_samples=1, variance_reduction=vr)
    with pytest.raises(ValueError, match="variance_reduction"):
        perturbed_topk(scores, 3, variance_reduction="control")


def test_hard_topk_sorted_and_correct():
    torch.manual_seed(0)
    s = torch.randn(6, 20)
    idx = hard_topk(s, 7)
    assert torch.all(idx[:, 1:] > idx[:, :-1])
    for b in range(6):  # independent oracle: Python sorting
        ref = sorted(sorted(range(20), key=lambda i: -s[b, i].item())[:7])
        assert idx[b].tolist() == ref


def test_generator_reproducible():
    s = torch.randn(2, 16)
    a = perturbed_topk(s, 4, num_samples=50, sigma=0.5, generator=torch.Generator().manual_seed(3))
    b = perturbed_topk(s, 4, num_samples=50, sigma=0.5, generator=torch.Generator().manual_seed(3))
    c = perturbed_topk(s, 4, num_samples=50, sigma=0.5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------------------------------------------
# Noise per row group (`seeds=`): what lets one process and two draw the same noise for a clip.
# ---------------------------------------------------------------------------------------------------


def seeded_noise(rows_per_seed, S, N, seeds, antithetic):
    """The noise the docstring promises, written out: group g's rows from a generator seeded with
    seeds[g]; antithetic pairs made within each row as in `naive_noise_antithetic`."""
    parts = []
    for seed in seeds:
        make = naive_noise_antithetic if antithetic else naive_noise
        parts.append(make(rows_per_seed, S, N, seed))
    return torch.cat(parts)  # (B, S, N)


@pytest.mark.parametrize("jacobian", ["full", "diagonal"])
@pytest.mark.parametrize("variance_reduction", ["none", "loo+antithetic"])
@pytest.mark.parametrize("rows_per_seed", [1, 3])  # 3: an anchor selector's T frames of one clip
def test_seeded_rows_draw_their_own_noise(jacobian, variance_reduction, rows_per_seed):
    torch.manual_seed(0)
    seeds, S, N, k, sigma = [11, 7, 2**62 + 5, 0], 9, 7, 3, 0.4
    B = rows_per_seed * len(seeds)
    scores, G = torch.randn(B, N), torch.randn(B, k, N)
    noise = seeded_noise(rows_per_seed, S, N, seeds, "antithetic" in variance_reduction)
    s = scores.clone().requires_grad_(True)
    P = perturbed_topk(s, k, num_samples=S, sigma=sigma, jacobian=jacobian, variance_reduction=variance_reduction,
                       seeds=torch.tensor(seeds))
    P.backward(G)
    torch.testing.assert_close(P, naive_forward(scores, k, sigma, noise), rtol=0, atol=1e-6)
    torch.testing.assert_close(s.grad, naive_grad_variant(scores, k, sigma, noise, G, jacobian, variance_reduction),
                               rtol=1e-5, atol=1e-5)
    # The same clips in another batch, in another order, draw the same noise: same rows, same gradient.
    pick = [2, 0]
    rows = torch.cat([torch.arange(g * rows_per_seed, (g + 1) * rows_per_seed) for g in pick])
    s2 = scores[rows].clone().requires_grad_(True)
    P2 = perturbed_topk(s2, k, num_samples=S, sigma=sigma, jacobian=jacobian, variance_reduction=variance_reduction,
                        seeds=[seeds[g] for g in pick])
    P2.backward(G[rows])
    assert torch.equal(P2, P[rows]) and torch.equal(s2.grad, s.grad[rows])


def test_seed_arguments_are_checked():
    with pytest.raises(ValueError, match="3 seeds cannot split 4 rows"):
        perturbed_topk(torch.randn(4, 5), 2, sigma=0.1, seeds=[1, 2, 3])
    with pytest.raises(ValueError, match="seeds or generator"):
        perturbed_topk(torch.randn(2, 5), 2, sigma=0.1, seeds=[1, 2], generator=torch.Generator())


def test_noise_seed_mixes_every_part():
    from stts.topk import noise_seed

    parts = [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 1), (1, 0), (2**40, 0, 0), (-1, 0, 0)]
    seeds = [noise_seed(*p) for p in parts]
    assert len(set(seeds)) == len(parts)  # order, position and value of every part matter
    assert all(0 <= v < 2**63 for v in seeds)
    assert noise_seed(3, 5, 7) == noise_seed(3, 5, 7)  # a pure function: every process computes the same
    # Nearby parts give unrelated seeds: about half of the 63 bits differ between neighbouring steps.
    flips = [bin(noise_seed(0, step, 9) ^ noise_seed(0, step + 1, 9)).count("1") for step in range(200)]
    assert 25 < sum(flips) / len(flips) < 38


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("jacobian", ["full", "diagonal"])
@pytest.mark.parametrize("variance_reduction", VARIANTS)
def test_low_precision_accumulates_in_float32(device, dtype, jacobian, variance_reduction):
    torch.manual_seed(0)
    s = torch.randn(3, 12).to(dtype)
    G = torch.randn(3, 4, 12)
    P, grad = run(s, 4, 0.3, 5, G.to(dtype), jacobian, 256, device, variance_reduction)
    assert P.dtype == dtype and grad.dtype == dtype
    # Reference: the same rounded scores in float32, the same noise.
    P32, grad32 = run(s.float(), 4, 0.3, 5, G.to(dtype).float(), jacobian, 256, device, variance_reduction)
    # The computation is the same float32 one, so only the final rounding differs: P's entries are
    # multiples of 1/256, exact in both dtypes; the gradient is off by half an ulp of the dtype.
    torch.testing.assert_close(P.float(), P32, atol=0, rtol=0)
    half_ulp = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11  # 7 and 10 stored mantissa bits
    torch.testing.assert_close(grad.float(), grad32, atol=1e-6, rtol=half_ulp)


def _largest_tensor(fn):
    """Largest number of elements of any tensor an op creates while fn runs."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    Largest.numel = max(Largest.numel, t.numel())
            return out

    with Largest():
        fn()
    return Largest.numel


@pytest.mark.parametrize("jacobian", ["full", "diagonal"])
@pytest.mark.parametrize("variance_reduction", VARIANTS)
def test_never_materialises_onehots(jacobian, variance_reduction):
    B, N, k, S = 2, 400, 200, 101  # odd: antithetic pairs plus one unpaired sample
    s = torch.randn(B, N, requires_grad=True)

    def fwd_bwd():
        perturbed_topk(s, k, num_samples=S, sigma=0.1, jacobian=jacobian,
                       variance_reduction=variance_reduction).backward(torch.randn(B, k, N))

    largest = _largest_tensor(fwd_bwd)
    # O(B*S*(K+N) + B*K*N): the biggest tensors are the noise (B, S, N) and the indicator (B, K, N).
    assert largest <= max(B * S * N, B * k * N)
    assert largest < B * S * k * N / 20  # the naive (B, S, K, N) one-hots, for contrast


def test_memory_tracker_sees_naive_onehots():
    """The tracker used by benchmarks/topk.py must see the naive algorithm's big tensors."""
    B, N, k, S = 2, 64, 32, 20
    s = torch.randn(B, N)
    with TensorMemoryTracker() as tr:
        naive_forward(s, k, 0.1, naive_noise(B, S, N, 0))
    assert tr.peak >= B * S * k * N * 4  # float32 one-hots
    with TensorMemoryTracker() as tr2:
        perturbed_topk(s, k, num_samples=S, sigma=0.1)
    assert tr2.peak < tr.peak / 5


def test_linear_sigma_schedule():
    assert linear_sigma_schedule(0, 100, 0.1) == pytest.approx(0.1)
    assert linear_sigma_schedule(50, 100, 0.1) == pytest.approx(0.05)
    assert linear_sigma_schedule(100, 100, 0.1) == pytest.approx(0.0)
    assert linear_sigma_schedule(150, 100, 0.1) == pytest.approx(0.0)
    assert linear_sigma_schedule(25, 100, 0.1, 0.02) == pytest.approx(0.08)
    with pytest.raises(ValueError, match="total_steps"):
        linear_sigma_schedule(0, 0, 0.1)


def test_public_names():
    for name in ["perturbed_topk", "hard_topk", "linear_sigma_schedule", "Scorer", "TemporalSelector",
                 "AnchorSelector", "TokenSelector", "patch", "create_model", "list_models", "load_model"]:
        assert hasattr(stts, name), name


# ---------------------------------------------------------------------------------------------------
# The setting travels like `jacobian`: plan, patch, selectors, checkpoints, run config, build_model.
# ---------------------------------------------------------------------------------------------------


def test_variance_reduction_travels_like_jacobian(tmp_path, monkeypatch):
    import stts.selectors
    from stts.config import ConfigError, load_config
    from stts.engine.build import build_model
    from stts.plan import SelectionPlan, parse_plan
    from test_engine_helpers import TINY_MVIT, TINY_PLAN

    plan = parse_plan(TINY_PLAN, variance_reduction="loo", jacobian="diagonal")
    assert plan.variance_reduction == "loo" and SelectionPlan.from_dict(plan.to_dict()) == plan
    old = {k: v for k, v in plan.to_dict().items() if k != "variance_reduction"}  # a checkpoint from before
    assert SelectionPlan.from_dict(old).variance_reduction == "none"

    dense = stts.create_model("mvit_b_16x4", num_classes=3, num_frames=8, img_size=32, **TINY_MVIT)
    model = stts.patch(dense, TINY_PLAN, variance_reduction="antithetic")
    assert [s.variance_reduction for s in model.selectors.values()] == ["antithetic"] * 2
    stts.save_model(model, tmp_path / "m.pt")
    again = stts.load_model(tmp_path / "m.pt")
    assert [s.variance_reduction for s in again.selectors.values()] == ["antithetic"] * 2
    # A published variant (its builder adds the plan): load_model restores the saved setting on top.
    pub = stts.create_model("mvit_b_16x4_stts_t0.5_s0.7", embed_dim=16, img_size=112, num_classes=3)
    pub.plan = pub.plan.with_settings(variance_reduction="loo+antithetic")
    stts.save_model(pub, tmp_path / "pub.pt")
    loaded = stts.load_model(tmp_path / "pub.pt")
    assert {s.variance_reduction for s in loaded.selectors.values()} == {"loo+antithetic"}

    # The selectors hand it to perturbed_topk.
    seen = []
    real = stts.selectors.perturbed_topk
    monkeypatch.setattr(stts.selectors, "perturbed_topk", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    again.train()(torch.randn(1, 3, 8, 32, 32)).sum().backward()
    assert [kw["variance_reduction"] for kw in seen] == ["antithetic"] * 2

    base = {"model": {"name": "mvit_b_16x4", "selection": TINY_PLAN, "kwargs": dict(TINY_MVIT)},
            "data": {"num_frames": 8, "crop_size": 32}}
    cfg = load_config(None, ["model.variance_reduction=loo"], base=base, check_paths=False)
    built = build_model(cfg, 3)
    assert {s.variance_reduction for s in built.selectors.values()} == {"loo"}
    assert built.plan.variance_reduction == "loo"  # what its checkpoints record
    default = build_model(load_config(None, [], base=base, check_paths=False), 3)
    assert {s.variance_reduction for s in default.selectors.values()} == {"none"}  # '' keeps the model's
    with pytest.raises(ConfigError, match=r"model.variance_reduction='pairs'"):
        load_config(None, ["model.variance_reduction=pairs"], base=base, check_paths=False)
    with pytest.raises(ConfigError, match=r"model.variance_reduction='loo'.*num_samples >= 2"):
        load_config(None, ["model.variance_reduction=loo", "model.num_samples=1"], base=base, check_paths=False)
