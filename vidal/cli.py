"""``vidal run | report | train | eval | convert``: dispatches to each module's ``main(argv)``.

The modules are imported only when their command is chosen, so ``vidal run`` does not import torch's
training stack and ``vidal train`` does not start Ray. ``--config demo`` / ``--config vidal`` (and the
training configs' names, ``--config demo`` for ``vidal train``) resolve to the shipped configs in a
checkout and after a non-editable install (``contracts.shipped``).
"""

from __future__ import annotations

import importlib
import sys

# command -> (module whose main(argv) runs it, one line of help)
COMMANDS = {
    "run": ("pipeline.run", "build a dataset: run the pipeline's stages on Ray (python -m pipeline.run)"),
    "report": ("pipeline.report", "write the HTML report of a run root (python -m pipeline.report)"),
    "train": ("model.train", "train a LanguageBind-style model on shards (python -m model.train)"),
    "eval": (
        "model.eval",
        "evaluate a checkpoint: retrieval and zero-shot benchmarks (python -m model.eval)",
    ),
    "convert": (
        "model.convert",
        "released LanguageBind checkpoints <-> vidal exports (python -m model.convert)",
    ),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return (
        "usage: vidal COMMAND [ARGS...]\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\n`vidal COMMAND --help` lists a command's arguments."
    )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from vidal import __version__

        print(f"vidal {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(rest)
