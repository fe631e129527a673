"""End-to-end recipes built on the library layers (``pipeline`` steps and ``integration``'s trainer).

- :mod:`fusekernels.recipes.fusechat`: FuseChat's pairwise recipe (pairwise fusion, then a
  parameter-space merge) as one resumable run (``fusekernels fusechat``);
- :mod:`fusekernels.recipes.demo`: two pretrained LLMs fused into a tiny student, offline
  (``fusekernels demo``);
- :mod:`fusekernels.recipes.reproduce`: the FuseLLM / FuseChat tables in miniature over seeds
  (``fusekernels reproduce``);
- :mod:`fusekernels.recipes.experiment`: the pieces the demo and reproduce share (students,
  training arms, perplexity, plots).

The library steps below (split, extract, align, pack, cache, io, merge) never import a recipe.
"""
