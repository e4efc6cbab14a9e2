"""recsysllm: fine-tune a pretrained GLM into a recommender (RecSysLLM, Chu et al. 2023)."""

# Registers GLMConfig / GLMForConditionalGeneration with transformers' Auto classes, so
# AutoModel.from_pretrained(converted_dir) works after `import recsysllm`.
from recsysllm import modeling as modeling

__version__ = "0.1.0"
