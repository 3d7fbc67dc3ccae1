"""The `stts` command: one entry point, one module per subcommand.

    stts list-models                 # what the registry holds
    stts flops mvit_b_16x4_stts_t0.5_s0.7 --json
    stts train configs/demo.yaml train.epochs=2
    python -m stts --help            # the same program

Each subcommand lives in `stts/commands/<name>.py` and exposes
`add_arguments(parser)` and `run(args) -> int | None`; the module docstring's first line is its help.
Modules are found by name, so adding a command touches no other file. They import heavy
dependencies (PyAV, matplotlib, the training engine) inside `run`, so `stts --help` stays fast.
A module that takes `key=value` overrides names their argument in `OVERRIDES = "dest"`: overrides
may then also come after options (`stts train cfg.yaml --finetune X train.epochs=3`).

A user's mistake (`stts.errors.UserError`: a bad file, key or value) ends here in one line,
`error: <message>`, exit status 2; commands raise it instead of printing. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from stts import commands
from stts.errors import UserError

__all__ = ["main", "build_parser"]


def _command_modules():
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"{commands.__name__}.{info.name}")


def _version() -> str:
    """`stts 0.2.0 (torch 2.13.0+cpu)`: the torch build matters as much as ours in a bug report."""
    from importlib.metadata import PackageNotFoundError, version

    import stts

    try:
        torch_version = version("torch")
    except PackageNotFoundError:  # pragma: no cover - torch is a hard dependency
        torch_version = "unknown"
    return f"stts {stts.__version__} (torch {torch_version})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stts",
        description="Spatial-temporal token selection for video transformers.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        name = getattr(module, "NAME", module.__name__.rsplit(".", 1)[-1].replace("_", "-"))
        doc = (module.__doc__ or "").strip()
        summary = doc.splitlines()[0] if doc else ""
        p = sub.add_parser(
            name, help=summary, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _parser=p, _overrides=getattr(module, "OVERRIDES", None))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    if extra:
        # key=value after an option: argparse leaves it over once the positionals were matched.
        if args._overrides and all("=" in e and not e.startswith("-") for e in extra):
            getattr(args, args._overrides).extend(extra)
        else:
            args._parser.error(f"unrecognized arguments: {' '.join(extra)}")  # exits 2 with the usage
    try:
        code = args._run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
