"""The experiment harness, apart from the library: what reproduces the paper's tables and figures.

- `tasks/`: one module per task, each exposing ``make_task(config) -> Task``;
- `configs/`: one ml_collections config per experiment (``configs/`` at the top of the repository
  links here);
- `train`: the training loop for every method (MLE, MGS, PG, MRT, ES);
- `report`: the results table and the plots;
- `cli`: the ``mlesearch`` command; `demo`: the ``python -m mlesearch`` demonstration.

It needs the ``experiments`` extra (ml_collections, orbax, tqdm, matplotlib, ...). The library
(`mlesearch`, `mlesearch.seq`, `mlesearch.baselines`) never imports it.
"""
