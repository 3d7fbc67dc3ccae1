"""Distillation (stts.engine.distill): the soft term against hand-computed KL and its analytic gradient,
the frozen eval-mode teacher, the run-config keys, and the hook in the training loop end to end."""

import math

import pytest
import torch

import stts
from stts.config import ConfigError
from stts.engine.distill import Distiller, distill_kl
from test_engine_helpers import NUM_CLASSES, TINY_MVIT, load, records, run_config, one_thread, synth, weights  # noqa: F401


def tiny_dense(num_classes=NUM_CLASSES, seed=0):
    torch.manual_seed(seed)
    return stts.create_model("mvit_b_16x4", num_classes=num_classes, num_frames=8, img_size=32, drop_path_rate=0.0,
                             head_drop=0.0, **TINY_MVIT)


def _softmax(row, T):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def test_distill_kl_is_the_hand_computed_kl():
    student = [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]
    teacher = [[3.0, 2.0, 1.0], [1.0, 0.0, -1.0]]
    for T in (1.0, 2.0, 4.0):
        kl = 0.0
        for s, t in zip(student, teacher):
            ps, pt = _softmax(s, T), _softmax(t, T)
            kl += sum(b * math.log(b / a) for a, b in zip(ps, pt))
        expected = T * T * kl / 2  # batch mean, times T^2
        got = distill_kl(torch.tensor(student), torch.tensor(teacher), T)
        assert got.item() == pytest.approx(expected, rel=1e-6), T
    same = torch.tensor(teacher)
    assert distill_kl(same, same, 3.0).item() == pytest.approx(0.0, abs=1e-7)


class _Teacher(torch.nn.Module):
    """A fixed linear map with dropout, so that training mode would change its output."""

    def __init__(self, weight):
        super().__init__()
        self.lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.lin.weight.data.copy_(weight)
        self.drop = torch.nn.Dropout(0.9)
        self.modes = []

    def forward(self, x):
        self.modes.append((self.training, torch.is_grad_enabled()))
        return self.drop(self.lin(x))


def test_mixed_loss_gradient_and_a_frozen_eval_mode_teacher():
    """loss = (1-w) CE + w T^2 KL: its gradient w.r.t. the student's logits is the analytic
    ((1-w)(softmax(s) - onehot) + w T (softmax(s/T) - softmax(t/T))) / B; the teacher gets none."""
    torch.manual_seed(0)
    x = torch.randn(4, 5)
    teacher = _Teacher(torch.randn(3, 5))
    w, T = 0.3, 2.5
    d = Distiller(teacher, weight=w, temperature=T)
    teacher.train()  # something switched it back: the distiller must still use eval mode
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 2, 1, 2])
    ce = torch.nn.functional.cross_entropy(logits, labels)
    loss = d.loss(ce, logits, x)
    loss.backward()

    t_logits = x @ teacher.lin.weight.T  # no dropout: eval mode
    s = logits.detach()
    onehot = torch.nn.functional.one_hot(labels, 3).float()
    expected_grad = ((1 - w) * (s.softmax(-1) - onehot) + w * T * ((s / T).softmax(-1) - (t_logits / T).softmax(-1))) / 4
    torch.testing.assert_close(logits.grad, expected_grad, rtol=1e-5, atol=1e-7)
    expected_loss = (1 - w) * ce.item() + w * distill_kl(s, t_logits, T).item()
    assert loss.item() == pytest.approx(expected_loss, rel=1e-6)
    assert teacher.modes == [(False, False)]  # eval mode, no autograd graph
    assert not teacher.lin.weight.requires_grad and teacher.lin.weight.grad is None


@pytest.mark.parametrize("overrides, key", [
    (["train.distill_from=finetune"], "train.distill_from"),  # no model.finetune to take it from
    (["train.distill_from=/no/such/teacher.pt"], "train.distill_from"),
    (["train.distill_from=t.pt", "train.distill_weight=1.5"], "train.distill_weight"),
    (["train.distill_from=t.pt", "train.distill_temperature=0"], "train.distill_temperature"),
])
def test_config_keys_are_checked(synth, tmp_path, overrides, key):
    (tmp_path / "t.pt").write_bytes(b"")
    overrides = [o.replace("t.pt", str(tmp_path / "t.pt")) for o in overrides]
    with pytest.raises(ConfigError, match=rf"command line: {key}="):
        load(run_config(synth, tmp_path / "run"), overrides)


def test_a_teacher_with_other_classes_is_a_config_error(synth, tmp_path):
    from stts.engine.train import train

    stts.save_model(tiny_dense(num_classes=5), tmp_path / "teacher.pt")
    cfg = load(run_config(synth, tmp_path / "run", train={"distill_from": str(tmp_path / "teacher.pt")}))
    with pytest.raises(ConfigError, match=r"train.distill_from=.*predicts 5 classes, the model being trained 3"):
        train(cfg)


def _spy_on_teacher(monkeypatch):
    """Wrap build_distiller in the training loop: record the teacher's mode and grad state at each call."""
    import stts.engine.train as engine

    seen = {}

    def spy(*args, **kwargs):
        d = real(*args, **kwargs)
        seen["distiller"], seen["calls"] = d, []
        d.teacher.register_forward_hook(lambda m, inp, out: seen["calls"].append(
            (m.training, torch.is_grad_enabled(), inp[0].detach().clone())))
        return d

    real = engine.build_distiller
    monkeypatch.setattr(engine, "build_distiller", spy)
    return seen


def test_weight_zero_is_the_plain_run_and_the_teacher_stays_frozen(synth, tmp_path, monkeypatch):
    """STTS fine-tuning (selector noise, drop path) with the dense start as teacher at weight 0 ends with
    the same weights and losses, bit for bit, as the run without distillation: building and running the
    teacher draws no random numbers. The teacher ran every step in eval mode, without autograd."""
    from stts.engine.train import train

    dense = stts.create_model("mvit_b_16x4", num_classes=NUM_CLASSES, num_frames=8, img_size=32, drop_path_rate=0.1,
                              **TINY_MVIT)  # in training mode its drop path would draw random numbers
    stts.save_model(dense, tmp_path / "dense.pt")
    common = dict(model={"finetune": str(tmp_path / "dense.pt"), "drop_path_rate": 0.1},
                  optim={"scorer_warmup_epochs": 1}, train={"eval_every": 0})
    train(load(run_config(synth, tmp_path / "plain", **common)))
    seen = _spy_on_teacher(monkeypatch)
    train(load(run_config(synth, tmp_path / "kd0", **common),
               ["train.distill_from=finetune", "train.distill_weight=0", "train.distill_temperature=3"]))
    plain, kd0 = weights(tmp_path / "plain" / "last.pt"), weights(tmp_path / "kd0" / "last.pt")
    assert plain.keys() == kd0.keys()
    for k in plain:
        assert torch.equal(plain[k], kd0[k]), k
    assert [r["loss"] for r in records(tmp_path / "plain", "train")] == [r["loss"] for r in records(tmp_path / "kd0", "train")]
    steps = 2 * 6  # 2 epochs of 12 clips at batch 2
    assert [c[:2] for c in seen["calls"]] == [(False, False)] * steps
    assert all(not p.requires_grad and p.grad is None for p in seen["distiller"].teacher.parameters())
    assert "distilling from" in (tmp_path / "kd0" / "train.log").read_text()


def test_first_step_loss_is_the_kl_to_the_teacher(synth, tmp_path, monkeypatch):
    """Weight 1, T 2, a dense student and another model as teacher: the loss logged at step 1 equals
    distill_kl recomputed here from the two checkpoints on the clips the teacher was given."""
    from stts.checkpoint import load_model
    from stts.engine.train import train

    stts.save_model(tiny_dense(seed=0), tmp_path / "start.pt")
    stts.save_model(tiny_dense(seed=1), tmp_path / "teacher.pt")
    seen = _spy_on_teacher(monkeypatch)
    cfg = run_config(synth, tmp_path / "run", model={"selection": "", "finetune": str(tmp_path / "start.pt"),
                                                     "drop_path_rate": 0.0, "head_dropout": 0.0},
                     train={"eval_every": 0})
    train(load(cfg, ["train.max_steps=1", f"train.distill_from={tmp_path / 'teacher.pt'}",
                     "train.distill_weight=1", "train.distill_temperature=2"]))
    x = seen["calls"][0][2]  # (B, C, T, H, W): the batch of step 1
    with torch.no_grad():
        expected = distill_kl(load_model(tmp_path / "start.pt").train()(x), load_model(tmp_path / "teacher.pt").eval()(x), 2.0)
    logged = records(tmp_path / "run", "train")[0]["loss"]
    assert expected.item() > 1e-4  # two different models: the term is not trivially 0
    assert logged == pytest.approx(expected.item(), rel=1e-5)
