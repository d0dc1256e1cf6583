"""``python -m model.convert``: released LanguageBind checkpoints <-> vidal exports.

::

    # official -> vidal (one model from one or several towers; hub ids or directories)
    python -m model.convert to-vidal LanguageBind/LanguageBind_Video_FT audio=ckpts/Audio_FT --out runs/lb
    # vidal -> official (an export, a training checkpoint or a run directory; one tower per directory)
    python -m model.convert to-official runs/train/export --modality video --out out/LanguageBind_Video_mine

The official layout (``config.json``, ``pytorch_model.bin`` with the released key set, ``vocab.json`` /
``merges.txt``) is what projects that consume LanguageBind encoders through the official classes load
(Video-LLaVA, MoE-LLaVA). A mistake in the arguments exits with status 2 and one line, before any work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.official_config import MODALITY_TYPES


def parse_source(spec: str) -> tuple[str | None, str]:
    """``video=LanguageBind/LanguageBind_Video_FT`` -> ``("video", id)``; a bare id -> ``(None, id)``."""
    head, sep, tail = spec.partition("=")
    if sep and head in MODALITY_TYPES:
        return head, tail
    return None, spec


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model.convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="direction", required=True)
    to_vidal = sub.add_parser("to-vidal", help="released checkpoint(s) -> a vidal export directory")
    to_vidal.add_argument(
        "sources", nargs="+", help="[modality=]hub id or directory of a released checkpoint"
    )
    to_vidal.add_argument("--out", required=True, help="the vidal export directory to write")
    to_vidal.add_argument(
        "--text-from", choices=sorted(MODALITY_TYPES), help="whose text tower (default: first)"
    )
    to_official = sub.add_parser("to-official", help="a vidal model -> the released layout (one tower)")
    to_official.add_argument("source", help="a vidal export, training checkpoint or run directory")
    to_official.add_argument("--out", required=True, help="the directory to write")
    to_official.add_argument(
        "--modality", choices=sorted(MODALITY_TYPES), help="the tower (default: the only one)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from model.official import convert_to_vidal, export_official

    try:
        if args.direction == "to-vidal":
            out = convert_to_vidal(
                [parse_source(spec) for spec in args.sources], args.out, text_from=args.text_from
            )
        else:
            from model.checkpoint import load_model

            if not Path(args.source).exists():
                raise FileNotFoundError(f"{args.source}: no such directory")
            model, _ = load_model(args.source)
            out = export_official(model, args.out, args.modality)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"model.convert: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
