"""Keep the cyclic garbage collector off the large, long-lived policy heap.

A big policy (10,000 Services and Routes) is a few million live objects: the model, the compiled
protobufs, the encoded bytes. Python's full (generation 2) collection walks all of them, a second
or more of a held GIL, and a reload allocates enough to trigger one: live xDS streams stall and an
incremental reload pays for the whole heap. After each applied version :func:`settle` moves what
survived into the permanent generation (``gc.freeze``), so collections only walk what is new.

Objects of replaced versions are freed by reference counting as before; only garbage *cycles*
among frozen objects would wait, so every :data:`FULL_EVERY` versions one full collection
(unfreeze, collect, freeze) reclaims them: memory stays bounded.
"""

from __future__ import annotations

import gc

__all__ = ["FULL_EVERY", "settle"]

FULL_EVERY = 25


def settle(applied: int) -> None:
    """Call once after each applied version (``applied`` counts them, from 1)."""
    if applied % FULL_EVERY == 0:
        gc.unfreeze()
        gc.collect()
    gc.freeze()
