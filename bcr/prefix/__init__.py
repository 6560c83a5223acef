"""Exact-prefix serving cache ``bcr`` for SGLang: block-hash-chain index, cache, plug-in, launcher, benchmark."""
