"""Convert a THUDM GLM checkpoint directory to model.safetensors + a recsysllm config.json.

python scripts/convert_glm_checkpoint.py checkpoints/glm-10b checkpoints/glm-10b-st
recsysllm convert checkpoints/glm-10b checkpoints/glm-10b-st      # the same
"""

from __future__ import annotations

import sys

from recsysllm.modeling.checkpoint import convert_main

if __name__ == "__main__":
    sys.exit(convert_main(sys.argv[1:]))
