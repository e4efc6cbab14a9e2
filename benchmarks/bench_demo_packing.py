"""Non-pad fraction and collator rate on the real demo mixture, packing on/off.

    recsysllm demo   # once: fetches data/ml-100k and trains runs/demo/final (its tokenizer)
    python benchmarks/bench_demo_packing.py

3,200 examples of one epoch of configs/tiny_ml100k.yaml's mixture, batches of 16 as
in training, at the demo's max length (256) and the paper's (1024).
"""

import time

from recsysllm.collator import BlankInfillingCollator
from recsysllm.config import load_config
from recsysllm.modeling.modeling_glm import TRAINING_PAD_MULTIPLE
from recsysllm.pipeline import masking_config, prepare_data, task_mixture
from recsysllm.tokenization import GLMTokenizer

config = load_config("configs/tiny_ml100k.yaml", [])
data = prepare_data(config.data, seed=config.data.seed)
tok = GLMTokenizer.from_pretrained("runs/demo/final/tokenizer")
examples = data.tasks.training_examples(task_mixture(config.data), seed=42, epoch=0)[:3200]
tokenized = [tok.tokenize_example(e) for e in examples]
for max_length in (256, 1024):
    for packing in (False, True):
        for pad in (None, TRAINING_PAD_MULTIPLE):
            c = BlankInfillingCollator(
                tok,
                max_length=max_length,
                masking=masking_config(config.data),
                packing=packing,
                seed=0,
                pad_to_multiple_of=pad,
            )
            t = time.process_time()
            for i in range(0, len(tokenized), 16):
                c(tokenized[i : i + 16])
            rate = len(tokenized) / (time.process_time() - t)
            print(
                f"max_length {max_length} packing {packing} pad_to {pad}: non-pad {c.non_pad_fraction.cumulative:.1%}, {rate:,.0f} examples/CPU s"
            )
