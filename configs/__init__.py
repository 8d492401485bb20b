"""Experiment configs, one ml_collections file per task, each with ``get_config()``.

Installed as ``mlesearch.configs``, so that ``mlesearch run digits`` finds ``configs/digits.py``.
"""
