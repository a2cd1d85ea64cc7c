"""Per-time-step embeddings of a video, time-sharded over W processes.

    torchrun --standalone --nproc-per-node 2 pipelines/extract_features.py VIDEO -o OUT.safetensors [-c configs/features_tiny.yaml] [key=value ...]
    python pipelines/extract_features.py VIDEO -o OUT.safetensors          # one process

Same as `videoring features` (which starts torchrun itself with --nproc N).
Takes ~1 s per minute of video at 1 fps with the tiny config on 2 CPU cores
(ViT-Tiny bf16 dominates); the output is the same file for any W.
"""

import sys

from videoring.cli import main

if __name__ == "__main__":
    sys.exit(main(["features", *sys.argv[1:]]))
