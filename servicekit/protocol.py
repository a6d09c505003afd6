"""Wire-level facts every program agrees on, services and their clients alike."""

from __future__ import annotations

# Seeds the services accept and report: numpy and torch seed from 32-bit unsigned integers; 0 means "pick one".
MAX_SEED = 2**32 - 1
