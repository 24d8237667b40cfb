"""Static-cache decoding (StaticDecoder) gives the eager generate()'s tokens: bit-identical uncompiled, and the
same greedy/sampled sequences compiled (CPU inductor here; CUDA graphs in the cuda-marked tests)."""
from __future__ import annotations

import shutil

import pytest
import torch

from autoregressive import generate
from autoregressive.models.fast_decode import accelerate
from autoregressive.models.generate import sample_generators
from autoregressive.models.static_decode import StaticDecoder
from utils import cpu_kernels

from testlib import tiny_gpt

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def no_tf32():
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before

CASES = [  # (cfg_scale, schedule, kwargs, sampling kwargs)
    (1.0, "constant", {}, dict(sample_logits=False)),
    (2.5, "step", {"window_start": 0.3}, dict(sample_logits=False)),
    (1.75, "linear", {}, dict(top_k=20, temperature=1.1)),
    (4.0, "rectangular", {"window_start": 0.2, "window_end": 0.7}, dict(top_p=0.9)),
]


def run_both(model, cond, case, decoder):
    scale, schedule, kw, extra = case
    common = dict(cfg_scale=scale, cfg_schedule=schedule, cfg_schedule_kwargs=kw, **extra)
    gens = lambda: sample_generators(3, range(len(cond)))  # noqa: E731
    eager = generate(model, cond, 16, generator=gens(), **common)
    static = decoder.generate(cond, 16, generator=gens(), **common)
    return eager, static


@pytest.mark.parametrize("case", CASES, ids=["greedy", "greedy-cfg-step", "topk-cfg", "topp-cfg-window"])
def test_static_equals_eager_bit_for_bit(case):
    model = tiny_gpt(seed=1)
    cond = torch.tensor([0, 3, 7, 9])
    with StaticDecoder(model, batch_size=4, compile="none") as decoder:
        for _ in range(2):  # the second call reuses the cache (zeroed, not reallocated)
            eager, static = run_both(model, cond, case, decoder)
            assert torch.equal(eager, static)


@pytest.mark.parametrize("case", CASES, ids=["greedy", "greedy-cfg-step", "topk-cfg", "topp-cfg-window"])
def test_cuda_graph_step_logic_equals_eager_on_cpu(case):
    """The step a CUDA graph captures (tables indexed by the position tensor, in-place outputs), run eagerly."""
    model = tiny_gpt(seed=3)
    cond = torch.tensor([1, 2, 8])
    with StaticDecoder(model, batch_size=3, compile="none") as decoder:
        decoder.compile_mode = "cudagraph"  # on CPU the captured step runs without capture
        for _ in range(2):
            eager, static = run_both(model, cond, case, decoder)
            assert torch.equal(eager, static)


def test_cpu_prepacked_weights_give_the_same_tokens_and_are_dropped_on_close():
    """oneDNN-prepacked products (rows >= 3) round differently from MKL's, but the seeded model's greedy and sampled
    sequences are the same; eager generate() on the packed model uses the packed copies too (identical tokens)."""
    model = tiny_gpt(seed=9)
    cond = torch.tensor([1, 5, 7])
    plain = [run_both(model, cond, case, StaticDecoder(model, 3, compile="none"))[0] for case in CASES]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with StaticDecoder(model, batch_size=3, compile="none", cpu_prepack=True) as decoder:
        for case, ref in zip(CASES, plain, strict=True):
            eager, static = run_both(model, cond, case, decoder)
            assert torch.equal(static, ref) and torch.equal(eager, static)
        assert all(m._packed is not None for m in linears)
        with torch.no_grad():
            x = torch.randn(3, 64)
            layer = model.layers[0].attention.wqkv
            packed_out = layer(x)
            assert torch.allclose(packed_out, x @ layer.weight.T, atol=1e-5)
            layer.weight.mul_(2.0)  # a changed weight is never multiplied through its stale packed copy
            assert torch.allclose(layer(x), 2 * packed_out, atol=1e-4)
            layer.weight.div_(2.0)
    assert all("_packed" not in vars(m) for m in linears)


@pytest.mark.skipif(not cpu_kernels.available(), reason="native CPU kernel unavailable here")
@pytest.mark.parametrize("attention", ["math", "fused"])
def test_native_kernels_give_the_same_tokens(attention, monkeypatch):
    """cpu_prepack='native': the project's packed products (and, with fused attention, its decode attention) round
    differently from PyTorch's, but the seeded model's greedy and sampled sequences are the same."""
    model = tiny_gpt(seed=11)
    cond = torch.tensor([1, 5, 7])
    plain = [run_both(model, cond, case, StaticDecoder(model, 3, compile="none"))[0] for case in CASES]
    calls = {"linear": 0, "attention": 0}
    for name, counter in (("linear", "linear"), ("decode_attention", "attention")):
        original = getattr(cpu_kernels, name)

        def counted(*args, _original=original, _counter=counter):
            calls[_counter] += 1
            return _original(*args)
        monkeypatch.setattr(cpu_kernels, name, counted)
    with StaticDecoder(model, batch_size=3, compile="none", attention=attention, cpu_prepack="native") as decoder:
        for case, ref in zip(CASES, plain, strict=True):
            eager, static = run_both(model, cond, case, decoder)  # eager generate() uses the packed copies too
            assert torch.equal(static, ref) and torch.equal(eager, ref)
        assert decoder.cpu_kernel == "native"
    assert calls["linear"] > 0 and (calls["attention"] > 0) == (attention == "fused")
    assert not any(getattr(layer.attention, "native_attention", False) for layer in model.layers)


def test_cpu_kernel_choice_is_checked_when_the_decoder_is_built(monkeypatch):
    model = tiny_gpt(seed=12)
    with pytest.raises(ValueError, match="cpu_prepack must be"):
        StaticDecoder(model, 2, compile="none", cpu_prepack="mkl")
    with pytest.raises(ValueError, match="cannot run inside torch.compile"):  # ctypes calls do not trace
        StaticDecoder(model, 2, compile="default", cpu_prepack="native")
    assert StaticDecoder(model, 2, compile="default", cpu_prepack="auto").cpu_kernel == "onednn"
    monkeypatch.setattr(cpu_kernels, "_fn", None)
    monkeypatch.setattr(cpu_kernels, "_reason", "no C++ compiler found (set CXX, or install g++)")
    with pytest.raises(RuntimeError, match="native CPU kernel is unavailable: no C\\+\\+ compiler"):
        StaticDecoder(model, 2, compile="none", cpu_prepack="native")
    with StaticDecoder(model, 2, compile="none", cpu_prepack="auto") as decoder:  # falls back to oneDNN
        decoder.generate(torch.tensor([1, 2]), 4)
        assert decoder.cpu_kernel == "onednn"
    with StaticDecoder(model.to(torch.bfloat16), 2, compile="none", cpu_prepack=True) as decoder:
        decoder.generate(torch.tensor([1, 2]), 4)
        assert decoder.cpu_kernel == "onednn"  # the native kernel is float32 only


def test_fused_attention_over_the_filled_prefix_gives_the_same_tokens_on_cpu():
    """attention='fused' on CPU reads only the filled part of the cache (valid_len); the seeded model's greedy and
    sampled sequences equal the eager ones, and the caches attend to everything again afterwards."""
    model = tiny_gpt(seed=10)
    cond = torch.tensor([2, 9])
    with StaticDecoder(model, batch_size=2, compile="none", attention="fused") as decoder:
        for case in CASES:
            eager, static = run_both(model, cond, case, decoder)
            assert torch.equal(eager, static)
        assert all(layer.attention.valid_len is None for layer in model.layers)


def test_prefix_attention_refuses_more_than_one_new_token():
    """valid_len drops the causal mask (one new token sees the whole prefix): a multi-token step would silently
    let earlier tokens see later ones, so it is refused by name."""
    model = tiny_gpt(seed=10)
    accelerate(model)
    model.setup_caches(max_batch_size=1, max_seq_length=model.block_size)
    model.layers[0].attention.valid_len = 3
    idx = torch.tensor([[1, 2]])
    with torch.no_grad(), pytest.raises(ValueError, match="valid_len is for one-token decode steps, got 2"):
        model(idx=idx, cond_idx=None, input_pos=torch.tensor([1, 2]))


def test_smaller_batch_is_padded_and_rows_stay_independent():
    model = tiny_gpt(seed=2)
    cond = torch.tensor([5, 1, 8])
    gens = sample_generators(11, range(3))
    ref = generate(model, cond, 16, cfg_scale=2.0, top_k=10, generator=gens)
    with StaticDecoder(model, batch_size=6, compile="none") as decoder:
        out = decoder.generate(cond, 16, cfg_scale=2.0, top_k=10, generator=sample_generators(11, range(3)))
        assert out.shape == (3, 16)
        assert torch.equal(out, ref)
        with pytest.raises(ValueError, match="exceed this decoder's batch_size 6"):
            decoder.generate(torch.arange(7) % 10, 16)
        with pytest.raises(ValueError, match="outside"):
            decoder.generate(torch.tensor([10]), 16)  # the null class is not a valid request


def test_cache_is_freed_on_close_and_state_dict_unchanged():
    model = tiny_gpt(seed=0)
    keys = list(model.state_dict())
    decoder = StaticDecoder(model, batch_size=2, compile="none")
    decoder.generate(torch.tensor([1, 2]), 8, sample_logits=False)
    assert model.layers[0].attention.kv_cache is not None
    assert list(model.state_dict()) == keys
    decoder.close()
    assert model.layers[0].attention.kv_cache is None


def test_bad_modes_rejected():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="compile must be one of"):
        StaticDecoder(model, 2, compile="fast")
    with pytest.raises(ValueError, match="needs a CUDA model"):
        StaticDecoder(model, 2, compile="reduce-overhead")
    with pytest.raises(ValueError, match="batch_size"):
        StaticDecoder(model, 0)
    with pytest.raises(ValueError, match="attention must be one of"):
        StaticDecoder(model, 2, attention="flash")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="cpu_prepack"):
            StaticDecoder(model.cuda(), 2, cpu_prepack=True)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_compiled_equals_eager_on_cpu():
    """Greedy and seeded sampled sequences of the inductor-compiled step equal the eager ones (fp32)."""
    torch._dynamo.reset()
    model = tiny_gpt(seed=4)
    cond = torch.tensor([2, 6])
    with StaticDecoder(model, batch_size=2, compile="default") as decoder:
        for case in (CASES[1], CASES[2]):
            eager, compiled = run_both(model, cond, case, decoder)
            assert torch.equal(eager, compiled)


# ----- CUDA (benchmarks/device_check.sh runs these on a GPU) --------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run benchmarks/device_check.sh)")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("case", CASES, ids=["greedy", "greedy-cfg-step", "topk-cfg", "topp-cfg-window"])
def test_cuda_graph_decoding_equals_eager_on_cuda(case, no_tf32):
    """fp32 with TF32 off: eager == static == CUDA-graph decoding on the GPU, and == the CPU eager tokens."""
    cpu_model = tiny_gpt(seed=5)
    model = tiny_gpt(seed=5).cuda()
    cond = torch.tensor([0, 4, 9, 2])
    with StaticDecoder(cpu_model, 4, compile="none") as cpu_static:
        cpu_eager, _ = run_both(cpu_model, cond, case, cpu_static)
    with StaticDecoder(model, batch_size=4, compile="none") as static:
        eager, static_out = run_both(model, cond.cuda(), case, static)
    with StaticDecoder(model, batch_size=4, compile="cudagraph") as graphs:
        _, graph_out = run_both(model, cond.cuda(), case, graphs)
        _, graph_again = run_both(model, cond.cuda(), case, graphs)  # replays the captured graph
    assert torch.equal(eager, static_out)
    assert torch.equal(eager, graph_out) and torch.equal(graph_out, graph_again)
    assert torch.equal(eager.cpu(), cpu_eager)


@pytest.mark.cuda
@cuda
def test_torch_compile_reduce_overhead_equals_eager_on_cuda(no_tf32):
    """torch.compile(mode='reduce-overhead') of the step (inductor kernels + CUDA graphs): same greedy and seeded
    sampled tokens as eager in fp32 (ties aside, which these seeded models do not have)."""
    torch._dynamo.reset()
    model = tiny_gpt(seed=7).cuda()
    cond = torch.tensor([3, 8]).cuda()
    with StaticDecoder(model, batch_size=2, compile="reduce-overhead") as compiled:
        for case in (CASES[1], CASES[2]):
            eager, out = run_both(model, cond, case, compiled)
            assert torch.equal(eager, out)


@pytest.mark.cuda
@cuda
def test_cuda_bf16_graph_decoding_equals_bf16_eager():
    """bf16: the captured graph runs eager's kernels, so the tokens are identical; the fused attention kernel rounds
    differently (its agreement with eager is printed: in bf16 one flipped token changes the rest of a sequence)."""
    model = tiny_gpt(seed=6).cuda().to(torch.bfloat16)
    cond = (torch.arange(8) % 10).cuda()
    eager = generate(model, cond, 16, cfg_scale=2.0, sample_logits=False)
    with StaticDecoder(model, batch_size=8, compile="cudagraph") as graphs:
        assert torch.equal(graphs.generate(cond, 16, cfg_scale=2.0, sample_logits=False), eager)
    with StaticDecoder(model, batch_size=8, compile="cudagraph", attention="fused") as fused:
        out = fused.generate(cond, 16, cfg_scale=2.0, sample_logits=False)
    print(f"bf16 greedy tokens equal between eager and fused-attention graph decoding: "
          f"{(out == eager).float().mean().item():.1%}")
    assert torch.equal(out[:, 0], eager[:, 0])  # the prefill is the same eager computation


@pytest.mark.cuda
@cuda
def test_fused_attention_graph_decoding_fp32_equals_eager(no_tf32):
    model = tiny_gpt(seed=8).cuda()
    cond = torch.tensor([0, 4, 9, 2]).cuda()
    with StaticDecoder(model, batch_size=4, compile="cudagraph", attention="fused") as fused:
        for case in CASES:
            eager, out = run_both(model, cond, case, fused)
            assert torch.equal(eager, out)
