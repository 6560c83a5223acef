"""Tiered KV compression on transformers' own cache API (DESIGN.md, "Tiered compression").

Modules, one job each:

* :mod:`bcr.tiered.settings` — settings as data (bands, one-knob variations), config checks;
* :mod:`bcr.tiered.summaries` — importance, phantom summaries (cluster means + counts), surprise error;
* :mod:`bcr.tiered.manifest` — which pages of a layer are exact / surprise / phantom, and token counts;
* :mod:`bcr.tiered.paths` — decode paths (how a compressed layer is stored and attended: ``densify``);
* :mod:`bcr.tiered.cache` — the ``Cache`` (mixed dense and tiered layers) reporting the logical length;
* :mod:`bcr.tiered.attention` — the registered attention/mask functions that route to the decode path;
* :mod:`bcr.tiered.harness` — one prompt, dense vs tiered interleaved: exactness, timing, memory;
* :mod:`bcr.tiered.sweep` — settings x prompts, promotion decision, summary tables;
* :mod:`bcr.tiered.cli` — ``bcr tiered ...`` (what the Snakemake rules call).
"""
