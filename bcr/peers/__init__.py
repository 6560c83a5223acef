"""Peers: kvpress's compression presses on our models and prompts, beside the tiered cache.

:mod:`bcr.peers.runner` runs in its own interpreter (``.venv-peers``, built by
``scripts/setup_peers.sh``): kvpress pins ``transformers<5.3`` and ``pandas<3`` and patches the
attention functions of the whole process on import, so it never shares one with the tiered track.
:mod:`bcr.peers.plan` (main environment) turns the sweep's results into the runner's job and its
rows into Parquet; :mod:`bcr.peers.compare` joins our tiered rows at the matched stored fractions.
"""
