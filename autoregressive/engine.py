"""The decode engine of the sampler: one ``--engine`` choice instead of five decode flags.

An engine is a base name, optionally followed by ``+`` modifiers (``--engine auto+fused+packed``):

======================  ============================================================================================
base                    what decodes
======================  ============================================================================================
``auto`` (default)      :class:`~autoregressive.models.static_decode.StaticDecoder`: one KV cache and one decode step
                        for every batch, captured as a CUDA graph on CUDA, run eagerly elsewhere. Tokens are
                        bit-identical to ``eager``, so both share their result folders.
``eager``               :func:`~autoregressive.models.generate.generate`, the reference loop (takes no modifier)
``static``              the static decoder with the plain eager step on every device (no graph)
``cudagraph``           the static decoder's step captured as a CUDA graph (CUDA only)
``compile``             ``torch.compile`` of the step: with CUDA graphs on CUDA, inductor kernels on CPU
``inductor``            ``torch.compile`` (inductor, mode ``default``) on any device
``inductor-cudagraph``  ``torch.compile(mode="reduce-overhead")`` (CUDA only)
======================  ============================================================================================

modifiers (each can change tokens by float rounding, so it gets its own run key): ``fused`` PyTorch's fused
attention kernel; ``packed`` (CPU) packed weight copies with the best kernel that applies (native, else oneDNN);
``native`` / ``onednn`` (CPU) that packed kernel explicitly. ``static-fused`` is short for ``auto+fused`` and
``cpu-fast`` for ``auto+fused+packed`` (the fastest CPU decoding; see benchmarks/README.md).

The five flags this replaces (``--decode``, ``--decode-compile``, ``--compile``, ``--attention``, ``--cpu-prepack``)
stay accepted for one release as hidden aliases: :func:`resolve_engine` maps them onto the engine and prints one
deprecation note. The resolved engine is also written back to those five attribute names, so the run settings and
run keys of a folder are the same whichever spelling chose it.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from typing import Optional

from autoregressive.models.fast_decode import CPU_KERNELS
from autoregressive.models.static_decode import ATTENTION_KERNELS, COMPILE_MODES

__all__ = ["Engine", "ENGINE_BASES", "ENGINE_MODIFIERS", "parse_engine", "add_engine_args", "resolve_engine"]


@dataclass(frozen=True)
class Engine:
    """One decode engine, in the fields the StaticDecoder takes (``decode="eager"``: no decoder)."""

    decode: str = "static"
    decode_compile: str = "auto"  # a StaticDecoder compile mode
    compile: bool = False  # torch.compile for the device (reduce-overhead on CUDA, default elsewhere)
    attention: str = "math"
    cpu_prepack: Optional[str] = None  # None, or one of CPU_KERNELS

    @property
    def name(self) -> str:
        """The canonical ``--engine`` spelling of this engine (what the run settings record)."""
        if self.decode == "eager":
            return "eager"
        base = "compile" if self.compile else _BASE_OF_COMPILE[self.decode_compile]
        mods = (["fused"] if self.attention == "fused" else []) + (
            [] if self.cpu_prepack is None else ["packed" if self.cpu_prepack == "auto" else self.cpu_prepack])
        return "+".join([base, *mods])

    def static_options(self) -> list[str]:
        """The options that only the static decoder reads, as their ``--engine`` spellings (for messages)."""
        return [n for n, on in (("+fused", self.attention != "math"), ("+packed", self.cpu_prepack is not None),
                                ("compile", self.compile), ("a decode step mode", self.decode_compile != "auto"))
                if on]


ENGINE_BASES: dict[str, dict] = {
    "auto": {},
    "eager": {"decode": "eager"},
    "static": {"decode_compile": "none"},
    "cudagraph": {"decode_compile": "cudagraph"},
    "compile": {"compile": True},
    "inductor": {"decode_compile": "default"},
    "inductor-cudagraph": {"decode_compile": "reduce-overhead"},
}
_BASE_OF_COMPILE = {"auto": "auto", "none": "static", "cudagraph": "cudagraph", "default": "inductor",
                    "reduce-overhead": "inductor-cudagraph"}
ENGINE_MODIFIERS: dict[str, dict] = {"fused": {"attention": "fused"}, "packed": {"cpu_prepack": "auto"},
                                     "native": {"cpu_prepack": "native"}, "onednn": {"cpu_prepack": "onednn"}}
ENGINE_PRESETS = {"static-fused": "auto+fused", "cpu-fast": "auto+fused+packed"}


def parse_engine(text: str) -> Engine:
    """``BASE[+MODIFIER...]`` (or a preset) -> Engine; a ValueError lists the choices."""
    parts = ENGINE_PRESETS.get(text.strip(), text.strip()).split("+")
    base, mods = parts[0], parts[1:]
    if base not in ENGINE_BASES or any(m not in ENGINE_MODIFIERS for m in mods):
        raise ValueError(f"unknown engine {text!r}: a base ({', '.join(ENGINE_BASES)}) with optional modifiers "
                         f"+{', +'.join(ENGINE_MODIFIERS)}, or a preset ({', '.join(ENGINE_PRESETS)})")
    fields = dict(ENGINE_BASES[base])
    for m in mods:
        fields.update(ENGINE_MODIFIERS[m])
    engine = Engine(**fields)
    if engine.decode == "eager" and mods:
        raise ValueError(f"--engine {text}: the eager loop takes no modifiers ({', '.join(mods)} set the static "
                         "decoder); use --engine auto+...")
    return engine


def add_engine_args(parser: argparse.ArgumentParser, group: argparse._ActionsContainer | None = None) -> None:
    """``--engine`` in ``group`` (else the parser), plus the five old decode flags as hidden aliases."""
    (group or parser).add_argument(
        "--engine", default="auto", metavar="ENGINE",
        help="decode engine: auto (static cache; CUDA graph on GPU; tokens == eager), eager, static, cudagraph, "
             "compile, inductor, inductor-cudagraph, with optional +fused / +packed / +native / +onednn "
             "(faster, float rounding differs; own run key); presets static-fused, cpu-fast. "
             "See autoregressive/engine.py")
    hidden = argparse.SUPPRESS  # deprecated spellings, accepted for one release (resolve_engine maps them)
    parser.add_argument("--decode", choices=["static", "eager"], default=None, help=hidden)
    parser.add_argument("--decode-compile", choices=list(COMPILE_MODES), default=None, help=hidden)
    parser.add_argument("--attention", choices=list(ATTENTION_KERNELS), default=None, help=hidden)
    parser.add_argument("--cpu-prepack", nargs="?", const="auto", default=None, choices=list(CPU_KERNELS),
                        help=hidden)
    parser.add_argument("--compile", action="store_true", default=None, help=hidden)


_LEGACY = (("decode", "--decode"), ("decode_compile", "--decode-compile"), ("attention", "--attention"),
           ("cpu_prepack", "--cpu-prepack"), ("compile", "--compile"))


def resolve_engine(args: argparse.Namespace, prog: str = "sample_c2i") -> Engine:
    """The engine of ``--engine`` with the old flags given applied on top; writes the result back to ``args``
    (``args.engine`` its canonical name, ``args.decode`` ... the five old fields). Raises ValueError for a static
    decoder option together with the eager loop."""
    engine = parse_engine(args.engine)
    given = {field: getattr(args, field) for field, _ in _LEGACY if getattr(args, field, None) is not None}
    if given:
        engine = dataclasses.replace(engine, **given)
        flags = [flag for field, flag in _LEGACY if field in given]
        if engine.decode == "eager" and engine.static_options():
            static = [flag for flag in flags if flag != "--decode"] or engine.static_options()
            raise ValueError(f"{', '.join(static)} set(s) the static decoder; drop it or use --decode static "
                             "(--engine auto)")
        print(f"[{prog}] note: {' '.join(flags)} are deprecated spellings of --engine and will be removed in the "
              f"next release; this run is --engine {engine.name}", file=sys.stderr)
    args.engine = engine.name
    for field, _ in _LEGACY:
        setattr(args, field, getattr(engine, field))
    args.compile = bool(engine.compile)
    return engine
