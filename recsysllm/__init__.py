"""recsysllm: fine-tune a pretrained GLM into a recommender (RecSysLLM, Chu et al. 2023)."""

__version__ = "0.1.0"
