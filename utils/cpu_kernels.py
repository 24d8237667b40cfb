"""Native float32 CPU kernels: for small-batch GPT decoding, a product of a few activation rows with a large weight
(``x [M, K] @ W.T``, M = 1..16) and one-query attention over a KV cache's filled prefix; for the tokenizer's CNN, a
Winograd F(2x2, 3x3) convolution of channels-last activations.

Why: decoding a GPT at small batch multiplies 1..16 rows by every weight matrix once per token, so a step is bound
by how fast the weights stream from memory. MKL's GEMM reaches ~10 GB/s there and oneDNN's prepacked product ~24
GB/s on this project's 2-core CPU, whose plain read bandwidth (a ``sum``) is ~35 GB/s; the kernel below streams a
weight packed as ``[ceil(N / 16), K, 16]`` front to back, one 64-byte line per k with all rows accumulated in
registers, and reaches the read bandwidth up to 4 rows (see benchmarks/README.md). PyTorch's fused CPU attention is
built for many queries; with one query per row and head, :func:`decode_attention` reads each cached key and value
once and runs about 2x faster. The Winograd convolution needs 16 multiplications per 2x2 output tile and channel pair
instead of 36; it transforms blocks of 16 tiles into a cache-resident buffer and multiplies them with the same
register-blocked loop, ~1.6-2x oneDNN's direct convolution for 64-256 channels.

The kernels are a few lines of C++ compiled once per machine with the system's ``c++`` (``-O3 -march=native
-fopenmp``; about 0.2 s) into ``$GIGATOK_KERNEL_CACHE`` (default ``~/.cache/gigatok/kernels``), loaded with ctypes,
and run on PyTorch's OpenMP threads (``torch.get_num_threads()``). No compiler, no OpenMP, or
``GIGATOK_NATIVE_KERNELS=0``: :func:`available` is False and callers use oneDNN/MKL instead.
``GIGATOK_KERNEL_MARCH`` replaces ``native`` (e.g. ``x86-64-v3`` for one library that every AVX2 node of a cluster
can load; the tests build that and the SSE2 baseline to cover the 8-rows-per-pass path).

Each output is one sequential sum over k (the threads split the outputs, never a sum), so results do not depend on
the thread count; they differ from MKL's/oneDNN's only by float rounding.
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import hashlib
import math
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Optional

import torch

__all__ = ["available", "disabled", "unavailable_reason", "pack_weight", "linear", "decode_attention",
           "attention_supported", "winograd_weight", "winograd_conv3x3", "WINOGRAD_CHANNELS", "MAX_ROWS", "BLOCK"]

BLOCK = 16      # outputs per packed block: one 64-byte line of float32 per k
MAX_ROWS = 16   # rows of one call (more: call per chunk, or use another product)

_SOURCE = r"""
#include <omp.h>
#include <stdint.h>
#include <vector>

typedef float vec16 __attribute__((vector_size(64)));
/* for loads and stores through pointers: no 64-byte alignment assumed (tensor views, std::vector) */
typedef float vec16u __attribute__((vector_size(64), aligned(4)));

#if defined(__AVX512F__)
#define ROWS_PER_PASS 16
#else
#define ROWS_PER_PASS 8   /* 16 accumulators would spill on 16-register ISAs */
#endif

/* rows [0, M) of the transposed activations xt (k-major, row stride ld) against one packed block of 16 outputs;
   M <= ROWS_PER_PASS. k-major x keeps one pointer with constant offsets in the inner loop. */
template <int M>
static inline void block_rows(const float* __restrict xt, const vec16u* __restrict w, float* __restrict y,
                              int64_t K, int64_t ld, int64_t N, int64_t col, int64_t width) {
  vec16 acc[M];
  for (int m = 0; m < M; ++m) acc[m] = (vec16){0};
  for (int64_t k = 0; k < K; ++k, xt += ld) {
    if (M > 8) __builtin_prefetch(w + k + 64);  /* compute-bound row counts: fetch 4 KB ahead (measured +15 %) */
    const vec16 wk = w[k];
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) acc[m] += xt[m] * wk;
  }
  for (int m = 0; m < M; ++m)
    for (int64_t j = 0; j < width; ++j) y[m * N + col + j] = acc[m][j];
}

typedef void (*rows_fn)(const float*, const vec16u*, float*, int64_t, int64_t, int64_t, int64_t, int64_t);

static const rows_fn FNS[] = {block_rows<1>, block_rows<2>, block_rows<3>, block_rows<4>, block_rows<5>,
                              block_rows<6>, block_rows<7>, block_rows<8>
#if ROWS_PER_PASS == 16
                              , block_rows<9>, block_rows<10>, block_rows<11>, block_rows<12>, block_rows<13>,
                              block_rows<14>, block_rows<15>, block_rows<16>
#endif
};

extern "C" int gigatok_rows_gemm(const float* x, const float* packed, float* y, int64_t M, int64_t K, int64_t N,
                                 int threads) {
  if (M < 1 || M > 16 || K < 1 || N < 1) return 1;
  static thread_local std::vector<float> buffer;  /* x transposed to k-major [K, M], shared by the team */
  if ((int64_t)buffer.size() < M * K) buffer.resize(M * K);
  float* xt = buffer.data();
  const int64_t blocks = (N + 15) / 16;
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    for (int64_t k = K * t / T; k < K * (t + 1) / T; ++k)
      for (int64_t m = 0; m < M; ++m) xt[k * M + m] = x[m * K + k];
#pragma omp barrier
    const int64_t lo = blocks * t / T, hi = blocks * (t + 1) / T;
    for (int64_t b = lo; b < hi; ++b) {
      const vec16u* w = (const vec16u*)(packed + b * K * 16);
      const int64_t col = b * 16, width = N - col < 16 ? N - col : 16;
      for (int64_t r = 0; r < M; r += ROWS_PER_PASS) {  /* a second pass re-reads the block from L2 */
        const int64_t rows = M - r < ROWS_PER_PASS ? M - r : ROWS_PER_PASS;
        FNS[rows - 1](xt + r, w, y + r * N, K, M, N, col, width);
      }
    }
  }
  return 0;
}

typedef int32_t ivec16 __attribute__((vector_size(64)));

/* exp(x) for x <= 0 (softmax after subtracting the max): 2^n * p(r), x = n ln2 + r, |r| <= ln2 / 2, a degree-7
   Taylor polynomial (relative error ~1e-7); x below -87 gives ~0 (2^-126 and less). */
static inline vec16 exp_nonpositive(vec16 x) {
  const vec16 lo = x - x - 87.0f;
  x = x < lo ? lo : x;
  const ivec16 n = __builtin_convertvector(x * 1.44269504088896341f - 0.5f, ivec16);  /* round to nearest (x <= 0) */
  const vec16 r = x - __builtin_convertvector(n, vec16) * 0.693147180559945309f;
  vec16 p = r * (1.0f / 5040) + (1.0f / 720);
  p = p * r + (1.0f / 120);
  p = p * r + (1.0f / 24);
  p = p * r + (1.0f / 6);
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const ivec16 bits = (n + 127) << 23;
  vec16 scale;
  __builtin_memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

/* One new query per (row, head) against the first n cached keys/values, no mask:
   out[b, h] = softmax(scale * q[b, h] . k[b, h / rep, :n]) @ v[b, h / rep, :n].
   q, out: [B, H, D] contiguous; caches [B, Hkv, S, D] contiguous; D a multiple of 16, at most 256. */
extern "C" int gigatok_decode_attention(const float* q, const float* kc, const float* vc, float* out, int64_t B,
                                        int64_t H, int64_t Hkv, int64_t S, int64_t D, int64_t n, float scale,
                                        int threads) {
  if (B < 1 || H < 1 || Hkv < 1 || H % Hkv || D % 16 || D > 256 || n < 1 || n > S) return 1;
  const int64_t tasks = B * H, chunks = D / 16, rep = H / Hkv;
#pragma omp parallel num_threads(threads)
  {
    static thread_local std::vector<float> scores;
    if ((int64_t)scores.size() < n + 16) scores.resize(n + 16);
    float* s = scores.data();
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    for (int64_t task = tasks * t / T; task < tasks * (t + 1) / T; ++task) {
      const int64_t b = task / H, h = task % H;
      const vec16u* qv = (const vec16u*)(q + task * D);
      const float* k = kc + ((b * Hkv + h / rep) * S) * D;
      const float* v = vc + ((b * Hkv + h / rep) * S) * D;
      vec16 qs[16];
      for (int64_t c = 0; c < chunks; ++c) qs[c] = qv[c] * scale;
      float best = -3.4e38f;
      for (int64_t l = 0; l < n; ++l) {
        const vec16u* kl = (const vec16u*)(k + l * D);
        vec16 acc = qs[0] * kl[0];
        for (int64_t c = 1; c < chunks; ++c) acc += qs[c] * kl[c];
        float dot = 0.0f;
        for (int j = 0; j < 16; ++j) dot += acc[j];
        s[l] = dot;
        best = dot > best ? dot : best;
      }
      for (int64_t l = n; l < ((n + 15) / 16) * 16; ++l) s[l] = -3.4e38f;  /* pad: exp gives 0 */
      vec16 total = (vec16){0};
      for (int64_t l = 0; l < n; l += 16) {
        vec16 e;
        __builtin_memcpy(&e, s + l, sizeof e);
        e = exp_nonpositive(e - best);
        __builtin_memcpy(s + l, &e, sizeof e);
        total += e;
      }
      float sum = 0.0f;
      for (int j = 0; j < 16; ++j) sum += total[j];
      vec16 acc[16];
      for (int64_t c = 0; c < chunks; ++c) acc[c] = (vec16){0};
      for (int64_t l = 0; l < n; ++l) {
        const vec16u* vl = (const vec16u*)(v + l * D);
        const float p = s[l];
        for (int64_t c = 0; c < chunks; ++c) acc[c] += p * vl[c];
      }
      vec16u* o = (vec16u*)(out + task * D);
      const float inv = 1.0f / sum;
      for (int64_t c = 0; c < chunks; ++c) o[c] = acc[c] * inv;
    }
  }
  return 0;
}

/* rows [0, M) of a row-major block V [M][CC] (CC a compile-time row stride, so one pointer with constant offsets)
   against one packed block of 16 outputs, as block_rows does for k-major activations. */
template <int M, int CC>
static inline void block_rows_rm(const float* __restrict v, const vec16u* __restrict w, float* __restrict y,
                                 int64_t N, int64_t col) {
  vec16 acc[M];
  for (int m = 0; m < M; ++m) acc[m] = (vec16){0};
  for (int64_t k = 0; k < CC; ++k) {
    const vec16 wk = w[k];
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) acc[m] += v[m * CC + k] * wk;
  }
  for (int m = 0; m < M; ++m) __builtin_memcpy(y + m * N + col, &acc[m], 64);
}

/* 3x3 convolution, stride 1, padding 1, of a channels-last x [N, H, W, C] into y [N, H, W, K] by Winograd F(2x2, 3x3):
   each 2x2 output tile is A^T [(G g G^T) . (B^T d B)] A for its 4x4 input patch d, so 16 products per tile and
   channel pair replace 36. U: the transformed weights, 16 components each packed like a [K, C] weight for
   gigatok_rows_gemm ([K/16][C][16]). A block of TB tiles along a row is transformed into a cache-resident buffer
   (vectorised over channels), multiplied, and transformed back. H and W even, K a multiple of 16. */
template <int CC>
static void winograd3x3(const float* x, const float* U, const float* bias, float* y, int64_t N, int64_t H, int64_t W,
                        int64_t K, int threads) {
  constexpr int64_t TB = ROWS_PER_PASS;
  const int64_t TH = H / 2, TW = W / 2, C = CC;
  const int64_t blocks_per_row = (TW + TB - 1) / TB, tasks = N * TH * blocks_per_row;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> V(16 * TB * C), Mb(16 * TB * K);
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    for (int64_t task = tasks * t / T; task < tasks * (t + 1) / T; ++task) {
      const int64_t n = task / (TH * blocks_per_row), rest = task % (TH * blocks_per_row);
      const int64_t th = rest / blocks_per_row, tw0 = (rest % blocks_per_row) * TB;
      const int64_t tiles = TW - tw0 < TB ? TW - tw0 : TB;
      for (int64_t i = 0; i < TB; ++i) {  /* input transform V[e][tile][c]; tiles past the row's end are zero */
        const int64_t r0 = 2 * th - 1, c0 = 2 * (tw0 + i) - 1;
        const float* src[4][4];
        for (int a = 0; a < 4; ++a)
          for (int b = 0; b < 4; ++b) {
            const int64_t r = r0 + a, cc = c0 + b;
            src[a][b] = (i < tiles && r >= 0 && r < H && cc >= 0 && cc < W) ? x + ((n * H + r) * W + cc) * C : nullptr;
          }
        for (int64_t c = 0; c < C; c += 16) {
          vec16 d[4][4], m[4][4];
          for (int a = 0; a < 4; ++a)
            for (int b = 0; b < 4; ++b) {
              if (src[a][b]) __builtin_memcpy(&d[a][b], src[a][b] + c, 64);
              else d[a][b] = (vec16){0};
            }
          for (int b = 0; b < 4; ++b) {  /* B^T d */
            m[0][b] = d[0][b] - d[2][b]; m[1][b] = d[1][b] + d[2][b];
            m[2][b] = d[2][b] - d[1][b]; m[3][b] = d[1][b] - d[3][b];
          }
          for (int a = 0; a < 4; ++a) {  /* (B^T d) B */
            const vec16 v0 = m[a][0] - m[a][2], v1 = m[a][1] + m[a][2];
            const vec16 v2 = m[a][2] - m[a][1], v3 = m[a][1] - m[a][3];
            float* out = V.data() + ((a * 4) * TB + i) * C + c;
            __builtin_memcpy(out, &v0, 64);
            __builtin_memcpy(out + TB * C, &v1, 64);
            __builtin_memcpy(out + 2 * TB * C, &v2, 64);
            __builtin_memcpy(out + 3 * TB * C, &v3, 64);
          }
        }
      }
      for (int e = 0; e < 16; ++e)  /* 16 products [TB, C] x [C, K] */
        for (int64_t kb = 0; kb < K / 16; ++kb)
          block_rows_rm<TB, CC>(V.data() + e * TB * C, (const vec16u*)(U + (e * K + kb * 16) * C),
                                Mb.data() + e * TB * K, K, kb * 16);
      for (int64_t i = 0; i < tiles; ++i) {  /* output transform A^T M A + bias, A^T = [[1,1,1,0],[0,1,-1,-1]] */
        const int64_t orow = 2 * th, ocol = 2 * (tw0 + i);
        for (int64_t kc = 0; kc < K; kc += 16) {
          vec16 m[16], bv, r[2][4];
          for (int e = 0; e < 16; ++e) __builtin_memcpy(&m[e], Mb.data() + (e * TB + i) * K + kc, 64);
          __builtin_memcpy(&bv, bias + kc, 64);
          for (int b = 0; b < 4; ++b) {
            r[0][b] = m[b] + m[4 + b] + m[8 + b];
            r[1][b] = m[4 + b] - m[8 + b] - m[12 + b];
          }
          for (int a = 0; a < 2; ++a) {
            const vec16 o0 = r[a][0] + r[a][1] + r[a][2] + bv;
            const vec16 o1 = r[a][1] - r[a][2] - r[a][3] + bv;
            __builtin_memcpy(y + ((n * H + orow + a) * W + ocol) * K + kc, &o0, 64);
            __builtin_memcpy(y + ((n * H + orow + a) * W + ocol + 1) * K + kc, &o1, 64);
          }
        }
      }
    }
  }
}

extern "C" int gigatok_winograd3x3(const float* x, const float* U, const float* bias, float* y, int64_t N, int64_t H,
                                   int64_t W, int64_t C, int64_t K, int threads) {
  if (N < 1 || H < 2 || W < 2 || H % 2 || W % 2 || K < 16 || K % 16) return 1;
  switch (C) {
    case 64: winograd3x3<64>(x, U, bias, y, N, H, W, K, threads); return 0;
    case 128: winograd3x3<128>(x, U, bias, y, N, H, W, K, threads); return 0;
    case 256: winograd3x3<256>(x, U, bias, y, N, H, W, K, threads); return 0;
    case 512: winograd3x3<512>(x, U, bias, y, N, H, W, K, threads); return 0;
  }
  return 1;
}
"""

_lock = threading.Lock()
_fn = None            # the loaded C functions (GEMM, attention), once built
_reason: Optional[str] = None  # why the kernel is unavailable, once known


def _cache_dir() -> Path:
    root = os.environ.get("GIGATOK_KERNEL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gigatok",
                                                                  "kernels")
    return Path(root)


def _cpu_signature() -> str:
    """The CPU's model and instruction-set flags: a library built with -march=native on one CPU must not be loaded
    on another (a shared home folder across cluster nodes would otherwise crash on an illegal instruction)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        import platform
        return platform.processor() + platform.machine()


def _compiler() -> Optional[str]:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def _build() -> tuple:
    """Compile (once per source, compiler and machine) and load the kernel library: its (GEMM, attention)
    functions; raises RuntimeError."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    march = os.environ.get("GIGATOK_KERNEL_MARCH") or "native"
    flags = ["-O3", f"-march={march}", "-fopenmp", "-shared", "-fPIC", "-std=c++14"]
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise RuntimeError(f"{cxx} --version failed: {err}") from err
    key = hashlib.sha256("\0".join([_SOURCE, cxx, version, " ".join(flags), _cpu_signature()]).encode())
    folder = _cache_dir() / key.hexdigest()[:16]
    library = folder / "rows_gemm.so"
    if not library.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:  # build beside the target, then rename: atomic
            source = Path(tmp) / "rows_gemm.cpp"
            source.write_text(_SOURCE)
            built = Path(tmp) / "rows_gemm.so"
            result = subprocess.run([cxx, *flags, str(source), "-o", str(built)], capture_output=True, text=True,
                                    timeout=300)
            if result.returncode != 0:
                raise RuntimeError(f"{cxx} failed: {(result.stderr or result.stdout).strip()[-400:]}")
            os.replace(built, library)
    lib = ctypes.CDLL(str(library))
    gemm, attention, wino = lib.gigatok_rows_gemm, lib.gigatok_decode_attention, lib.gigatok_winograd3x3
    gemm.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_int]
    attention.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 6 + [ctypes.c_float, ctypes.c_int]
    wino.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 5 + [ctypes.c_int]
    gemm.restype = attention.restype = wino.restype = ctypes.c_int
    return gemm, attention, wino


def _load():
    global _fn, _reason
    if _fn is not None or _reason is not None:
        return _fn
    with _lock:
        if _fn is None and _reason is None:
            if os.environ.get("GIGATOK_NATIVE_KERNELS", "1") == "0":
                _reason = "disabled by GIGATOK_NATIVE_KERNELS=0"
            elif not torch.backends.openmp.is_available():
                _reason = "this torch build has no OpenMP"
            else:
                try:
                    _fn = _build()
                except (RuntimeError, OSError, subprocess.SubprocessError) as err:
                    _reason = str(err)
    return _fn


_DISABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("cpu_kernels_disabled", default=False)


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Inside: :func:`available` is False, so callers take PyTorch's paths (e.g. to count FLOPs with
    ``FlopCounterMode``, which cannot see the native kernels' arithmetic)."""
    token = _DISABLED.set(True)
    try:
        yield
    finally:
        _DISABLED.reset(token)


def available() -> bool:
    """The kernel is built (or builds now) and loads on this machine (and :func:`disabled` is not in force)."""
    return not _DISABLED.get() and _load() is not None


def unavailable_reason() -> Optional[str]:
    """Why :func:`available` is False (None while it is True)."""
    _load()
    if _reason is None and _DISABLED.get():
        return "turned off inside cpu_kernels.disabled()"
    return _reason


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight [N, K]`` (float32) as the kernel reads it: ``[ceil(N / 16), K, 16]``, the last block zero-padded."""
    if weight.dim() != 2 or weight.dtype != torch.float32 or weight.device.type != "cpu":
        raise ValueError(f"pack_weight takes a 2-D float32 CPU weight, got {tuple(weight.shape)} {weight.dtype} "
                         f"on {weight.device}")
    n, k = weight.shape
    blocks = -(-n // BLOCK)
    padded = weight.new_zeros(blocks * BLOCK, k)
    padded[:n] = weight.detach()
    return padded.view(blocks, BLOCK, k).transpose(1, 2).contiguous()


def linear(x: torch.Tensor, packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """``x [M, K] @ W.T`` for a weight packed by :func:`pack_weight`; M in 1..16, float32 CPU, no autograd."""
    fns = _fn if _fn is not None else _load()
    if fns is None:
        raise RuntimeError(f"the native CPU kernel is unavailable: {_reason}")
    rows, k = x.shape
    if not 1 <= rows <= MAX_ROWS or packed.shape[1] != k or packed.shape[0] * BLOCK < out_features \
            or x.dtype != torch.float32 or packed.dtype != torch.float32:
        raise ValueError(f"linear: x {tuple(x.shape)} {x.dtype} does not fit packed weight {tuple(packed.shape)} "
                         f"{packed.dtype} with {out_features} outputs (rows must be 1..{MAX_ROWS})")
    if not x.is_contiguous():
        x = x.contiguous()
    y = torch.empty(rows, out_features, dtype=torch.float32)
    if fns[0](x.data_ptr(), packed.data_ptr(), y.data_ptr(), rows, k, out_features, torch.get_num_threads()):
        raise RuntimeError(f"native CPU kernel refused x {tuple(x.shape)} against {tuple(packed.shape)}")
    return y


def attention_supported(head_dim: int, dtype: torch.dtype) -> bool:
    """:func:`decode_attention` handles this head size and dtype (and the kernel is available)."""
    return dtype == torch.float32 and head_dim % BLOCK == 0 and head_dim <= 256 and available()


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, n: int) -> torch.Tensor:
    """Attention of one new query per row and head to the first ``n`` cached positions, without a mask.

    ``q`` [B, H, 1, D] (any strides), caches [B', Hkv, S, D] contiguous with B' >= B (the first B rows are used;
    H a multiple of Hkv: grouped queries share a cache head); returns [B, 1, H * D], the layout the output
    projection takes. Equals ``F.scaled_dot_product_attention(q, k[:, :, :n], v[:, :, :n])`` (scale 1/sqrt(D)) up to
    float rounding; float32 CPU, D a multiple of 16 up to 256.
    """
    fns = _fn if _fn is not None else _load()
    if fns is None:
        raise RuntimeError(f"the native CPU kernel is unavailable: {_reason}")
    b, h, one, d = q.shape
    bc, hkv, s, dc = k_cache.shape
    if one != 1 or dc != d or bc < b or v_cache.shape != k_cache.shape or h % hkv or not 1 <= n <= s \
            or not (k_cache.is_contiguous() and v_cache.is_contiguous()) \
            or not (q.dtype == k_cache.dtype == v_cache.dtype == torch.float32):
        raise ValueError(f"decode_attention: q {tuple(q.shape)} {q.dtype} does not fit caches {tuple(k_cache.shape)} "
                         f"{k_cache.dtype} with {n} filled positions")
    q = q.reshape(b, h, d)
    if not q.is_contiguous():
        q = q.contiguous()
    out = torch.empty(b, 1, h * d, dtype=torch.float32)
    if fns[1](q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), out.data_ptr(), b, h, hkv, s, d, n,
              1.0 / math.sqrt(d), torch.get_num_threads()):
        raise RuntimeError(f"native CPU kernel refused attention q {tuple(q.shape)} against {tuple(k_cache.shape)}")
    return out



WINOGRAD_CHANNELS = (64, 128, 256, 512)  # input channel counts the Winograd kernel is compiled for
_WINOGRAD_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 conv weight [K, C, 3, 3] transformed for :func:`winograd_conv3x3`: G g G^T per channel pair, 16
    components, each packed as :func:`pack_weight` packs a [K, C] weight. K must be a multiple of 16."""
    k, c = weight.shape[:2]
    if weight.shape[2:] != (3, 3) or k % BLOCK:
        raise ValueError(f"winograd_weight takes a [K, C, 3, 3] weight with K a multiple of {BLOCK}, got "
                         f"{tuple(weight.shape)}")
    g = torch.tensor(_WINOGRAD_G, dtype=torch.float64)
    u = torch.einsum("ai,kcij,bj->abkc", g, weight.detach().double(), g).float().reshape(16, k, c)
    return torch.stack([pack_weight(u[e]) for e in range(16)])  # [16, K/16, C, 16]


def winograd_conv3x3(x: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``F.conv2d(x, w, bias, padding=1)`` of a channels-last float32 ``x`` [N, C, H, W] (H, W even) by Winograd
    F(2x2, 3x3), with ``packed = winograd_weight(w)``; returns a channels-last tensor. Equal up to float rounding
    (the transforms add a few roundings; ~1e-6 relative)."""
    fns = _fn if _fn is not None else _load()
    if fns is None:
        raise RuntimeError(f"the native CPU kernel is unavailable: {_reason}")
    n, c, h, w = x.shape
    k = packed.shape[1] * BLOCK
    if packed.shape[0] != 16 or packed.shape[2] != c or c not in WINOGRAD_CHANNELS or h % 2 or w % 2 \
            or x.dtype != torch.float32:
        raise ValueError(f"winograd_conv3x3: x {tuple(x.shape)} {x.dtype} does not fit transformed weight "
                         f"{tuple(packed.shape)} (H and W must be even)")
    x = x.contiguous(memory_format=torch.channels_last)
    bias = torch.zeros(k) if bias is None else bias.detach().float().contiguous()
    y = torch.empty(n, k, h, w, memory_format=torch.channels_last)
    if fns[2](x.data_ptr(), packed.data_ptr(), bias.data_ptr(), y.data_ptr(), n, h, w, c, k, torch.get_num_threads()):
        raise RuntimeError(f"native CPU kernel refused a Winograd convolution of {tuple(x.shape)}")
    return y
