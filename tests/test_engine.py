"""The engine: lr schedule, parameter groups, scorer-only warm-up, fine-tuning starts, multi-view
evaluation, and the train / eval / export / bench commands end to end on a tiny real MViT."""

import json
import math
import shutil

import pytest
import torch

import stts
from stts.engine.evaluate import accuracy_metrics, aggregate_views
from stts.engine.optim import get_lr, param_groups, set_backbone_trainable
from test_engine_helpers import (NUM_CLASSES, TINY_MVIT, TINY_PLAN, TRAIN_CLIPS, load, records, run_config,
                                 one_thread, synth, weights)  # noqa: F401  (fixtures)


def tiny_mvit(selection=TINY_PLAN, num_classes=NUM_CLASSES, **kw):
    return stts.create_model("mvit_b_16x4", selection=selection, num_classes=num_classes, num_frames=8, img_size=32,
                             **{**TINY_MVIT, **kw})


# ---- lr schedule and parameter groups -----------------------------------------------------------------


def test_lr_schedule_values():
    kw = dict(total_steps=110, warmup_steps=10, lr=1e-3, min_lr=1e-5, warmup_start_lr=1e-6)
    # Hand-computed: linear from 1e-6 to 1e-3 over 10 steps, then half a cosine period to 1e-5 over 100.
    assert get_lr(0, **kw) == pytest.approx(1e-6)
    assert get_lr(5, **kw) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))
    assert get_lr(10, **kw) == pytest.approx(1e-3)
    assert get_lr(60, **kw) == pytest.approx((1e-3 + 1e-5) / 2)  # cos(pi/2) = 0
    assert get_lr(35, **kw) == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + math.sqrt(0.5)) / 2)  # cos(pi/4)
    assert get_lr(110, **kw) == pytest.approx(1e-5) and get_lr(500, **kw) == pytest.approx(1e-5)
    assert get_lr(0, **{**kw, "warmup_steps": 0}) == pytest.approx(1e-3)


def test_param_groups_follow_the_no_weight_decay_rule():
    model = tiny_mvit()
    groups = param_groups(model, weight_decay=0.05, backbone_lr_mult=0.1)
    where = {}
    for g in groups:
        for name, p in zip(g["names"], g["params"]):
            assert name not in where, f"{name} in two groups"
            where[name] = g
    named = dict(model.named_parameters())
    assert where.keys() == named.keys()  # every parameter exactly once
    pos = {"cls_token", "pos_embed_spatial", "pos_embed_temporal", "pos_embed_class"}
    for name, p in named.items():
        decays = p.ndim >= 2 and name not in pos  # independent statement of the rule
        scorer = name.startswith("selectors.")
        g = where[name]
        assert g["weight_decay"] == (0.05 if decays else 0.0), name
        assert g["lr_mult"] == (1.0 if scorer else 0.1), name
    assert {g["name"] for g in groups} == {"scorer_decay", "scorer_no_decay", "backbone_decay", "backbone_no_decay"}
    assert where["pos_embed_spatial"]["weight_decay"] == 0.0 and named["pos_embed_spatial"].ndim == 3


def test_frozen_backbone_still_passes_gradients_to_the_scorers():
    torch.manual_seed(0)
    model = tiny_mvit()
    model.train()
    set_backbone_trainable(model, False)
    logits = model(torch.randn(2, 3, 8, 32, 32))
    logits.logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        if name.startswith("selectors."):
            assert p.requires_grad and p.grad is not None, name
        else:
            assert not p.requires_grad and p.grad is None, name  # no weight gradient computed
    # Both scorers learn although everything after them is frozen.
    for sel in ("T0", "S1"):
        g = model.selectors[sel].scorer.head[-1].weight.grad
        assert g.abs().sum() > 0, sel


# ---- fine-tuning starts --------------------------------------------------------------------------------


def test_finetune_from_a_dense_checkpoint(tmp_path):
    from stts.checkpoint import CheckpointError
    from stts.engine.checkpoint import load_finetune

    dense = tiny_mvit(selection=None, num_classes=5)
    stts.save_model(dense, tmp_path / "dense.pt")
    model = tiny_mvit(num_classes=NUM_CLASSES)
    head_before = model.head.weight.detach().clone()
    rep = load_finetune(model, tmp_path / "dense.pt")
    assert rep["head_reset"] == ["head.bias", "head.weight"]  # 5 classes -> 3: the new head stays
    assert set(rep["fresh_scorers"]) == {k for k in model.state_dict() if k.startswith("selectors.")}
    assert set(rep["missing"]) == set(rep["fresh_scorers"]) | set(rep["head_reset"]) and rep["unexpected"] == []
    torch.testing.assert_close(model.head.weight, head_before)
    dsd = dense.state_dict()
    for k, v in model.state_dict().items():
        if not k.startswith(("selectors.", "head.")):
            torch.testing.assert_close(v, dsd[k], msg=k)
    # A mismatch outside the head is an error naming the tensor.
    wider = tiny_mvit(selection=None, embed_dim=24)
    stts.save_model(wider, tmp_path / "wider.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatch.*patch_embed"):
        load_finetune(tiny_mvit(), tmp_path / "wider.pt")


def test_finetune_from_official_weights_with_a_new_head():
    """PySlowFast key names (the official-code fixture) are translated; 7 classes -> 3 resets the head."""
    from conftest import FIXTURES, fixture_state_dict
    from stts.engine.checkpoint import load_finetune

    model = stts.create_model("mvit_b_16x4_stts_t0.5_s0.7", embed_dim=16, img_size=112, num_classes=3)
    rep = load_finetune(model, FIXTURES / "mvit_small.safetensors")
    assert rep["head_reset"] == ["head.bias", "head.weight"] and rep["missing"] == ["head.weight", "head.bias"]
    assert rep["unexpected"] == [] and rep["fresh_scorers"] == []  # the official file carries scorers too
    official = fixture_state_dict("mvit_small")
    torch.testing.assert_close(model.patch_embed.proj.weight, official["patch_embed.proj.weight"])


def test_scorer_only_warmup_then_backbone_trains(synth, tmp_path):
    """Fine-tune from a dense checkpoint: after the warm-up epoch the backbone equals the checkpoint
    and only the scorers moved; one epoch later the backbone moved too."""
    from stts.engine.build import build_model
    from stts.engine.train import seed_everything, train

    dense = tiny_mvit(selection=None)
    stts.save_model(dense, tmp_path / "dense.pt")
    cfg_dict = run_config(synth, tmp_path / "run", model={"finetune": str(tmp_path / "dense.pt")},
                          train={"eval_every": 0})
    cfg = load(cfg_dict, ["train.max_steps=6"])  # 6 steps = the first epoch, scorers only
    seed_everything(0)
    initial = build_model(cfg, NUM_CLASSES).state_dict()  # what train() builds before loading weights
    train(cfg)
    after = weights(tmp_path / "run" / "last.pt")
    dsd = dense.state_dict()
    scorer_keys = [k for k in after if k.startswith("selectors.")]
    for k in after:
        if k not in scorer_keys:
            assert torch.equal(after[k], dsd[k]), f"backbone tensor {k} changed during the warm-up"
    moved = [k for k in scorer_keys if not torch.equal(after[k], initial[k])]
    assert len(moved) == len(scorer_keys), set(scorer_keys) - set(moved)
    train(load(cfg_dict, ["train.resume=auto"]))  # epoch 2: backbone at 0.1 x lr
    final = weights(tmp_path / "run" / "last.pt")
    assert not torch.equal(final["blocks.0.attn.qkv.weight"], dsd["blocks.0.attn.qkv.weight"])
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"{len(scorer_keys)} scorer tensors start fresh" in log
    epochs = records(tmp_path / "run", "epoch")
    assert [e["backbone_frozen"] for e in epochs] == [True, False]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_cpu_trains_and_checkpoints_the_scaler(synth, tmp_path, amp):
    """The autocast + GradScaler code path, on CPU (on CUDA it is the same code with device "cuda")."""
    from stts.engine.train import train

    s = train(load(run_config(synth, tmp_path / "run", train={"amp": amp, "epochs": 2, "eval_every": 0}),
                   ["train.max_steps=3"]))
    assert s["amp"] == {"bf16": "bfloat16", "fp16": "float16"}[amp] and math.isfinite(s["last_loss"])
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert bool(ckpt["scaler"]) == (amp == "fp16")  # fp16 scales the loss; bf16 needs no scaler
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.is_floating_point())
    train(load(run_config(synth, tmp_path / "run", train={"amp": amp, "epochs": 2, "eval_every": 0}),
               ["train.resume=auto", "train.max_steps=4"]))  # the scaler state reloads
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 4


# ---- evaluation ----------------------------------------------------------------------------------------


def test_view_aggregation_hand_example():
    # 3 videos, 6 classes; video 0 has 2 views, video 1 one, video 2 three; video 3 none (skipped).
    index = torch.tensor([0, 2, 0, 1, 2, 2])
    logits = torch.tensor([
        [4., 0, 1, 0, 0, 0],  # v0: class 0 ...
        [0., 0, 0, 1, 0, 3],  # v2
        [0., 0, 5, 0, 0, 0],  # v0: ... and class 2 -> average [2, 0, 3, 0, 0, 0]: predicts 2
        [0., 1, 0, 0, 2, 0],  # v1: predicts 4
        [0., 0, 0, 5, 0, 0],  # v2
        [0., 0, 0, 0, 0, 3],  # v2 -> average [0, 0, 0, 2, 0, 2]: tie, then topk's order
    ])
    sums, counts = aggregate_views(index, logits, num_videos=4)
    assert counts.tolist() == [2, 1, 3, 0]
    torch.testing.assert_close(sums[0] / 2, torch.tensor([2., 0, 3, 0, 0, 0]))
    torch.testing.assert_close(sums[2] / 3, torch.tensor([0., 0, 0, 2, 0, 2]))
    scores = torch.stack([sums[0] / 2, sums[1], torch.tensor([0., 0, 0, 2.1, 0, 2])])  # break v2's tie
    labels = torch.tensor([0, 4, 5])
    m = accuracy_metrics(scores, labels)
    # top-1: v0 wrong (2 vs 0), v1 right, v2 wrong (3 vs 5) -> 1/3. top-5: v0's label 0 is 2nd, v1 1st,
    # v2's label 5 is 2nd -> 3/3. Mean per-class: classes 0, 4, 5 -> (0 + 1 + 0) / 3.
    assert m["top1"] == pytest.approx(100 / 3) and m["top5"] == pytest.approx(100.0)
    assert m["mean_class_acc"] == pytest.approx(100 / 3)
    # Mean per-class differs from top-1 when classes are unbalanced: 2 right of class 1, 1 wrong of class 0.
    m = accuracy_metrics(torch.tensor([[0., 1], [0., 1], [0., 1]]), torch.tensor([1, 1, 0]), topk=5)
    assert m["top1"] == pytest.approx(200 / 3) and m["mean_class_acc"] == pytest.approx(50.0)
    assert m["top5"] == pytest.approx(100.0)  # k = min(5, classes)
    # Softmax averaging sums probabilities.
    sums, _ = aggregate_views(torch.tensor([0, 0]), torch.tensor([[0., 0], [math.log(3), 0]]), 1, "softmax")
    torch.testing.assert_close(sums, torch.tensor([[0.5 + 0.75, 0.5 + 0.25]]))


class ViewLogits(torch.nn.Module):
    """A stand-in model with fixed logits per view: a clip's first value names its row of `table`."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x, return_selections=False):
        logits = self.table[x.flatten(1)[:, 0].round().long()]  # (B, C)
        return (logits, {}) if return_selections else logits


def _hand_metrics(scores: dict, labels: dict) -> dict:
    """top-1 / top-5 / mean per-class accuracy (percent) of {video: [score per class]}, by sorting."""
    ranked = {v: sorted(range(len(s)), key=lambda c: -s[c]) for v, s in scores.items()}
    hit1 = {v: ranked[v][0] == labels[v] for v in scores}
    hit5 = {v: labels[v] in ranked[v][:5] for v in scores}
    classes = sorted({labels[v] for v in scores})
    per_class = [sum(hit1[v] for v in scores if labels[v] == c) / sum(labels[v] == c for v in scores)
                 for c in classes]
    n = len(scores)
    return {"top1": 100 * sum(hit1.values()) / n, "top5": 100 * sum(hit5.values()) / n,
            "mean_class_acc": 100 * sum(per_class) / len(per_class)}


def test_evaluate_averages_each_videos_views(device):
    """Views that disagree, spread over batches in shuffled order: evaluate's accuracies are those of the
    per-view logits (or probabilities) averaged per video by hand. A video without views is skipped."""
    from stts.engine.evaluate import evaluate

    views = [3, 2, 3, 1, 3, 2, 3, 3, 2, 0]  # video 9 has no decodable view
    C = 6
    table = torch.randn(sum(views), C, generator=torch.Generator().manual_seed(8)) * 3  # (views, C) logits
    rows, first = [], 0
    for n in views:
        rows.append(list(range(first, first + n)))
        first += n

    def hand_average(v, average):
        vecs = [table[i].double().tolist() for i in rows[v]]
        if average == "softmax":
            vecs = [[math.exp(a) / sum(math.exp(b) for b in vec) for a in vec] for vec in vecs]
        return [sum(col) / len(vecs) for col in zip(*vecs)]

    seen = [v for v, n in enumerate(views) if n]
    by_logits = {v: sorted(range(C), key=lambda c: -hand_average(v, "logits")[c]) for v in seen}
    # Labels at ranks 1, 2, 5 and 6 of the averaged logits too, so that top-5 and per-class accuracy count.
    labels = {v: by_logits[v][r] for v, r in zip(seen, [0, 0, 1, 4, 5, 0, 2, 0, 4])}
    # The oracle is not vacuous: views disagree, and the two averages predict differently.
    assert sum(len({int(table[i].argmax()) for i in rows[v]}) > 1 for v in seen) >= 6
    argmax = {a: {v: max(range(C), key=lambda c: hand_average(v, a)[c]) for v in seen} for a in ("logits", "softmax")}
    assert sum(argmax["logits"][v] != argmax["softmax"][v] for v in seen) >= 3

    items = [(v, i) for v in seen for i in rows[v]]
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(0)).tolist()
    items = [items[j] for j in order]
    loader = []
    for b in range(0, len(items), 4):
        chunk = items[b:b + 4]
        loader.append({"video": torch.tensor([float(i) for _, i in chunk]).view(-1, 1, 1, 1, 1),
                       "index": torch.tensor([v for v, _ in chunk]), "label": torch.tensor([labels[v] for v, _ in chunk]),
                       "bad": ["v9.mp4: missing file"] if b == 0 else []})
    model = ViewLogits(table).to(device)
    for average in ("logits", "softmax"):
        res = evaluate(model, loader, num_videos=len(views), num_classes=C, device=device, average=average)
        expected = _hand_metrics({v: hand_average(v, average) for v in seen}, labels)
        for key, value in expected.items():
            assert res[key] == pytest.approx(value), (average, key)
        assert res["videos"] == len(seen) and res["skipped_videos"] == 1 and res["views"] == sum(views)
        assert res["bad"] == ["v9.mp4: missing file"]
    assert _hand_metrics({v: hand_average(v, "logits") for v in seen}, labels) != \
        _hand_metrics({v: hand_average(v, "softmax") for v in seen}, labels)


def test_evaluate_skips_bad_videos(synth, tmp_path):
    """A corrupt video is left out and listed; the rest matches aggregating per-view logits by hand."""
    from stts.data import DataConfig, build_dataset, build_loader
    from stts.engine.evaluate import evaluate

    root = tmp_path / "data"
    shutil.copytree(synth["root"], root)
    data = {**synth["data_config"], "root": str(root), "train_annotations": str(root / "train.csv"),
            "val_annotations": str(root / "val.csv"), "classes_file": str(root / "classes.txt"),
            "num_workers": 0, "num_temporal_views": 2, "max_skip_fraction": 0.5}
    bad = sorted((root / "val").rglob("*.mp4"))[1]
    bad.write_bytes(b"not a video")
    cfg = DataConfig(**data)
    ds = build_dataset(cfg, "test")
    torch.manual_seed(0)
    model = tiny_mvit().eval()
    res = evaluate(model, build_loader(ds, cfg, batch_size=3, train=False), num_videos=ds.num_videos,
                   num_classes=ds.num_classes, device=torch.device("cpu"))
    assert res["skipped_videos"] == 1 and res["videos"] == ds.num_videos - 1
    assert len(res["bad"]) == 1 and bad.name in res["bad"][0] and res["views"] == 2 * (ds.num_videos - 1)
    # Oracle: every good view through the model one at a time, averaged per video by hand.
    per_video = {}
    with torch.no_grad():
        for i in range(len(ds)):
            item = ds[i]
            if "video" in item:
                per_video.setdefault(item["index"], (item["label"], []))[1].append(model(item["video"][None])[0])
    assert len(per_video) == ds.num_videos - 1
    expected = _hand_metrics({v: torch.stack(s).mean(0).tolist() for v, (_, s) in per_video.items()},
                             {v: y for v, (y, _) in per_video.items()})
    for key, value in expected.items():
        assert res[key] == pytest.approx(value, abs=1e-6), key
    sel = res["selections"]
    assert sel["T0"]["clips"] == res["views"] and sum(sel["T0"]["kept_fraction_per_frame"]) == pytest.approx(2.0)
    assert sel["S1"]["anchor_size"] == 6 and sum(sel["S1"]["anchor_win_fraction"]) == pytest.approx(1.0, abs=1e-3)


# ---- the commands end to end ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "eval", "bench", "export"])
def test_help(command, capsys):
    from stts.cli import main

    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "stts" in capsys.readouterr().out


def _count_loads(monkeypatch) -> list:
    """The files torch.load reads from now on (each checkpoint a command needs is read once)."""
    loads, real = [], torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **kw: loads.append(str(f)) or real(f, *a, **kw))
    return loads


def test_train_eval_export_bench_commands(synth, tmp_path, capsys, monkeypatch):
    from stts.cli import main
    from stts.flops import count_flops
    from test_engine_helpers import write_config

    out = tmp_path / "run"
    path = write_config(tmp_path / "run.yaml", run_config(synth, out, data={"num_temporal_views": 2}))
    assert main(["train", str(path), "optim.lr=2e-3"]) == 0
    for name in ("last.pt", "best.pt", "config.yaml", "train.log", "metrics.jsonl"):
        assert (out / name).is_file(), name
    # Logged lr and sigma per step follow the published rules, written out here (step s logs the values
    # used for step s - 1): 6 steps of linear warm-up from 1e-6 to 2e-3, half a cosine to 1e-6 over the
    # other 6; sigma from 0.1 linearly to 0 over the 12 steps.
    steps = records(out, "train")
    total = 2 * TRAIN_CLIPS // 2
    assert [r["step"] for r in steps] == list(range(1, total + 1))
    for r in steps:
        s = r["step"] - 1
        lr = 1e-6 + (2e-3 - 1e-6) * (s / 6 if s < 6 else (1 + math.cos(math.pi * (s - 6) / 6)) / 2)
        assert r["lr"] == pytest.approx(lr), s
        assert r["sigma"] == pytest.approx(0.1 * (1 - s / 12)), s
    epochs = records(out, "epoch")
    assert len(epochs) == 2 and "val_top1" in epochs[0] and epochs[0]["val_selections"]["T0"]["kept"] == 2
    assert "T0 keeps 2/4 frames" in (out / "train.log").read_text()
    capsys.readouterr()

    loads = _count_loads(monkeypatch)
    assert main(["eval", "--checkpoint", str(out / "best.pt"), f"eval.report={tmp_path / 'rep.json'}"]) == 0
    assert loads == [str(out / "best.pt")]  # read once: for its run config and for its weights
    monkeypatch.undo()
    screen = capsys.readouterr().out
    assert "top-1" in screen and "GFLOPs per view" in screen
    rep = json.loads((tmp_path / "rep.json").read_text())
    model = stts.load_model(out / "best.pt")
    assert rep["gflops_per_view"] == pytest.approx(count_flops(model, (1, 3, 8, 32, 32)).gflops)
    assert rep["views_per_video"] == 2 and rep["views"] == 2 * rep["num_videos"] and rep["plan"] == TINY_PLAN
    assert rep["clips_per_s"] > 0 and set(rep["selections"]) == {"T0", "S1"} and rep["skipped_videos"] == 0

    assert main(["export", str(out / "best.pt"), str(tmp_path / "m.safetensors")]) == 0
    exported = stts.load_model(tmp_path / "m.safetensors").eval()
    x = torch.randn(2, 3, 8, 32, 32)
    torch.testing.assert_close(exported(x), model.eval()(x), rtol=0, atol=0)
    assert str(exported.plan) == TINY_PLAN
    capsys.readouterr()

    kwargs = json.dumps({**TINY_MVIT, "num_classes": 3})
    assert main(["bench", "mvit_b_16x4", f"mvit_b_16x4:{TINY_PLAN}", "--frames", "8", "--size", "32",
                 "--kwargs", kwargs, "--repeats", "2", "--warmup", "1", "--json"]) == 0
    bench = json.loads(capsys.readouterr().out)
    r0, r1 = bench["results"]
    assert r0["speedup"] == 1.0 and r0["flop_ratio"] == 1.0 and r1["plan"] == TINY_PLAN
    assert 0 < r1["flop_ratio"] < 1 and r1["latency_ms"] > 0


def test_eval_without_config_or_checkpoint_is_an_error(capsys):
    from stts.cli import main

    assert main(["eval"]) == 2
    assert "CONFIG.yaml or --checkpoint" in capsys.readouterr().err
