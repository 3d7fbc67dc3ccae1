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


def run(scores, k, sigma, seed, G, jacobian, num_samples, device="cpu"):
    s = scores.clone().to(device).requires_grad_(True)
    g = torch.Generator(device=device).manual_seed(seed)
    P = perturbed_topk(s, k, num_samples=num_samples, sigma=sigma, jacobian=jacobian, generator=g)
    P.backward(G.to(device))
    return P.detach(), s.grad


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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("jacobian", ["full", "diagonal"])
def test_low_precision_accumulates_in_float32(device, dtype, jacobian):
    torch.manual_seed(0)
    s = torch.randn(3, 12).to(dtype)
    G = torch.randn(3, 4, 12)
    P, grad = run(s, 4, 0.3, 5, G.to(dtype), jacobian, 256, device)
    assert P.dtype == dtype and grad.dtype == dtype
    # Reference: the same rounded scores in float32, the same noise.
    P32, grad32 = run(s.float(), 4, 0.3, 5, G.to(dtype).float(), jacobian, 256, device)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-3
    torch.testing.assert_close(P.float(), P32, atol=tol, rtol=0)
    torch.testing.assert_close(grad.float(), grad32, atol=tol * 10, rtol=tol)


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
def test_never_materialises_onehots(jacobian):
    B, N, k, S = 2, 400, 200, 100
    s = torch.randn(B, N, requires_grad=True)

    def fwd_bwd():
        perturbed_topk(s, k, num_samples=S, sigma=0.1, jacobian=jacobian).backward(torch.randn(B, k, N))

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
