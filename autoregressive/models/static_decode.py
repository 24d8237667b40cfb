"""Static-cache decoding: one KV cache of fixed shape and one fixed-shape decode step, reused for every batch.

:func:`~autoregressive.models.generate.generate` (the eager reference) allocates a cache per call and runs a Python
loop of many small kernels; on a GPU at small batch most of a step is then launch overhead. A
:class:`StaticDecoder` instead

* allocates the KV caches once, for ``batch_size`` images (``2 * batch_size`` rows with guidance); a smaller last
  batch is padded with null-class rows whose tokens are thrown away (rows never mix, so the real rows are
  unaffected);
* runs every decode step through one function of fixed shapes with no host synchronisation -- token embedding, the
  transformer over the whole masked cache, CFG combination (the step's scale is a tensor) and the token pick -- so
  ``torch.compile(mode="reduce-overhead")`` captures it once as a CUDA graph and replays it for all 255 steps of
  every batch;
* keeps the eager path's arithmetic: guidance, the schedule table, the per-row random numbers and the token pick
  are :class:`~autoregressive.models.generate.SamplingPlan` and
  :func:`~autoregressive.models.generate.guide_and_pick`, shared with ``generate``. With ``compile="none"`` the
  tokens are bit-identical to ``generate`` (same kernels); compiled, they can differ only where float rounding
  flips a near tie.

Modes (``compile``):

==================  =====================================================================================
``none``            eager step over the static cache (bit-identical to ``generate``)
``cudagraph``       the eager step captured once per batch shape with ``torch.cuda.CUDAGraph`` and replayed
                    (CUDA only; same kernels as eager, so bit-identical too; capture takes one step, not a
                    compilation)
``default``         ``torch.compile`` (inductor) of the step; on CPU it needs a C++ compiler
``reduce-overhead`` ``torch.compile`` with inductor's CUDA graphs (CUDA only; fused kernels, slow first call)
``auto``            ``cudagraph`` on CUDA, ``none`` elsewhere
==================  =====================================================================================

``attention``: ``"math"`` (default) decodes with the eager reference's attention kernel, so tokens stay
bit-identical to ``generate``; ``"fused"`` lets PyTorch pick its fused kernel (on CUDA it reads the bf16 cache once
instead of upcasting all of it to float32 each step: several times faster at batch 256), at the price of float
rounding that can flip near ties. Without a graph (CPU), fused steps also attend to the filled prefix of the cache only
(``FastAttention.valid_len``) instead of the whole masked cache.

``cpu_prepack`` (CPU): the linear layers multiply through packed copies of their weights, at the cost of the
weights' memory once more and float rounding that differs from the unpacked model. ``"native"``: the project's
float32 kernel (utils/cpu_kernels.py, compiled once on this machine; up to 16 rows, i.e. batch 8 with CFG), which
streams the weights at about the memory's read bandwidth; ``"onednn"``: oneDNN copies packed for the decoder's row
count (about 2x MKL for 4..16 rows on this project's CPU); ``True``/``"auto"``: native where it applies and builds,
else oneDNN. The kernel used is :attr:`cpu_kernel`. The copies are dropped by :meth:`close`; a weight changed
meanwhile (training) is never multiplied through a stale copy.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import fast_decode
from .fast_decode import CPU_KERNELS, resolve_cpu_kernel
from .generate import GeneratorArg, SamplingConfig, SamplingPlan, guide_and_pick, sampling_config

__all__ = ["StaticDecoder", "COMPILE_MODES", "ATTENTION_KERNELS", "packed_kernel"]

COMPILE_MODES = ("none", "cudagraph", "default", "reduce-overhead", "auto")
ATTENTION_KERNELS = ("math", "fused")


def _attention_kernel(name: str):
    """'math': the eager reference's decode kernel (bit-identical tokens); 'fused': PyTorch's own choice (on CUDA a
    memory-efficient/cuDNN kernel that reads the bf16 cache once instead of upcasting it, much faster at large
    batch; float rounding differs)."""
    return sdpa_kernel([SDPBackend.MATH]) if name == "math" else contextlib.nullcontext()


def _decode_step(model: torch.nn.Module, token: torch.Tensor, input_pos: torch.Tensor, scale: torch.Tensor,
                 uniforms: Optional[torch.Tensor], batch: int, guided: bool, temperature: float, top_k: int,
                 top_p: float, sample_logits: bool) -> torch.Tensor:
    """Token ``input_pos`` of every image from the previous tokens [batch]: the part that is compiled/captured."""
    x = token.view(batch, 1)
    if guided:
        x = torch.cat([x, x])
    logits, _ = model(x, None, input_pos=input_pos)
    return guide_and_pick(logits[:, -1], batch, guided, scale, uniforms, temperature, top_k, top_p, sample_logits)


def _table_step(model: torch.nn.Module, token: torch.Tensor, pos: torch.Tensor, scales: torch.Tensor,
                uniforms: Optional[torch.Tensor], out: torch.Tensor, *settings) -> None:
    """One decode step on static buffers (what a CUDA graph captures): reads ``token`` and the tables at ``pos``,
    writes the new token into ``out[:, pos]`` and ``token``, then advances ``pos``."""
    scale = scales.index_select(0, pos).squeeze(0)
    u = None if uniforms is None else uniforms.index_select(1, pos).squeeze(1)
    new = _decode_step(model, token, pos, scale, u, *settings)
    out.index_copy_(1, pos, new.view(-1, 1))
    token.copy_(new)
    pos.add_(1)


def packed_kernel(cpu_prepack: bool | str | None, batch_size: int, dtype: torch.dtype,
                  compiled: bool = False) -> Optional[str]:
    """The kernel ('native' or 'onednn') of a StaticDecoder's packed CPU products for ``cpu_prepack``, or None
    without packing; decided for ``2 * batch_size`` rows (guided batches), the most the decoder holds. A
    ``torch.compile``d step cannot trace the native kernels (ctypes calls): 'auto' then means oneDNN, and 'native'
    is refused."""
    if cpu_prepack in (False, None, "none"):
        return None
    choice = "auto" if cpu_prepack is True else cpu_prepack
    if compiled and choice == "native":
        raise ValueError("the native CPU kernels cannot run inside torch.compile; use cpu_prepack='onednn' (or "
                         "'auto') with a compiled step, or compile='none'")
    return resolve_cpu_kernel("onednn" if compiled and choice == "auto" else choice, 2 * int(batch_size), dtype)


class StaticDecoder:
    """Sampler bound to one GPT with a persistent, fixed-shape KV cache (see the module docstring).

    ``decoder.generate(cond, max_new_tokens, config, generator=...)`` takes the arguments of
    :func:`~autoregressive.models.generate.generate` (minus the model): one
    :class:`~autoregressive.models.generate.SamplingConfig`, or its fields as keywords. While a decoder holds the
    cache, the model's own cached inference belongs to it, and its layers are the fast ones of
    :mod:`~autoregressive.models.fast_decode`; :meth:`close` (or ``with StaticDecoder(...) as d``) frees the cache and
    gives the layers their plain classes back.
    """

    def __init__(self, model: torch.nn.Module, batch_size: int, compile: str = "auto", attention: str = "math",
                 cpu_prepack: bool | str = False):
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {list(COMPILE_MODES)}, got {compile!r}")
        if attention not in ATTENTION_KERNELS:
            raise ValueError(f"attention must be one of {list(ATTENTION_KERNELS)}, got {attention!r}")
        self.attention = attention
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = getattr(model, "_orig_mod", model)
        self.batch_size = int(batch_size)
        device = self.model.tok_embeddings.weight.device
        if compile == "auto":
            compile = "cudagraph" if device.type == "cuda" else "none"
        if compile in ("cudagraph", "reduce-overhead") and device.type != "cuda":
            raise ValueError(f"compile={compile!r} captures CUDA graphs and needs a CUDA model; "
                             "use 'default' or 'none' on " + device.type)
        self.compile_mode = compile
        if cpu_prepack is True:
            cpu_prepack = "auto"
        if cpu_prepack not in (False, None, "none", *CPU_KERNELS):
            raise ValueError(f"cpu_prepack must be False, True or one of {['none', *CPU_KERNELS]}, got {cpu_prepack!r}")
        self.cpu_prepack = cpu_prepack not in (False, None, "none")
        if self.cpu_prepack and device.type != "cpu":
            raise ValueError("cpu_prepack packs weights for CPU products; the model is on " + device.type)
        # the packed products' kernel, fixed here for the most rows this decoder holds (both CFG halves), so the
        # choice is one per decoder and a bad one fails before any batch
        compiled = compile in ("default", "reduce-overhead")
        self.cpu_kernel: Optional[str] = packed_kernel(cpu_prepack, self.batch_size,
                                                       self.model.tok_embeddings.weight.dtype, compiled)
        self._step = torch.compile(_decode_step, mode=compile, fullgraph=True) if compiled else _decode_step
        self._graphs: dict = {}  # settings -> (graph, static inputs, static output), for compile='cudagraph'
        self._rows = -1  # rows the current cache holds
        self._seq = -1
        self._cache = None  # the first layer's cache module, to notice when another caller replaced it
        self._fast: list = []  # the modules this decoder gave their fast classes (fast_decode), restored by close()

    # ------------------------------------------------------------------ cache
    def _ensure_cache(self, rows: int, max_new_tokens: int) -> None:
        core = self.model
        # the decode speed layer, until close(); checked per batch, since another decoder's close() may have given
        # the model its plain layers back (and dropped the packed copies with them)
        fresh = fast_decode.accelerate(core)
        self._fast += fresh
        mine = self._rows > 0 and core.layers[0].attention.kv_cache is self._cache
        if not mine or rows != self._rows or 1 + max_new_tokens > self._seq or fresh:
            # (re)allocate and re-pack; also after something else dropped our cache (an eager generate() on this
            # model) or our fast layers
            core.setup_caches(rows, 1 + max_new_tokens, core.tok_embeddings.weight.dtype)
            self._rows, self._seq = rows, 1 + max_new_tokens
            self._cache = core.layers[0].attention.kv_cache
            self._graphs.clear()  # captured graphs point at the old cache
            if self.cpu_prepack:  # packed copies of the weights (oneDNN's for this row count)
                fast_decode.prepack(core, rows, self.cpu_kernel)

    def _zero_cache(self) -> None:
        """Positions past the current one are masked, but a stale NaN (from an earlier batch or a graph's warm-up)
        would still poison 0 * NaN in attention: every batch starts from a zeroed cache."""
        for layer in self.model.layers:
            layer.attention.kv_cache.k_cache.zero_()
            layer.attention.kv_cache.v_cache.zero_()

    def close(self) -> None:
        """Free the KV cache (the model's weights are untouched)."""
        if self._rows > 0 and self.model.layers[0].attention.kv_cache is self._cache:
            self.model.clear_caches()
        self._rows = self._seq = -1
        self._cache = None
        self._graphs.clear()
        if self.cpu_prepack:  # also in fast layers this decoder did not install (an enclosing accelerated())
            fast_decode.clear_prepack(self.model)
        fast_decode.restore(self._fast)
        self._fast = []

    def __enter__(self) -> StaticDecoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _captured(self, settings: tuple, max_new_tokens: int, sampling: bool) -> dict:
        """The decode step captured as a CUDA graph for these settings, with its static buffers.

        The graph reads the step's scale and random numbers from tables indexed by its position tensor, writes the
        token into the output table and advances the position itself, so a decode step is one ``replay()``.
        """
        key = (settings, max_new_tokens, sampling)
        if key in self._graphs:
            return self._graphs[key]
        core, batch = self.model, settings[0]
        device = core.tok_embeddings.weight.device
        bufs = dict(token=torch.zeros(batch, dtype=torch.long, device=device),
                    pos=torch.ones(1, dtype=torch.long, device=device),
                    scales=torch.ones(max_new_tokens, dtype=torch.float32, device=device),
                    uniforms=torch.full((batch, max_new_tokens), 0.5, device=device) if sampling else None,
                    out=torch.zeros(batch, max_new_tokens, dtype=torch.long, device=device))
        args = (core, bufs["token"], bufs["pos"], bufs["scales"], bufs["uniforms"], bufs["out"], *settings)
        bufs["args"], bufs["graph"] = args, None
        if device.type != "cuda":  # (tests run the same table loop eagerly on CPU)
            self._graphs[key] = bufs
            return bufs
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), _attention_kernel(self.attention):  # warm-up (kernel choice, workspaces)
            for _ in range(2):
                _table_step(*args)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), _attention_kernel(self.attention):
            _table_step(*args)
        bufs["graph"] = graph
        self._graphs[key] = bufs
        return bufs

    # --------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(self, cond: torch.Tensor, max_new_tokens: int, config: Optional[SamplingConfig] = None, *,
                 generator: GeneratorArg = None, **knobs) -> torch.Tensor:
        """Same tokens as ``generate(model, cond, n, config, generator=...)`` for up to ``batch_size`` class ids;
        int64 [B, n]. Keywords are SamplingConfig fields, as for ``generate``."""
        core = self.model
        config = sampling_config(config, **knobs)
        if cond.ndim == 1 and cond.shape[0] > self.batch_size:
            raise ValueError(f"{cond.shape[0]} class ids exceed this decoder's batch_size {self.batch_size}")
        plan = SamplingPlan(core, cond, max_new_tokens, config, generator)
        real, batch = plan.batch, self.batch_size
        pad = batch - real
        device = plan.cond.device
        labels = plan.cond
        uniforms = plan.uniforms
        if pad:  # fixed shapes: fill the batch with null-class rows whose tokens are dropped
            labels = torch.cat([labels, torch.full((pad,), core.num_classes, dtype=torch.long, device=device)])
            if uniforms is not None:
                uniforms = torch.cat([uniforms, torch.zeros(pad, uniforms.shape[1], device=device)])
        cond_all = torch.cat([labels, torch.full_like(labels, core.num_classes)]) if plan.guided else labels
        self._ensure_cache(cond_all.shape[0], max_new_tokens)
        settings = (batch, plan.guided, *plan.pick)
        if self.compile_mode == "cudagraph":  # captured before the zeroing: its warm-up writes into the cache
            captured = self._captured(settings, max_new_tokens, uniforms is not None)
        self._zero_cache()

        def column(j: int) -> Optional[torch.Tensor]:
            return None if uniforms is None else uniforms[:, j].contiguous()

        out = torch.empty(batch, max_new_tokens, dtype=torch.long, device=device)
        input_pos = torch.zeros(1, dtype=torch.long, device=device)
        # prefill (the class slot): eager, default attention kernel, as generate()
        logits, _ = core(None, cond_all, input_pos=input_pos)
        token = guide_and_pick(logits[:, -1], batch, plan.guided, plan.scales[0], column(0), *settings[2:])
        out[:, 0] = token
        if self.compile_mode == "cudagraph":
            c = captured
            c["scales"].copy_(plan.scales)
            if uniforms is not None:
                c["uniforms"].copy_(uniforms)
            c["token"].copy_(token)
            c["out"][:, 0] = token
            c["pos"].fill_(1)
            for _ in range(1, max_new_tokens):
                if c["graph"] is not None:
                    c["graph"].replay()
                else:
                    with _attention_kernel(self.attention):
                        _table_step(*c["args"])
            return c["out"][:real].clone()
        graphs = self.compile_mode == "reduce-overhead"
        compiled = self.compile_mode in ("default", "reduce-overhead")  # inductor picks its own attention kernel
        # eager fused steps attend to the filled prefix only (the math kernel keeps the original's whole masked cache)
        attns = [layer.attention for layer in core.layers] if self.attention == "fused" and not compiled else []
        native = self.cpu_kernel == "native"  # native packed products: the native decode attention too
        for attn in attns:
            attn.native_attention = native
        try:
            with contextlib.nullcontext() if compiled else _attention_kernel(self.attention):
                for i in range(1, max_new_tokens):
                    for attn in attns:
                        attn.valid_len = i + 1
                    input_pos.fill_(i)
                    if graphs:
                        torch.compiler.cudagraph_mark_step_begin()
                    token = self._step(core, token, input_pos, plan.scales[i], column(i), *settings)
                    out[:, i] = token
                    if graphs:
                        token = token.clone()  # the graph's output buffer is overwritten by the next replay
        finally:
            for attn in attns:
                attn.valid_len = None
                attn.native_attention = False
        return out[:real]
