"""Run the demo: synthetic mp4 dataset -> dense MViT -> elastic and fixed STTS fine-tuning, baselines,
training-free policies -> report at several budgets.

    stts demo                                  # ~7-8 min on 2 quiet CPU cores (estimated); stts-demo/results.md
    stts demo --seed 1 --out stts-demo-seed1
    stts demo --hard                           # dense below 100%, against dense fine-tuned the same epochs
    stts demo --clips-per-class 300 --dense-epochs 40 --budgets 0.2,0.5,0.8 --elastic-plan T0_k3:8-S1_a5:8
    stts demo --quick                          # a one-minute smoke run (too short to learn anything)

Options left out take the default demo's value, or with --hard the hard setting's (stts.demo.HARD).
"""

from __future__ import annotations

import argparse

from stts.errors import UsageError


def add_arguments(parser) -> None:
    from stts.demo import HARD, DemoSettings
    from stts.topk import VARIANCE_REDUCTIONS

    d = DemoSettings()

    def default(name: str) -> str:  # "(default X; --hard: Y)"
        v, h = getattr(d, name), HARD.get(name, getattr(d, name))
        return f"default {v}" + (f"; --hard: {h}" if h != v else "")

    parser.add_argument("--hard", action="store_true",
                        help="the hard setting: more classes (colour x shape), the event in 1 frame, less data; "
                             "adds dense fine-tuned for the same epochs (dense_ft) and trains with the recommended "
                             "recipe (see stts.demo.HARD)")
    parser.add_argument("--out", help=f"report and run folder ({default('out_dir')})")
    parser.add_argument("--seed", type=int, help="data and training seed (default 0)")
    parser.add_argument("--classes", type=int,
                        help=f"number of classes, colours then shapes ({default('num_classes')})")
    parser.add_argument("--clips-per-class", type=int, help=f"training clips per class ({default('clips_per_class')})")
    parser.add_argument("--val-clips-per-class", type=int, help=f"({default('val_clips_per_class')})")
    parser.add_argument("--size", type=int, help=f"frame size in pixels ({default('size')})")
    parser.add_argument("--event-size", type=int, help=f"event shape size in pixels ({default('event_size')})")
    parser.add_argument("--event-frames", type=int, help=f"frames showing the event ({default('event_frames')})")
    parser.add_argument("--distractors", type=int, help=f"moving distractors per clip ({default('num_distractors')})")
    parser.add_argument("--plan", help=f"selection plan of STTS and the baselines ({default('plan')})")
    parser.add_argument("--elastic-plan", help="ranges of the elastic STTS model, a budget drawn per step "
                        f"('' for none; {default('elastic_plan')})")
    parser.add_argument("--budgets", help="token fractions to report, each the elastic plan's nearest point "
                        f"(default {','.join(map(str, d.budgets))})")
    parser.add_argument("--policies", help="training-free policies applied to the dense model at every budget "
                        f"('' for none; default {','.join(d.free_policies)})")
    parser.add_argument("--dense-epochs", type=int, help=f"({default('dense_epochs')})")
    parser.add_argument("--finetune-epochs", type=int, help=f"({default('finetune_epochs')})")
    parser.add_argument("--scorer-warmup-epochs", type=int, help="of the fine-tuning epochs, how many train the "
                        f"scorers alone ({default('scorer_warmup_epochs')})")
    parser.add_argument("--baselines", help="non-learned policies to compare at the same budget, comma-separated "
                                            f"('' for none; default {','.join(d.baselines)})")
    parser.add_argument("--equal-epoch-dense", action=argparse.BooleanOptionalAction,
                        help="also fine-tune dense for the same epochs with the same schedule (dense_ft) "
                             f"({default('equal_epoch_dense')})")
    parser.add_argument("--lr", type=float, help=f"dense training learning rate ({default('lr')})")
    parser.add_argument("--finetune-lr", type=float,
                        help=f"fine-tuning learning rate of the scorers ({default('finetune_lr')})")
    parser.add_argument("--backbone-lr-mult", type=float,
                        help=f"backbone lr while fine-tuning = this x --finetune-lr ({default('backbone_lr_mult')})")
    parser.add_argument("--distill-weight", type=float, help="weight of the dense model's soft predictions in the "
                        f"selection models' loss, 0 = off ({default('distill_weight')})")
    parser.add_argument("--distill-temperature", type=float, help=f"({default('distill_temperature')})")
    parser.add_argument("--sigma", type=float, help=f"perturbed top-K noise at the start ({default('sigma')})")
    parser.add_argument("--jacobian", choices=("diagonal", "full"),
                        help=f"perturbed top-K gradient estimator (diagonal: the authors'; {default('jacobian')})")
    parser.add_argument("--variance-reduction", choices=VARIANCE_REDUCTIONS,
                        help=f"variance reduction of the estimator, keeping its expectation (stts.topk; "
                             f"{default('variance_reduction')})")
    parser.add_argument("--batch-size", type=int, help=f"({default('batch_size')})")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default 0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: 4 clips per class, 1 epoch each")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


# argument -> DemoSettings field, where the names differ
_FIELDS = {"out": "out_dir", "classes": "num_classes", "distractors": "num_distractors"}


def settings_from_args(args):
    """The DemoSettings the arguments ask for: the default or the hard setting, then every option given."""
    from dataclasses import fields

    from stts.demo import DemoSettings, hard_settings

    s = hard_settings() if args.hard else DemoSettings()
    names = {f.name for f in fields(DemoSettings)}
    for arg, value in vars(args).items():
        name = _FIELDS.get(arg, arg)
        if value is None or name not in names:
            continue
        if name == "baselines":
            value = tuple(b for b in value.split(",") if b)
        setattr(s, name, value)
    if args.budgets is not None:
        s.budgets = _budgets(args.budgets)
    if args.policies is not None:
        s.free_policies = _free_policies(args.policies)
    s.progress = not args.no_progress
    if args.quick:
        s.clips_per_class, s.val_clips_per_class = 4, 2
        s.dense_epochs, s.finetune_epochs, s.scorer_warmup_epochs, s.latency_repeats = 1, 2, 1, 3
        s.throughput_batch = 8
    return s


def _budgets(text: str) -> tuple[float, ...]:
    try:
        budgets = tuple(float(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise UsageError(f"--budgets {text!r}: expected token fractions like 0.28,0.5,0.75") from None
    if not budgets or not all(0.0 < b <= 1.0 for b in budgets):
        raise UsageError(f"--budgets {text!r}: each budget is a token fraction in (0, 1]")
    return budgets


def _free_policies(text: str) -> tuple[str, ...]:
    from stts.selectors import POLICIES

    policies = tuple(p for p in text.split(",") if p)
    unknown = [p for p in policies if p not in POLICIES or p == "learned"]
    if unknown:
        raise UsageError(f"--policies {text!r}: {', '.join(unknown)} is not a training-free policy "
                         f"(one of {', '.join(p for p in POLICIES if p != 'learned')})")
    return policies


def run(args) -> int:
    from stts.demo import run_demo

    s = settings_from_args(args)
    if not 0 <= s.scorer_warmup_epochs < s.finetune_epochs:
        raise UsageError(f"--scorer-warmup-epochs {s.scorer_warmup_epochs}: must be in [0, --finetune-epochs "
                         f"{s.finetune_epochs}) so that the backbone trains too")
    run_demo(s)
    return 0
