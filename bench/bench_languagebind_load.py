"""Loading a released-size LanguageBind tower: wall time and peak RSS of ``LanguageBind.load`` on a random
checkpoint with LanguageBind_Video_FT's shapes (ViT-L/14, 24 layers, 8 frames, temporal blocks; CLIP text
12 x 768; 768-d projection) in the official layout, and one clip's ``encode`` on CPU.

    python bench/bench_languagebind_load.py [--repeats 3] [--variant video]

Prints one JSON line per repeat and the medians, with the load average beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VIT_L = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "num_frames": 8,
    "projection_dim": 768,
}
TEXT_768 = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "projection_dim": 768,
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", default="video")
    args = parser.parse_args()
    import torch

    from model import LanguageBind
    from tests.languagebind_ckpt import write_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        path = write_checkpoint(Path(tmp) / "ckpt", args.variant, vision_sizes=VIT_L, text_sizes=TEXT_768)
        size_mb = (path / "pytorch_model.bin").stat().st_size / 2**20
        loads, encodes = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model = LanguageBind.load(path)
            loads.append(time.perf_counter() - start)
            clip = torch.randn(1, 8, 3, 224, 224)
            start = time.perf_counter()
            model.encode("video", clip)
            encodes.append(time.perf_counter() - start)
            print(json.dumps({"load_s": round(loads[-1], 2), "encode_s": round(encodes[-1], 2)}), flush=True)
            del model
    print(
        json.dumps(
            {
                "checkpoint_mb": round(size_mb),
                "load_s_median": round(statistics.median(loads), 2),
                "encode_1_clip_s_median": round(statistics.median(encodes), 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "threads": torch.get_num_threads(),
                "loadavg": os.getloadavg(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
