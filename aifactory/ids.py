"""Identifiers shared by stages (decision ids of the policy engine and of the runtime's guard)."""

from __future__ import annotations

import random


def new_decision_id() -> str:
    """128 random bits as 32 hex digits (the shape of uuid4().hex).

    Not uuid4: it reads os.urandom on every call, a syscall that in the threaded inference server
    also gives up and re-takes the GIL once per decision. `random` is seeded from os.urandom once per
    process, and again in a forked child. The ids name decisions in logs; they are not secrets.
    """
    return f"{random.getrandbits(128):032x}"
