"""Scoring policies: how a selector scores its candidates, and the training-free ones written out.

    stts.patch(model, "T0_0.5-S1_0.6", policy="change")   # any dense checkpoint, no training
    s = temporal_change(x)        # x (B, T, L, C), L = H*W tokens per frame -> (B, T, L), higher = keep
    s = saliency(x)               # (B, T, L, C) -> (B, T, L)
    evenly_spaced(8, 4)           # (8,) ones at frames 0, 2, 4, 6: the uniform policy's picks

A policy is a setting of the plan (`SelectionPlan.policy`, `model.policy=` in a run config):
- `learned`: the STTS scorers (stts.scorer), trained with the perturbed top-K;
- `uniform`: evenly spaced frames or tokens, the anchor nearest the map's centre;
- `random`: random frames, anchors or tokens;
- `change` (RLT-like): the tokens that change most from the same position in their neighbouring frames;
- `saliency`: the tokens farthest from their frame's mean token (spatial outliers).
None but `learned` has parameters: any dense checkpoint of any backbone runs under them, at any plan.

Cost. stts.flops counts what a policy computes, charged to its selectors (`scorer_gflops`): one
multiply-add per channel of each distance (a vector norm), so `change` costs (T+1) x H*W x C per map
(T-1 adjacent frame pairs and the two end pairs; H*W x C for T = 2), `saliency` T x H*W x C; `uniform`
and `random` nothing. The centring and the means are additions, free in fvcore's convention.

Training. A training-free policy can be trained under, and that is well defined: the selectors pick
hard (no perturbed top-K, no sigma; the scores carry no gradient, there is nothing to learn in them),
and the backbone and head fine-tune on the tokens the policy keeps, as the demo's uniform and random
baselines do (an RLT-style speed-up of fine-tuning). There is no scorer-only warm-up then:
`optim.scorer_warmup_epochs` has no scorers to warm up, and the backbone trains from the first step
(at `optim.backbone_lr_mult` x lr, as in the STTS recipe; set it to 1 for a plain fine-tune).

`change` and `saliency` score every token of the map the selector is given; each selector kind turns
token scores into its candidates' scores as it does for its learned scorer (stts.selectors): a frame
scores the mean of its tokens, an anchor the mean of the tokens in its window (normalised per frame),
a token its own; min-max normalised over the candidates.

Definitions. x (B, T, L, C) is the token map entering the selector (prefix / class tokens excluded):
    c[t, p]        = x[t, p] - mean_q x[t, q]                     the token relative to its frame
    saliency[t, p] = ||c[t, p]||                                   L2 over the channels
    change[t, p]   = mean over n in N(t) of ||c[t, p] - c[n, p]||
    N(t)           = the two frames nearest t: {t-1, t+1}; {1, 2} for t = 0 and {T-2, T-3} for t = T-1

What "frame" and "neighbour" mean is set by where the selector sits: one step of the map it sees.
Before block / stage 0 the tokens are patch embeddings (plus the position embedding where the backbone
adds one there: MViT, ViT, VideoMAE; Video Swin has none, its attention has a relative bias), a frame is one
temporal step of the patch embedding (2 video frames in MViT-B, Video Swin and VideoMAE), and its
neighbours are the steps before and after. Deeper, the tokens are the output of the blocks before
(MViT's S4 scores block 3's tokens, on the grid its q-pooling left; Swin's S2 the merged tokens of
stage 1), so a token's change is the change of what the network made of its neighbourhood. After a
temporal selector the frames are the kept ones: neighbours are adjacent kept frames, however far
apart they were in the clip.
The first and last frames have one neighbour; they are compared with the two frames on their inner
side instead: with only frame 1 to go by, frame 0 of [A, B, A, A] would tie with the event B itself.
A map of two frames compares each with the other (they tie); a map of one frame has no neighbour, and
`change` refuses it (T = 1, or the flat map after a K selector).

Why the centring: a shift shared by a whole frame is not content. MViT adds a learned temporal
position embedding per frame (raw differences would rank frames by how much that embedding moves),
deep blocks carry channels common to all tokens, and a global brightness change moves nearly every
patch embedding alike. Why two neighbours: a token that shows for one frame differs from both,
its neighbours from one of them only (so they score half). RLT (Choudhury et al., 2024) compares
raw pixel patches with the previous frame only and drops the repeats before the model; here the
comparison happens on the selector's tokens, at any depth, and the budget is the plan's.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["POLICIES", "TOKEN_POLICIES", "MIN_FRAMES", "centred", "temporal_change", "saliency",
           "token_scores", "evenly_spaced", "centre_anchor", "random_scores"]


def centred(x: Tensor) -> Tensor:
    """Each token minus its frame's mean token: (B, T, L, C) -> (B, T, L, C)."""
    return x - x.mean(dim=2, keepdim=True)


def saliency(x: Tensor) -> Tensor:
    """Distance of each token from its frame's mean token: (B, T, L, C) -> (B, T, L)."""
    return torch.linalg.vector_norm(centred(x), dim=-1)


def temporal_change(x: Tensor) -> Tensor:
    """Mean distance of each (frame-centred) token from the same position in the two nearest frames:
    (B, T, L, C) -> (B, T, L). The end frames use the two frames on their inner side; T >= 2 (ValueError)."""
    B, T, L, C = x.shape
    if T < 2:
        raise ValueError(f"the change policy compares each token with the same position in the neighbouring "
                         f"frames, but this map has {T} frame (T x H*W = {T} x {L})")
    c = centred(x)
    step = torch.linalg.vector_norm(c[:, 1:] - c[:, :-1], dim=-1)  # (B, T-1, L): ||c[t+1] - c[t]||
    if T == 2:
        return torch.cat([step, step], dim=1)  # each frame's only other frame
    out = torch.empty(B, T, L, dtype=step.dtype, device=step.device)
    out[:, 1:-1] = (step[:, :-1] + step[:, 1:]) / 2  # t-1 and t+1
    skip = torch.linalg.vector_norm(c[:, [0, -1]] - c[:, [2, -3]], dim=-1)  # (B, 2, L): frame 0 to 2, T-1 to T-3
    out[:, 0] = (step[:, 0] + skip[:, 0]) / 2
    out[:, -1] = (step[:, -1] + skip[:, 1]) / 2
    return out


# Policies that score from the tokens (no parameters); the fewest frames each needs.
TOKEN_POLICIES = {"change": temporal_change, "saliency": saliency}
MIN_FRAMES = {"change": 2}
POLICIES = ("learned", "uniform", "random", *TOKEN_POLICIES)


def token_scores(policy: str, x: Tensor) -> Tensor:
    """A token policy's score of every token: x (B, T, L, C) -> (B, T, L), float32, no gradient.

    In float32 whatever the autocast dtype: bf16 differences of nearby tokens are mostly rounding."""
    with torch.no_grad():
        return TOKEN_POLICIES[policy](x.detach().float())


def evenly_spaced(n: int, k: int) -> Tensor:
    """(n,) float32 with ones at k evenly spaced positions (the centres of k equal parts): uniform's picks."""
    centres = (torch.arange(k, dtype=torch.float64) + 0.5) * n / k - 0.5
    s = torch.zeros(n, dtype=torch.float32)
    s[centres.round().long().clamp_(0, n - 1)] = 1.0
    return s


def centre_anchor(rows: int, cols: int) -> Tensor:
    """(rows * cols,) float32, one at the anchor position nearest the map's centre (row-major positions;
    not the middle of the flattened list)."""
    s = torch.zeros(rows * cols, dtype=torch.float32)
    s[(rows // 2) * cols + cols // 2] = 1.0
    return s


def random_scores(rows: int, n: int, device=None) -> Tensor:
    """(rows, n) uniform noise from torch's global RNG: the random policy's scores."""
    return torch.rand(rows, n, device=device)
