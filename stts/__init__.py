"""stts: spatial-temporal token selection for video transformers.

    import stts
    model = stts.create_model("mvit_b_16x4", num_classes=400)     # dense backbone
    stts.patch(model, "T0_0.5-S4_0.7")                              # add selection in one line
    stts.patch(dense, "T0_0.5-S4_0.7", policy="change")             # training-free (stts.policies)
    stts.set_plan(model, "T0_0.3-S4_0.6")                           # same points, another budget
    stts.set_plan(model, stts.plan_for(model, gflops=20))           # the budget that fits a cost
    P = stts.perturbed_topk(scores, k=4)                            # (B, N) -> (B, K, N), differentiable

Shape letters used throughout: B batch, C channels, T frames, H/W token grid, N tokens (T*H*W, plus a
class token where there is one), P prefix (class) tokens, K kept, S noise samples, A anchor positions,
nh heads, hd head dim.
"""

from stts.budget import plan_for
from stts.checkpoint import load_model, save_model
from stts.models import create_model, list_models
from stts.patch import patch, set_plan, set_policy
from stts.plan import SelectionPlan, parse_plan
from stts.scorer import Scorer
from stts.selectors import AnchorSelector, Selection, TemporalSelector, TokenSelector, set_sigma
from stts.topk import hard_topk, linear_sigma_schedule, perturbed_topk

__version__ = "0.2.0"

__all__ = [
    "perturbed_topk",
    "hard_topk",
    "linear_sigma_schedule",
    "Scorer",
    "TemporalSelector",
    "AnchorSelector",
    "TokenSelector",
    "Selection",
    "set_sigma",
    "SelectionPlan",
    "parse_plan",
    "patch",
    "set_policy",
    "set_plan",
    "plan_for",
    "create_model",
    "list_models",
    "load_model",
    "save_model",
]
