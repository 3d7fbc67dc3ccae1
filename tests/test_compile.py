"""torch.compile: eval models are captured in one graph (no break at a selector) and give eager's logits;
`stts bench --compile` and `train.compile: true` run the compiled model.

Compilation is slow on 2 cores, so the default run captures every backbone with dynamo + AOTAutograd
("aot_eager": the same graph capture, functionalisation and decompositions inductor starts from, without
generating C++) and compiles one small model with inductor; inductor on every backbone, and a training
run compiled by inductor, are `slow`.
"""

import json

import pytest
import torch
import torch._dynamo
from test_engine_helpers import load, one_thread, records, run_config, synth  # noqa: F401  (fixtures)

import stts
from stts.cli import main

# Stated tolerance of compiled vs eager logits (float32; observed differences are ~1e-7).
TOL = dict(atol=1e-5, rtol=1e-5)

_SWIN = dict(embed_dim=24, depths=(2, 2), num_heads=(1, 2), num_frames=32, img_size=56, num_classes=5)
CASES = {  # name: (registry name, plan, kwargs): every backbone, with selection
    "mvit_demo": ("mvit_tiny", "T0_0.5-S1_0.6", dict(num_classes=5)),
    "swin_pad": ("swin3d_t", "T0_0.5625", dict(_SWIN)),  # 9 of 16 frames: padded windows + shift mask
    "swin_fit": ("swin3d_t", "T0_0.5625", dict(_SWIN, temporal_window="fit")),
    "vit_tokens": ("vit_s_16x16", "T0_0.5-K1_0.5", dict(depth=2, img_size=32, num_frames=8, num_classes=5)),
}


def build(case: str):
    name, plan, kwargs = CASES[case]
    torch.manual_seed(0)
    return stts.create_model(name, selection=plan, **kwargs).eval()


def assert_compiled_matches_eager(model, backend: str, batches=(2,)):
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)  # fullgraph: any graph break raises
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for batch in batches:  # a second batch size recompiles with a dynamic batch axis
            x = torch.randn(batch, *model.input_size, generator=gen)
            torch.testing.assert_close(compiled(x), model(x), **TOL)


@pytest.mark.parametrize("case", list(CASES))
def test_eval_models_capture_in_one_graph(case):
    # The dynamic batch axis (a second compile) once, on the cheapest model.
    assert_compiled_matches_eager(build(case), "aot_eager", batches=(2, 3) if case == "vit_tokens" else (2,))


def test_inductor_matches_eager():
    assert_compiled_matches_eager(build("vit_tokens"), "inductor")


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_inductor_matches_eager_every_backbone(case):
    assert_compiled_matches_eager(build(case), "inductor", batches=(2, 3))


def test_models_of_several_clip_sizes_compile_with_static_shapes():
    """A second clip size makes dynamo's automatic dynamic shapes turn the token grid symbolic, and a
    selector's K (a Python int of the grid: int(T * ratio), isqrt) cannot be symbolic: stts compiles
    with dynamic=False (bench, benchmarks), one graph per clip size, every K static."""
    torch._dynamo.reset()
    with torch.no_grad():
        for size, plan in ((32, None), (64, None), (64, "T0_0.5-S1_0.6"), (96, "T0_0.5-S1_0.6")):
            model = stts.create_model("mvit_tiny", selection=plan, img_size=size).eval()
            x = torch.randn(1, *model.input_size)
            torch.testing.assert_close(torch.compile(model, fullgraph=True, backend="eager", dynamic=False)(x),
                                       model(x), **TOL)


def test_geometry_is_baked_into_the_graph_after_one_eager_call():
    """Swin's window gathers (a roll of positions) and masks are cached constants: after one eager call
    the captured graph reads them instead of rebuilding them on every call; with empty caches it traces
    the builders (correct, slower) and caches nothing."""
    from stts.models import swin3d

    model = build("swin_pad")
    x = torch.randn(2, *model.input_size)

    def captured_ops() -> set:
        graphs = []

        def backend(gm, example_inputs):
            graphs.append(gm)
            return gm.forward

        torch._dynamo.reset()
        with torch.no_grad():
            torch.compile(model, fullgraph=True, backend=backend)(x)
        return {str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"}

    with torch.no_grad():
        model(x)
    assert not any("roll" in t for t in captured_ops())
    for cached in (swin3d._window_order_cached, swin3d._attention_mask_cached, swin3d._relative_position_index_cached):
        cached.cache_clear()
    assert any("roll" in t for t in captured_ops())
    assert len(swin3d._window_order_cached.cache) == 0  # nothing traced was cached


# ---------------------------------------------------------------------------------------------------
# Where stts compiles: stts bench --compile, train.compile
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def compile_calls(monkeypatch, request):
    """torch.compile with the aot_eager backend (no C++ build; `indirect` parametrization picks another),
    recording what it was given."""
    calls, real, backend = [], torch.compile, getattr(request, "param", "aot_eager")

    def fake_compile(model, **kwargs):
        calls.append((model, kwargs))
        return real(model, **{**kwargs, "backend": backend})

    monkeypatch.setattr(torch, "compile", fake_compile)
    torch._dynamo.reset()
    return calls


def test_bench_compile(compile_calls, capsys):
    # Both models share the forward code: a recompile limit of 1 would leave the second one eager,
    # unless bench raises the limit to fit its models.
    # (config.patch, not monkeypatch: the config module has no attribute to restore, monkeypatch would
    # delete the setting.)
    torch._dynamo.utils.counters.clear()
    with torch._dynamo.config.patch(recompile_limit=1):
        assert main(["bench", "vit_s_16x16", "vit_s_16x16:K1_0.5", "--kwargs", '{"depth": 2, "img_size": 32}',
                     "--frames", "4", "--compile", "--repeats", "2", "--warmup", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["setup"]["compile"] is True and len(compile_calls) == 2
    assert [type(m).__name__ for m, _ in compile_calls] == ["VisionTransformer3d"] * 2
    assert all(kw.get("dynamic") is False for _, kw in compile_calls)  # static shapes: K is a Python int
    assert all(r["compile_s"] > 0 and r["latency_ms"] > 0 for r in out["results"])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # one graph per model: both compiled


def _train_losses(synth, out, compile_: bool):
    from stts.engine.train import train

    cfg = run_config(synth, out, train={"compile": compile_, "max_steps": 8, "eval_every": 0})
    train(load(cfg))  # 8 steps: the scorer-only epoch (6 steps), then the joint phase (recompiles)
    return [r["loss"] for r in records(out, "train")]


def test_training_selectors_run_outside_the_graph():
    """In training the selectors' perturbed top-K runs eagerly (outside the compiled graph): a new sigma
    and new per-clip noise seeds every step must not recompile, and the compiled model must give eager's
    output for the same seeds."""
    from stts.selectors import set_sigma

    torch.manual_seed(0)
    model = stts.create_model("mvit_tiny", selection="T0_0.5-S1_0.6", num_classes=5).train()
    x = torch.randn(2, *model.input_size)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager")
    compiled(x, noise_seeds=torch.tensor([1, 2]))  # the compiles of the first call
    with torch._dynamo.config.patch(error_on_recompile=True):  # any recompile from here on raises
        for step, seeds in enumerate(([3, 4], [5, 6])):
            set_sigma(model, 0.1 / (step + 1))
            seeds = torch.tensor(seeds)
            torch.testing.assert_close(compiled(x, noise_seeds=seeds), model(x, noise_seeds=seeds), **TOL)


@pytest.mark.parametrize("compile_calls", ["eager"], indirect=True)  # dynamo's capture; aot_eager: slow
def test_train_compile_gives_eager_losses(synth, tmp_path, compile_calls):
    eager = _train_losses(synth, tmp_path / "eager", False)
    assert compile_calls == []
    compiled = _train_losses(synth, tmp_path / "compiled", True)
    assert len(compile_calls) >= 1 and all(type(m).__name__ == "MViT" for m, _ in compile_calls)
    assert len(eager) == 8
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_train_compile_inductor(synth, tmp_path):
    """The real thing: inductor, with eager's random numbers (drop path, selector noise) so that the
    losses can be compared step by step."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    eager = _train_losses(synth, tmp_path / "eager", False)
    # The config's own patch (a monkeypatch of the config module broke it for later tests: "fallback_random
    # does not exist" in every ONNX export after this test).
    with inductor_config.patch(fallback_random=True):
        compiled = _train_losses(synth, tmp_path / "compiled", True)
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), atol=1e-4, rtol=1e-4)
