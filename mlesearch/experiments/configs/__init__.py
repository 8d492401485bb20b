"""Experiment configs, one ml_collections file per task, each with ``get_config()``.

They live in the package ``mlesearch.experiments.configs`` (``configs/`` at the top of the
repository links here), so that ``mlesearch run digits`` finds them wherever mlesearch is installed.
"""
