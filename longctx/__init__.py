"""longctx: extend a pretrained RoPE model from L to 8×–512×L and keep its short-context quality.

The product's folders install under this one name, so nothing generic lands in site-packages:

- ``longctx.rope``  (``rope/``)  — position math, specs, install into HF models, export, search;
- ``longctx.data``  (``data/``)  — sources, tokenisation, packing, mixed windows, synthetic tasks;
- ``longctx.eval``  (``eval/``)  — perplexity, passkey, NIAH, RULER, short tasks, reports;
- ``longctx.train`` (``train/``) — recipes, stages, the training loop, the runner;

``benchmarks/`` (ratio benchmarks, the reproduction report) is not installed: it runs from a
checkout, found from the working directory (:mod:`longctx.checkout`).

Command line: ``longctx run | plan | eval | reproduce`` (:mod:`longctx.cli`).
"""

__version__ = "0.2.0"
