"""Run the demo: synthetic mp4 dataset -> dense MViT -> STTS fine-tuning and baselines -> report.

    stts demo                                  # ~5 min on 2 CPU cores; writes stts-demo/results.md
    stts demo --seed 1 --out stts-demo-seed1
    stts demo --clips-per-class 300 --dense-epochs 40 --plan T0_0.375-S1_0.6   # more data, another budget
    stts demo --quick                          # a one-minute smoke run (too short to learn anything)
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    from stts.demo import DemoSettings

    d = DemoSettings()
    parser.add_argument("--out", default=d.out_dir, help=f"report and run folder (default {d.out_dir})")
    parser.add_argument("--seed", type=int, default=d.seed, help="data and training seed")
    parser.add_argument("--classes", type=int, default=d.num_classes, help="number of classes (colours)")
    parser.add_argument("--clips-per-class", type=int, default=d.clips_per_class, help="training clips per class")
    parser.add_argument("--val-clips-per-class", type=int, default=d.val_clips_per_class)
    parser.add_argument("--size", type=int, default=d.size, help="frame size in pixels")
    parser.add_argument("--event-size", type=int, default=d.event_size, help="event square size in pixels")
    parser.add_argument("--plan", default=d.plan, help=f"selection plan of STTS and the baselines ({d.plan})")
    parser.add_argument("--dense-epochs", type=int, default=d.dense_epochs)
    parser.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs)
    parser.add_argument("--scorer-warmup-epochs", type=int, default=d.scorer_warmup_epochs,
                        help="of the fine-tuning epochs, how many train the scorers alone")
    parser.add_argument("--baselines", default=",".join(d.baselines),
                        help="non-learned policies to compare at the same budget ('' for none)")
    parser.add_argument("--lr", type=float, default=d.lr, help="dense training learning rate")
    parser.add_argument("--finetune-lr", type=float, default=d.finetune_lr,
                        help="fine-tuning learning rate of the scorers (the backbone gets 0.1x)")
    parser.add_argument("--jacobian", choices=("diagonal", "full"), default=d.jacobian,
                        help="perturbed top-K gradient estimator (diagonal: the authors')")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: 4 clips per class, 1 epoch each")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from stts.demo import DemoSettings, run_demo

    s = DemoSettings(
        out_dir=args.out, seed=args.seed, num_classes=args.classes, clips_per_class=args.clips_per_class,
        val_clips_per_class=args.val_clips_per_class, size=args.size, event_size=args.event_size, plan=args.plan,
        dense_epochs=args.dense_epochs, finetune_epochs=args.finetune_epochs,
        scorer_warmup_epochs=args.scorer_warmup_epochs, lr=args.lr, finetune_lr=args.finetune_lr,
        jacobian=args.jacobian, batch_size=args.batch_size,
        baselines=tuple(b for b in args.baselines.split(",") if b), threads=args.threads,
        progress=not args.no_progress,
    )
    if args.quick:
        s.clips_per_class, s.val_clips_per_class = 4, 2
        s.dense_epochs, s.finetune_epochs, s.scorer_warmup_epochs, s.latency_repeats = 1, 2, 1, 3
        s.throughput_batch = 8
    if not 0 <= s.scorer_warmup_epochs <= s.finetune_epochs:
        raise SystemExit(f"--scorer-warmup-epochs {s.scorer_warmup_epochs} must be within --finetune-epochs "
                         f"{s.finetune_epochs}")
    run_demo(s)
    return 0
