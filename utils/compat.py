"""The original's command-line flags that this project accepts but does not need, registered in one place.

Scripts written for the original GigaTok pass these flags; they parse here (so such a script runs unchanged) but
change nothing, so they are hidden from ``--help`` and listed in Detailed_instructions.md ("Differences from the
original"). A flag with a single accepted value keeps its choice check: ``--quant-way lfq`` is still an error rather
than a silent vq run. The trainers' settings (``utils/settings.py``) declare their own inert keys.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["INERT_FLAGS", "InertFlag", "add_inert_flags"]


@dataclass(frozen=True)
class InertFlag:
    """One accepted-but-inert flag: how it parses (``switch``, a value, or one allowed choice) and why it is inert."""

    why: str
    switch: bool = False
    choices: Optional[tuple[str, ...]] = None
    type: Any = str
    default: Any = None


INERT_FLAGS: dict[str, InertFlag] = {
    "--from-fsdp": InertFlag("checkpoints are loaded as full state dicts whatever wrote them", switch=True),
    "--eval-python-path": InertFlag("the evaluation runs in this Python (the original called another one)"),
    "--num-code": InertFlag("the linear probes use every token", type=int),
    "--gpt-type": InertFlag("only class-conditional GPTs exist", choices=("c2i",), default="c2i"),
    "--quant-way": InertFlag("only VQ tokenizers exist", choices=("vq",), default="vq"),
}


def add_inert_flags(parser: argparse.ArgumentParser, *names: str) -> None:
    """Register the inert flags ``names`` (keys of :data:`INERT_FLAGS`) on ``parser``, hidden from ``--help``."""
    for name in names:
        flag = INERT_FLAGS[name]  # a KeyError here is a programming error: the flag must be listed above
        if flag.switch:
            parser.add_argument(name, action="store_true", help=argparse.SUPPRESS)
        else:
            parser.add_argument(name, type=flag.type, choices=flag.choices, default=flag.default,
                                help=argparse.SUPPRESS)
