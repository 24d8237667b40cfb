"""The native CPU kernels (utils/cpu_kernels.py): products and decode attention against PyTorch's, thread-count
independence, bad shapes refused, and the unavailable paths (disabled, no compiler) reported, not crashed."""
from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from utils import cpu_kernels

from testlib import REPO, child_env

needs_kernel = pytest.mark.skipif(not cpu_kernels.available(),
                                  reason=f"native kernel unavailable here: {cpu_kernels.unavailable_reason()}")


@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 3, 7, 8, 9, 15, 16])
@pytest.mark.parametrize("n_out,k", [(48, 64), (37, 129), (300, 17)])
def test_linear_matches_pytorch(rows, n_out, k):
    """Any row count 1..16, outputs not a multiple of 16 (zero-padded block), odd K."""
    w = torch.randn(n_out, k)
    x = torch.randn(rows, k)
    y = cpu_kernels.linear(x, cpu_kernels.pack_weight(w), n_out)
    assert y.shape == (rows, n_out)
    torch.testing.assert_close(y, x @ w.T, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_linear_takes_a_non_contiguous_input_and_does_not_depend_on_the_thread_count():
    w, x = torch.randn(200, 96), torch.randn(96, 16).T  # a transposed view
    packed = cpu_kernels.pack_weight(w)
    torch.set_num_threads(1)
    one = cpu_kernels.linear(x, packed, 200)
    torch.set_num_threads(2)
    two = cpu_kernels.linear(x, packed, 200)
    assert torch.equal(one, two)  # threads split outputs, never a sum
    torch.testing.assert_close(one, x @ w.T, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_linear_refuses_what_it_cannot_multiply():
    packed = cpu_kernels.pack_weight(torch.randn(32, 8))
    with pytest.raises(ValueError, match="rows must be 1..16"):
        cpu_kernels.linear(torch.randn(17, 8), packed, 32)
    with pytest.raises(ValueError, match=r"does not fit packed weight \(2, 8, 16\)"):
        cpu_kernels.linear(torch.randn(2, 9), packed, 32)
    with pytest.raises(ValueError, match="float32 CPU weight"):
        cpu_kernels.pack_weight(torch.randn(32, 8, dtype=torch.float64))


@needs_kernel
@pytest.mark.parametrize("b,h,hkv,s,d,n", [(3, 4, 4, 20, 64, 7), (2, 8, 2, 33, 32, 33), (1, 2, 1, 5, 16, 1),
                                           (4, 3, 3, 300, 128, 257)])
def test_decode_attention_matches_sdpa(b, h, hkv, s, d, n):
    """Grouped heads share a cache head; only the first b rows and n positions of the caches are read."""
    q = torch.randn(b, 1, h, d).transpose(1, 2) * 3  # large logits: the exp's range reduction is exercised
    k, v = torch.randn(b + 1, hkv, s, d), torch.randn(b + 1, hkv, s, d)
    out = cpu_kernels.decode_attention(q, k, v, n)
    rep = h // hkv
    ref = F.scaled_dot_product_attention(q, k[:b, :, :n].repeat_interleave(rep, 1),
                                         v[:b, :, :n].repeat_interleave(rep, 1))
    assert out.shape == (b, 1, h * d)
    torch.testing.assert_close(out, ref.transpose(1, 2).reshape(b, 1, h * d), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_decode_attention_refuses_bad_shapes():
    k = torch.zeros(2, 2, 8, 16)
    with pytest.raises(ValueError, match="with 9 filled positions"):
        cpu_kernels.decode_attention(torch.zeros(2, 2, 1, 16), k, k, 9)
    with pytest.raises(ValueError, match="does not fit caches"):
        cpu_kernels.decode_attention(torch.zeros(2, 3, 1, 16), k, k, 4)  # 3 heads over 2 cache heads
    assert not cpu_kernels.attention_supported(24, torch.float32)
    assert not cpu_kernels.attention_supported(64, torch.bfloat16)


def _probe(env_overrides: dict, tmp_path) -> dict:
    """available() / unavailable_reason() in a fresh process (the result is cached per process)."""
    code = ("import json; from utils import cpu_kernels as c; "
            "print(json.dumps([c.available(), c.unavailable_reason()]))")
    env = child_env(GIGATOK_KERNEL_CACHE=str(tmp_path / "kernels"), **env_overrides)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    ok, reason = json.loads(out.stdout.strip().splitlines()[-1])
    return {"ok": ok, "reason": reason}


def test_disabled_or_uncompilable_kernel_is_reported_not_raised(tmp_path):
    assert _probe({"GIGATOK_NATIVE_KERNELS": "0"}, tmp_path) == {"ok": False,
                                                                  "reason": "disabled by GIGATOK_NATIVE_KERNELS=0"}
    failed = _probe({"CXX": "/bin/false"}, tmp_path)
    assert not failed["ok"] and "/bin/false" in failed["reason"]
    assert not any((tmp_path / "kernels").rglob("*.so"))  # nothing half-built left as a library


@needs_kernel
def test_kernel_is_built_once_into_the_cache_folder(tmp_path):
    assert _probe({}, tmp_path) == {"ok": True, "reason": None}
    built = list((tmp_path / "kernels").rglob("rows_gemm.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    assert _probe({}, tmp_path)["ok"] and built[0].stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_kernel_builds_wherever_a_compiler_is_found():
    """Not a silent fallback: on a machine with a C++ compiler and an OpenMP torch (CI included) the kernel must
    build; without one, the reason names the missing compiler."""
    if cpu_kernels._compiler() is not None and torch.backends.openmp.is_available():
        assert cpu_kernels.available(), cpu_kernels.unavailable_reason()
    else:
        assert "compiler" in (cpu_kernels.unavailable_reason() or "") or "OpenMP" in cpu_kernels.unavailable_reason()


@needs_kernel
def test_kernels_read_tensors_that_are_not_64_byte_aligned():
    """Views one float into their storage: the kernels must not assume aligned vector loads (a crash otherwise)."""
    w = torch.randn(32, 24)
    packed = cpu_kernels.pack_weight(w)
    shifted = torch.empty(packed.numel() + 1)[1:].view_as(packed).copy_(packed)
    x = torch.empty(3 * 24 + 1)[1:].view(3, 24).copy_(torch.randn(3, 24))
    torch.testing.assert_close(cpu_kernels.linear(x, shifted, 32), x @ w.T, rtol=1e-5, atol=1e-5)
    b, h, s, d = 2, 3, 9, 32
    q = torch.empty(b * h * d + 1)[1:].view(b, h, 1, d).copy_(torch.randn(b, h, 1, d))
    k = torch.empty(b * h * s * d + 1)[1:].view(b, h, s, d).copy_(torch.randn(b, h, s, d))
    v = torch.empty(b * h * s * d + 1)[1:].view(b, h, s, d).copy_(torch.randn(b, h, s, d))
    ref = F.scaled_dot_product_attention(q, k[:, :, :5], v[:, :, :5]).transpose(1, 2).reshape(b, 1, h * d)
    torch.testing.assert_close(cpu_kernels.decode_attention(q, k, v, 5), ref, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_a_library_built_for_another_cpu_is_not_reused(tmp_path, monkeypatch):
    """-march=native code from one CPU may crash on another (shared home folders on clusters): the CPU's model and
    flags are part of the cache key."""
    monkeypatch.setenv("GIGATOK_KERNEL_CACHE", str(tmp_path))
    for cpu in ("flags: avx2", "flags: avx2 avx512f"):
        monkeypatch.setattr(cpu_kernels, "_cpu_signature", lambda cpu=cpu: cpu)
        cpu_kernels._build()
    assert len(list(tmp_path.rglob("rows_gemm.so"))) == 2


@needs_kernel
@pytest.mark.parametrize("c", cpu_kernels.WINOGRAD_CHANNELS)
def test_winograd_conv3x3_matches_conv2d(c):
    """Borders (zero padding), a row of tiles that ends inside a block, every compiled channel count."""
    k = 32
    x = torch.randn(2, c, 6, 38).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(k, c, 3, 3) / (3 * c ** 0.5), torch.randn(k)
    y = cpu_kernels.winograd_conv3x3(x, cpu_kernels.winograd_weight(w), b)
    torch.testing.assert_close(y, F.conv2d(x, w, b, padding=1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cpu_kernels.winograd_conv3x3(x, cpu_kernels.winograd_weight(w), None),
                               F.conv2d(x, w, None, padding=1), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_winograd_refuses_what_it_cannot_convolve():
    packed = cpu_kernels.winograd_weight(torch.randn(16, 64, 3, 3))
    with pytest.raises(ValueError, match="H and W must be even"):
        cpu_kernels.winograd_conv3x3(torch.randn(1, 64, 5, 6), packed, None)
    with pytest.raises(ValueError, match="K a multiple of 16"):
        cpu_kernels.winograd_weight(torch.randn(20, 64, 3, 3))
    with pytest.raises(ValueError, match="does not fit"):
        cpu_kernels.winograd_conv3x3(torch.randn(1, 32, 4, 4), cpu_kernels.winograd_weight(torch.randn(16, 32, 3, 3)),
                                     None)


@needs_kernel
def test_disabled_hides_the_kernels_so_flop_counters_see_the_plain_paths():
    from benchmarks.bench_tokenizer import count_flops
    from tokenizer.models.accelerate import WinogradConv3x3

    conv = WinogradConv3x3(64, 16).eval()
    x = torch.randn(1, 64, 64, 64).contiguous(memory_format=torch.channels_last)
    with cpu_kernels.disabled():
        assert not cpu_kernels.available()
        assert cpu_kernels.unavailable_reason() == "turned off inside cpu_kernels.disabled()"
    assert cpu_kernels.available() and cpu_kernels.unavailable_reason() is None
    with torch.no_grad():
        assert count_flops(lambda: conv(x)) == 2 * 16 * 64 * 9 * 64 * 64  # the direct convolution's count


@needs_kernel
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 instruction-set levels")
@pytest.mark.parametrize("march", ["x86-64-v3", "x86-64"])
def test_kernels_built_for_older_instruction_sets_compute_the_same(tmp_path, march):
    """This machine builds for AVX-512 (16 rows per pass); users' AVX2 or SSE machines (and NEON, 128-bit like SSE)
    get 8 rows per pass and narrower vector code. Rebuild with GIGATOK_KERNEL_MARCH and rerun the numeric tests."""
    env = child_env(GIGATOK_KERNEL_CACHE=str(tmp_path / "kernels"), GIGATOK_KERNEL_MARCH=march)
    selected = "matches or aligned or thread_count or refuses"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", selected, __file__],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "skipped" not in summary, summary
    assert len(list((tmp_path / "kernels").rglob("rows_gemm.so"))) == 1  # built for that level, not this CPU's
