"""Test hashers for the block-hash chain: one that makes every key collide, one that counts."""

from __future__ import annotations

import numpy as np

from bcr.prefix.chain import ChainHasher


class ConstantHasher(ChainHasher):
    """Every block of every sequence gets key 0: the worst collision there is."""

    def block_step(self, page_size):
        return lambda prev, buf, offset: 0

    def chain(self, tokens, page_size, prev):
        return np.zeros(len(tokens) // page_size, dtype=np.uint64)


class CountingHasher(ChainHasher):
    """Counts the blocks and tokens that go through the hash (scalar steps and vectorised chains)."""

    def __init__(self):
        super().__init__(seed=0)
        self.blocks = 0
        self.tokens = 0

    def block_step(self, page_size):
        step = super().block_step(page_size)

        def counted(prev, buf, offset):
            self.blocks += 1
            self.tokens += page_size
            return step(prev, buf, offset)

        return counted

    def chain(self, tokens, page_size, prev):
        self.blocks += len(tokens) // page_size
        self.tokens += len(tokens)
        return super().chain(tokens, page_size, prev)
