"""The distribution users install: `python -m build` makes a wheel and an sdist of `stts-video`, each
installs into a fresh virtual environment without the optional extras, and there `import stts`, `stts
--help`, `stts --version` and `stts flops mvit_b_16x4` work.

This is the only test that builds and installs; it takes about a minute and a half on 2 cores (most of
it installing torch into the new environment from the local wheel). torch is pinned as the Makefile pins
it: an open range would fetch a CUDA build of several GB.
"""

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH_PIN = next(line.strip() for line in (ROOT / "constraints.txt").read_text().splitlines()
                 if line.startswith("torch=="))
# The extras' packages: none of them may be needed (or imported) by the core.
EXTRAS = ("av", "matplotlib", "tqdm", "tensorboard", "omegaconf", "transformers", "onnx", "onnxruntime")


def _run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    # A clean copy of the tracked tree, so that nothing local (venv, runs, caches) leaks into the sdist.
    src = tmp_path_factory.mktemp("src")
    archive = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    files = [f for f in archive.decode().split("\0") if f and (ROOT / f).is_file()]
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        (src / f).write_bytes((ROOT / f).read_bytes())
    _run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", out, src])
    wheel = next(out.glob("stts_video-*.whl"))
    sdist = next(out.glob("stts_video-*.tar.gz"))
    return wheel, sdist


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory):
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    _run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", TORCH_PIN])
    return env_dir


def _check_installed(env_dir: Path) -> None:
    import stts

    py, cli = env_dir / "bin" / "python", env_dir / "bin" / "stts"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    cwd = env_dir  # not the checkout: the installed package must be the one imported
    code = ("import sys, stts; m = stts.create_model('mvit_tiny', num_classes=3); print(stts.__file__); "
            f"print(sorted(n for n in {EXTRAS!r} if n in sys.modules))")
    out = _run([py, "-c", code], env=env, cwd=cwd).splitlines()
    assert str(env_dir) in out[0], f"stts imported from {out[0]}, not from the fresh environment"
    assert out[1] == "[]", f"import stts pulled in optional extras: {out[1]}"
    assert "usage: stts" in _run([cli, "--help"], env=env, cwd=cwd)
    assert _run([cli, "--version"], env=env, cwd=cwd).split()[:2] == ["stts", stts.__version__]
    flops = _run([cli, "flops", "mvit_b_16x4"], env=env, cwd=cwd)
    # The count must be the real one (70.80 GFLOPs, equal to fvcore on the official code), not any number.
    assert re.search(r"70\.80 GFLOPs", flops), flops


def test_wheel_and_sdist_install_into_a_fresh_environment(dists, fresh_env):
    wheel, sdist = dists
    pip = [fresh_env / "bin" / "python", "-m", "pip", "--disable-pip-version-check"]
    for dist in (wheel, sdist):
        _run([*pip, "install", "--quiet", dist])
        _check_installed(fresh_env)
        _run([*pip, "uninstall", "--yes", "--quiet", "stts-video"])


def test_distribution_name_and_metadata(dists):
    import zipfile

    wheel, _ = dists
    import stts

    assert wheel.name.startswith(f"stts_video-{stts.__version__}-")
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
        entry = z.read(next(n for n in z.namelist() if n.endswith("entry_points.txt"))).decode()
    assert "Name: stts-video" in meta
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert sorted(r.split()[1].split(">")[0].split("=")[0] for r in requires) == ["numpy", "pyyaml", "safetensors", "torch"]
    assert "stts = stts.cli:main" in entry


def test_make_test_installs_every_extra():
    """`make test` (and CI) installs `.[all,dev]`, and `all` lists every other extra: the tests of the
    optional features (ONNX export, PyAV decoding, ...) run there instead of being skipped."""
    tomllib = pytest.importorskip("tomllib")

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    features = [e for e in extras if e not in ("all", "dev")]
    assert "onnx" in features
    assert extras["all"] == [f"{project['name']}[{','.join(features)}]"]
    assert '-e ".[all,dev]"' in (ROOT / "Makefile").read_text()
