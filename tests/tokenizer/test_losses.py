"""Training losses (tokenizer/losses): every term against a hand computation on fixed small tensors, the schedule
of the released configs' loss settings, the discriminators, DiffAug, the semantic teacher and the NaN guard.

Offline: LPIPS uses a random VGG trunk (the calibrated v0.1 heads ship with the lpips package), DINO backbones are
random (``pretrained=False``) or tiny stand-ins.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tokenizer.config import LOSS_PARAM_KEYS, model_args, read_tokenizer_config
from tokenizer.losses import SemanticTeacher, VQLoss, build_loss
from tokenizer.losses import adversarial as adv
from tokenizer.losses import perceptual as perceptual_mod
from tokenizer.losses.diffaug import DiffAug
from tokenizer.losses.discriminators import DinoDiscriminator, NLayerDiscriminator, make_dino_head
from tokenizer.losses.semantic import alignment_loss
from tokenizer.models.quantizer import VectorQuantizer
from tokenizer.models.vq_model import MODEL_CLASSES
from utils.config import to_plain

from testlib import CONFIGS

SS256_PARAMS = dict(to_plain(read_tokenizer_config(CONFIGS / "VQ_SS256.yaml").loss.params))


# ----- shared fixtures ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lpips_loss():
    torch.manual_seed(0)
    return perceptual_mod.LPIPSLoss(pretrained=False)


@pytest.fixture
def reuse_lpips(monkeypatch, lpips_loss):
    """Make VQLoss reuse the module-level LPIPS instance (building VGG16 takes seconds on CPU)."""
    def factory(pretrained=True, weights_path=None, train_dropout=True):
        lpips_loss.train_dropout = train_dropout
        return lpips_loss
    monkeypatch.setattr(perceptual_mod, "LPIPSLoss", factory)
    return lpips_loss


def make_loss(**overrides) -> VQLoss:
    params = {**SS256_PARAMS, "perceptual_weight": 0.0, "disc_dim": 8, **overrides}
    return VQLoss(params, pretrained=False)


def fake_outputs(b=2, size=16, seed=0, direct=True, fea=True, inner=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    dec = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    dir_dec = torch.rand(b, 3, size, size, generator=g) * 2 - 1 if direct else None
    q = [torch.tensor(0.11), torch.tensor(0.025), torch.tensor(-0.004), 0.37]
    f = torch.tensor(0.8) if fea else 0
    out = [[dec, dir_dec], [q, f]]
    if inner is not None:
        out.append(inner)
    return x, out


# ----- step convention and config keys ------------------------------------------------------------------------------

def test_step_convention_is_zero_based_completed_iterations():
    loss = make_loss()  # disc_start 20000, aux_loss_end 15000
    assert loss.aux_active(14998) and not loss.aux_active(14999)  # t = 14999 < 15000, t = 15000
    assert not loss.disc_active(19998) and loss.disc_active(19999)  # t = 19999, t = 20000
    assert loss.disc_weight_at(19998) == 0.0 and loss.disc_weight_at(19999) == 0.5
    assert make_loss(aux_loss_end=0).aux_active(0) is False


def test_config_keys_and_unknown_param():
    assert {"teacher_image_size", "lpips_train_dropout", "disc_adaptive_weight", "lecam_loss_weight"} <= LOSS_PARAM_KEYS
    with pytest.raises(ValueError, match=r"unknown key\(s\) in loss.params: \['not_a_key'\]"):
        make_loss(not_a_key=1)
    with pytest.raises(ValueError, match="reconstruction_loss"):
        make_loss(reconstruction_loss="l3")
    with pytest.raises(ValueError, match="loss.params.disc_weight must be float, got 'strong'"):
        make_loss(disc_weight="strong")


# ----- pixel / quantiser / feature terms ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["l2", "l1"])
def test_pixel_and_quantiser_terms(kind):
    loss = make_loss(reconstruction_loss=kind, reconstruction_weight=2.0, codebook_weight=7.0).train()
    x, out = fake_outputs()
    dec, dir_dec = out[0]
    err = (lambda a, b: ((a - b) ** 2).mean()) if kind == "l2" else (lambda a, b: (a - b).abs().mean())
    total, logs = loss.generator_loss(out, x, step=0)  # t = 1: aux on, disc off
    rec, rec_d = err(x, dec).item(), err(x, dir_dec).item()
    cb = 0.11 + 0.025 - 0.004  # codebook_weight (7.0) is NOT applied
    assert logs["rec_loss"] == pytest.approx(2 * rec, rel=1e-6)
    assert logs["direct_rec_loss"] == pytest.approx(2 * rec_d, rel=1e-6)
    assert logs["feature_rec_loss"] == pytest.approx(0.8)
    assert logs["codebook_usage"] == pytest.approx(0.37)
    assert total.item() == pytest.approx(2 * (rec + rec_d) + cb + 0.8, rel=1e-6)
    # after aux_loss_end: no direct / feature terms
    total, logs = loss.generator_loss(out, x, step=14999)
    assert logs["direct_rec_loss"] == 0 and logs["feature_rec_loss"] == 0
    assert total.item() == pytest.approx(2 * rec + cb, rel=1e-6)


def test_direct_terms_need_shortcut_reconstruction():
    loss = make_loss()
    x, out = fake_outputs(direct=False)
    with pytest.raises(ValueError, match="rec_loss=loss.aux_active"):
        loss.generator_loss(out, x, step=0)
    assert loss.generator_loss(out, x, step=15000)[1]["direct_rec_loss"] == 0  # fine once aux is over


def test_entropy_term_from_quantizer_and_entropy_loss_end():
    torch.manual_seed(0)
    vq = VectorQuantizer(64, 8, beta=0.25, entropy_loss_ratio=0.005, l2_norm=True).train()
    z = torch.randn(2, 8, 1, 16)
    _, q, _ = vq(z)
    # hand computation: affinity = -squared distance between unit vectors, temperature 0.01
    zf = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, 8), dim=-1)
    e = F.normalize(vq.embedding.weight, dim=-1)
    d = (zf[:, None, :] - e[None]).pow(2).sum(-1)
    prob = torch.softmax(-d / 0.01, dim=-1)
    logp = torch.log_softmax(-d / 0.01, dim=-1)
    h_sample = -(prob * logp).sum(-1).mean()
    pbar = prob.mean(0)
    h_avg = -(pbar * torch.log(pbar + 1e-5)).sum()
    assert q[2].item() == pytest.approx(0.005 * (h_sample - h_avg).item(), rel=1e-4, abs=1e-7)
    k = d.argmin(1)
    assert q[0].item() == pytest.approx((e[k] - zf).pow(2).mean().item(), rel=1e-5)
    assert q[1].item() == pytest.approx(0.25 * (e[k] - zf).pow(2).mean().item(), rel=1e-5)

    x = torch.zeros(2, 3, 8, 8)
    out = [[x + 0.1, None], [q, 0]]
    loss = make_loss(entropy_loss_end=10, use_direct_rec_loss=False)
    before = loss.generator_loss(out, x, step=8)[1]   # t = 9 < 10
    after = loss.generator_loss(out, x, step=9)[1]    # t = 10
    assert before["entropy_loss"] == pytest.approx(q[2].item())
    assert after["entropy_loss"] == 0
    assert before["generator_loss"] - after["generator_loss"] == pytest.approx(q[2].item(), abs=1e-6)


# ----- LPIPS -------------------------------------------------------------------------------------------------------

def manual_lpips(net, x, y, dropout=False):
    """LPIPS written out on the lpips module's own weights (dropout draws in the same order as lpips)."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    hx, hy = (x - shift) / scale, (y - shift) / scale
    vgg = net.net
    diffs = []
    for sl in [vgg.slice1, vgg.slice2, vgg.slice3, vgg.slice4, vgg.slice5]:
        hx, hy = sl(hx), sl(hy)
        nx = hx / (hx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = hy / (hy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        diffs.append((nx - ny) ** 2)
    total = 0
    for k, diff in enumerate(diffs):
        if dropout:
            diff = F.dropout(diff, 0.5, training=True)
        total = total + F.conv2d(diff, net.lins[k].model[1].weight).mean(dim=(2, 3), keepdim=True)
    return total


def test_lpips_matches_manual_formula(lpips_loss):
    torch.manual_seed(1)
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    lpips_loss.train_dropout = True
    lpips_loss.eval()
    got = lpips_loss(x, y)
    assert got.shape == (2, 1, 1, 1)
    torch.testing.assert_close(got, manual_lpips(lpips_loss.net, x, y), rtol=1e-5, atol=1e-7)
    # the heads are the calibrated v0.1 weights (non-negative 1x1 convs), bundled with the package
    assert all((lin.model[1].weight >= 0).all() for lin in lpips_loss.net.lins)
    assert not any(p.requires_grad for p in lpips_loss.parameters())
    # gradients reach the reconstruction
    y.requires_grad_(True)
    lpips_loss(x, y).mean().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_lpips_train_mode_dropout_quirk(lpips_loss):
    torch.manual_seed(1)
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    lpips_loss.train_dropout = True
    lpips_loss.train()
    assert lpips_loss.net.lins[0].model[0].training  # Dropout(0.5) active, as the original
    torch.manual_seed(5)
    got = lpips_loss(x, y)
    torch.manual_seed(5)
    want = manual_lpips(lpips_loss.net, x, y, dropout=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    lpips_loss.train_dropout = False
    lpips_loss.train()
    assert not lpips_loss.net.training
    torch.testing.assert_close(lpips_loss(x, y), manual_lpips(lpips_loss.net, x, y), rtol=1e-5, atol=1e-7)
    lpips_loss.train_dropout = True
    lpips_loss.eval()


# ----- adversarial losses ------------------------------------------------------------------------------------------

LR = [0.5, -2.0, 1.5, 0.0]
LF = [-0.3, 1.2, -1.5, 0.7]


def _mean(v):
    return sum(v) / len(v)


def _softplus(v):
    return math.log1p(math.exp(v))


def test_adversarial_loss_formulas():
    lr, lf = torch.tensor(LR), torch.tensor(LF)
    hinge = 0.5 * (_mean([max(0, 1 - v) for v in LR]) + _mean([max(0, 1 + v) for v in LF]))
    vanilla = 0.5 * (_mean([_softplus(-v) for v in LR]) + _mean([_softplus(v) for v in LF]))
    assert adv.hinge_d_loss(lr, lf).item() == pytest.approx(hinge, rel=1e-6)
    assert adv.vanilla_d_loss(lr, lf).item() == pytest.approx(vanilla, rel=1e-6)
    assert adv.non_saturating_d_loss(lr, lf).item() == pytest.approx(vanilla, rel=1e-6)
    assert adv.hinge_g_loss(lf).item() == pytest.approx(-_mean(LF), rel=1e-6)
    assert adv.non_saturating_g_loss(lf).item() == pytest.approx(_mean([_softplus(-v) for v in LF]), rel=1e-6)
    with pytest.raises(ValueError, match="r3gan"):
        adv.get_d_loss("r3gan")


class ConstDisc(nn.Module):
    """Deterministic stand-in: logits = per-pixel mean over channels, times a trainable scale."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return self.scale * x.mean(1, keepdim=True)


@pytest.mark.parametrize("disc_loss", ["hinge", "vanilla", "non-saturating"])
def test_discriminator_loss_assembly(disc_loss):
    loss = make_loss(disc_loss=disc_loss, disc_start=3)
    loss.discriminator = ConstDisc()
    x, out = fake_outputs()
    dec, dir_dec = out[0]
    assert loss.discriminator_loss(x, dec, step=1) == (None, {})  # t = 2 < 3
    got, logs = loss.discriminator_loss(x, dec, step=2, direct_reconstructions=dir_dec)  # t = 3, aux on
    lr, lf, lfd = x.mean(1, keepdim=True), dec.mean(1, keepdim=True), dir_dec.mean(1, keepdim=True)
    fn = adv.get_d_loss(disc_loss)
    want = 0.5 * fn(lr, lf) + 0.5 * fn(lr, lfd)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert logs["logits_real"] == pytest.approx(lr.mean().item(), rel=1e-6)
    assert logs["d_d_adversarial_loss"] == pytest.approx(0.5 * fn(lr, lfd).item(), rel=1e-6)
    got.backward()
    assert loss.discriminator.scale.grad is not None
    # inputs are detached: no gradient to the generator
    dec2 = dec.clone().requires_grad_(True)
    loss.discriminator_loss(x, dec2, step=2)[0].backward()
    assert dec2.grad is None


def test_lecam_regulariser():
    loss = make_loss(disc_start=1, lecam=True, use_direct_rec_loss=False)  # released value weight 0.001
    loss.discriminator = ConstDisc()
    ema = loss.lecam_ema
    assert (ema.real, ema.fake, ema.start) == (1000.0, 1000.0, 1001)
    x, out = fake_outputs()
    dec = out[0][0]
    lr, lf = x.mean(1, keepdim=True), dec.mean(1, keepdim=True)
    # t = 1 = disc_start: the EMA copies the batch means, but no regulariser yet (t > disc_start needed)
    got, logs = loss.discriminator_loss(x, dec, step=0)
    assert ema.real == pytest.approx(lr.mean().item()) and ema.fake == pytest.approx(lf.mean().item())
    assert logs["lecam_loss"] == 0
    # t = 2: copy again (t < disc_start + 1000), then reg = mean relu(l_r - ema_f)^2 + mean relu(ema_r - l_f)^2
    got, logs = loss.discriminator_loss(x, dec, step=1)
    reg = F.relu(lr - lf.mean()).pow(2).mean() + F.relu(lr.mean() - lf).pow(2).mean()
    assert logs["lecam_loss"] == pytest.approx(0.001 * reg.item(), rel=1e-5)
    assert got.item() == pytest.approx(0.5 * adv.hinge_d_loss(lr, lf).item() + 0.001 * reg.item(), rel=1e-5)
    # from t >= disc_start + 1000 the decay 0.99 applies
    r0, f0 = ema.real, ema.fake
    ema.update(5.0, -5.0, t=1001)
    assert ema.real == pytest.approx(0.99 * r0 + 0.01 * 5.0) and ema.fake == pytest.approx(0.99 * f0 - 0.05)


def test_adaptive_weight_formula_and_use():
    torch.manual_seed(0)
    last = nn.Parameter(torch.randn(4, 3))
    inp = torch.randn(5, 3)
    h = inp @ last.t()
    nll, g = h.pow(2).mean(), -h.sum() * 0.01
    gn = torch.autograd.grad(nll, last, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g, last, retain_graph=True)[0].norm()
    assert adv.adaptive_weight(nll, g, last).item() == pytest.approx((gn / (gg + 1e-4)).clamp(0, 1e4).item(), rel=1e-5)

    # inside generator_loss: lambda * disc_weight * g_adv, with nll = w_rec (rec + rec_d) + w_p p
    loss = make_loss(disc_start=1, disc_adaptive_weight=True, use_direct_rec_loss=False)
    loss.discriminator = ConstDisc()
    w = nn.Parameter(torch.tensor(0.9))
    x, out = fake_outputs()
    out[0][0] = out[0][0] * w
    with pytest.raises(ValueError, match="last_layer"):
        loss.generator_loss(out, x, step=0)
    total, logs = loss.generator_loss(out, x, step=0, last_layer=w)
    dec = out[0][0]
    rec = F.mse_loss(x, dec)
    g_adv = -dec.mean(1, keepdim=True).mean()
    lam = adv.adaptive_weight(rec, g_adv, w).item()
    assert logs["disc_adaptive_weight"] == pytest.approx(lam, rel=1e-5)
    assert logs["generator_adv_loss"] == pytest.approx(lam * 0.5 * g_adv.item(), rel=1e-5)
    assert make_loss().generator_loss(fake_outputs()[1], fake_outputs()[0], 0)[1]["disc_adaptive_weight"] == 1.0


# ----- semantic regularisation -------------------------------------------------------------------------------------

def test_alignment_loss_hand_computation_and_fp16_safety():
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    want = 0.0
    for b in range(2):
        for n in range(4):
            want += -float(torch.dot(s[b, n], t[b, n]) / (s[b, n].norm() * t[b, n].norm()))
    assert alignment_loss(s, t).item() == pytest.approx(want / 8, rel=1e-5)
    # fp16 features whose squared norm overflows fp16 (max 65504) still give a finite fp32 loss, also under autocast
    big = (torch.ones(2, 4, 6) * 3e4).half()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        val = alignment_loss(big, big)
    assert val.dtype == torch.float32 and val.item() == pytest.approx(-1.0, abs=1e-5)
    with pytest.raises(ValueError, match="teacher_image_size"):
        alignment_loss(torch.zeros(2, 64, 6), torch.zeros(2, 256, 6))


@pytest.fixture(scope="module")
def small_teacher():
    torch.manual_seed(0)
    return SemanticTeacher("dinov2-vit-s", pretrained=False, image_size=112)


def test_semantic_teacher(small_teacher):
    t = small_teacher
    assert not any(p.requires_grad for p in t.parameters())
    t.train()
    assert not t.training and not t.encoder.training
    assert t.encoder.pos_embed.shape == (1, 1 + 8 * 8, 384)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    feats = t(x)
    assert feats.shape == (2, 64, 384) and feats.dtype == torch.float32
    # preprocessing: ImageNet-normalise (from [-1,1]) THEN bicubic resize (REPA order)
    m = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    s = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    want = F.interpolate(((x + 1) / 2 - m) / s, size=(112, 112), mode="bicubic", align_corners=False)
    torch.testing.assert_close(t.preprocess(x), want)
    # the output is the final-norm patch tokens (CLS dropped)
    enc = t.encoder
    torch.testing.assert_close(feats, enc.forward_features(want)[:, 1:])
    with pytest.raises(ValueError, match="multiple of 14"):
        SemanticTeacher("dinov2-vit-s", pretrained=False, image_size=100)


def test_proj_term_in_generator_loss(small_teacher):
    inner = torch.randn(2, 64, 384, requires_grad=True)
    x, out = fake_outputs(size=32, inner=inner)
    loss = VQLoss({**SS256_PARAMS, "perceptual_weight": 0.0, "disc_dim": 8}, distill_loss=True,
                  teacher=small_teacher, pretrained=False)
    total, logs = loss.generator_loss(out, x, step=20000)
    proj = alignment_loss(inner, small_teacher(x)).item()
    assert logs["proj_loss"] == pytest.approx(proj, rel=1e-5)
    assert logs["proj_loss_weighted"] == pytest.approx(0.5 * proj, rel=1e-5)
    total.backward()
    assert inner.grad is not None
    # grid mismatch: 16x16 student vs 8x8 teacher
    x, out = fake_outputs(size=32, inner=torch.randn(2, 256, 384))
    with pytest.raises(ValueError, match="teacher_image_size"):
        loss.generator_loss(out, x, step=0)
    with pytest.raises(ValueError, match="needs a teacher"):
        VQLoss(SS256_PARAMS, distill_loss=True, teacher=None, pretrained=False)


# ----- full assembly with VQ_SS256's loss settings ------------------------------------------------------------------

class StubTeacher(nn.Module):
    def forward(self, x):
        b = x.shape[0]
        return torch.linspace(-1, 1, 16 * 12).view(1, 16, 12).expand(b, -1, -1) + x.mean()


@pytest.mark.parametrize("step, aux, disc", [(14998, True, False), (14999, False, False), (19999, False, True)])
def test_full_generator_loss_released_ss256_schedule(reuse_lpips, step, aux, disc):
    params = dict(SS256_PARAMS, lpips_train_dropout=False)  # deterministic LPIPS for the hand sum
    torch.manual_seed(0)
    loss = VQLoss(params, distill_loss=True, teacher=StubTeacher(), pretrained=False).train()
    assert isinstance(loss.discriminator, NLayerDiscriminator) and loss.perceptual is reuse_lpips
    inner = torch.randn(2, 16, 12)
    x, out = fake_outputs(size=32, inner=inner, direct=aux, fea=aux)
    dec, dir_dec = out[0]
    total, logs = loss.generator_loss(out, x, step=step)

    def lp(a, b):
        return reuse_lpips.net(a, b).mean().item()

    want = F.mse_loss(x, dec).item() + lp(x, dec) + (0.11 + 0.025 - 0.004)
    if aux:
        want += F.mse_loss(x, dir_dec).item() + lp(x, dir_dec) + 0.8
    proj = alignment_loss(inner, loss.teacher(x)).item()
    want += 0.5 * proj
    if disc:
        want += 0.5 * -loss.discriminator(dec).mean().item()   # train-mode BN: batch statistics, deterministic
    assert total.item() == pytest.approx(want, rel=1e-5)
    assert (logs["direct_rec_loss"] != 0) == aux and (logs["direct_p_loss"] != 0) == aux
    assert (logs["feature_rec_loss"] != 0) == aux
    assert (logs["generator_adv_loss"] != 0) == disc and logs["disc_weight"] == (0.5 if disc else 0.0)
    assert logs["direct_generator_adv_loss"] == 0 and logs["entropy_loss"] == pytest.approx(-0.004)
    assert logs["generator_loss"] == pytest.approx(total.item(), rel=1e-6)
    assert set(logs) >= {"rec_loss", "perceptual_loss", "vq_loss", "commit_loss", "codebook_usage", "proj_loss"}
    d_loss, dlogs = loss.discriminator_loss(x, dec, step, direct_reconstructions=dir_dec)
    assert (d_loss is not None) == disc
    if disc:  # L_D = 0.25 (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))
        lr, lf = loss.discriminator(x), loss.discriminator(dec)
        want_d = 0.25 * (F.relu(1 - lr).mean() + F.relu(1 + lf).mean()).item()
        assert d_loss.item() == pytest.approx(want_d, rel=1e-5)


def test_nan_raises_floating_point_error_naming_terms():
    loss = make_loss()
    x, out = fake_outputs()
    out[0][0] = out[0][0].clone()
    out[0][0][0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError) as err:
        loss.generator_loss(out, x, step=3)
    msg = str(err.value)
    for name in ("rec_loss", "perceptual_loss", "vq_loss", "commit_loss", "proj_loss", "generator_adv_loss",
                 "step 3", "reconstructions contain NaN"):
        assert name in msg
    x, out = fake_outputs()
    out[1][0][1] = torch.tensor(float("inf"))
    with pytest.raises(FloatingPointError, match="commit_loss: inf"):
        loss.generator_loss(out, x, step=3)


# ----- discriminators ----------------------------------------------------------------------------------------------

def test_patchgan_layout_count_and_init():
    torch.manual_seed(0)
    d = NLayerDiscriminator(ndf=64, n_layers=3, kw=4)
    assert sum(p.numel() for p in d.parameters()) == 2_765_633
    convs = {0: (3, 64, 2, True), 2: (64, 128, 2, False), 5: (128, 256, 2, False), 8: (256, 512, 1, False),
             11: (512, 1, 1, True)}
    for i, (cin, cout, stride, bias) in convs.items():
        m = d.main[i]
        assert isinstance(m, nn.Conv2d) and (m.in_channels, m.out_channels, m.stride[0]) == (cin, cout, stride)
        assert (m.bias is not None) == bias and m.kernel_size == (4, 4) and m.padding == (1, 1)
        assert abs(m.weight.std().item() - 0.02) < 0.004
    for i in (3, 6, 9):
        assert isinstance(d.main[i], nn.BatchNorm2d) and torch.all(d.main[i].bias == 0)
        assert abs(d.main[i].weight.mean().item() - 1) < 0.01
    for i in (1, 4, 7, 10):
        assert isinstance(d.main[i], nn.LeakyReLU) and d.main[i].negative_slope == 0.2
    assert d.main[0].bias.abs().sum() > 0  # conv biases keep PyTorch's default init (not zeroed)
    keys = set(d.state_dict())
    assert {"main.0.weight", "main.0.bias", "main.2.weight", "main.3.running_mean", "main.3.num_batches_tracked",
            "main.11.weight", "main.11.bias"} <= keys and "main.2.bias" not in keys
    with torch.no_grad():
        assert d(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 6, 6)  # 256x256 -> 30x30 (checked by shape rule)
    with pytest.raises(ValueError, match="loss.params.norm must be .batch.*got .group."):
        NLayerDiscriminator(norm="group")


def tiny_dino_backbone():
    import timm
    torch.manual_seed(0)
    bb = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=16, embed_dim=16, depth=12, num_heads=2, num_classes=0, act_layer="gelu_tanh")
    for p in bb.parameters():
        p.requires_grad_(False)
    return bb.eval()


def test_dino_discriminator_structure_and_forward():
    heads = nn.ModuleList([make_dino_head(384) for _ in range(5)])
    assert sum(p.numel() for p in heads.parameters()) == 7_386_245  # spec 3.2.6
    d = DinoDiscriminator(backbone=tiny_dino_backbone())
    assert all(k.startswith("heads.") for k in d.state_dict())  # frozen backbone is not saved
    assert {"heads.0.0.0.weight_orig", "heads.0.0.0.weight_u", "heads.0.0.1.weight", "heads.0.1.fn.0.weight_orig",
            "heads.4.2.weight_orig"} <= set(d.state_dict())
    n_backbone = sum(p.numel() for p in d.backbone.parameters())
    assert sum(p.numel() for p in d.parameters()) == sum(p.numel() for p in d.heads.parameters())
    d.train()
    assert not d.backbone.training
    x = (torch.rand(2, 3, 48, 48) * 2 - 1).requires_grad_(True)  # > 32: random crop or area resize
    logits = d(x)
    assert logits.shape == (2, 5 * 4) and logits.dtype == torch.float32 and n_backbone > 0
    logits.mean().backward()
    assert x.grad is not None and d.heads[0][2].weight_orig.grad is not None
    acts = d.features(torch.zeros(2, 3, 16, 16))  # smaller: bicubic upsample to 32
    assert len(acts) == 5 and acts[0].shape == (2, 16, 4)


@pytest.mark.slow
def test_dino_discriminator_vit_s_random():
    d = DinoDiscriminator(pretrained=False)
    assert d.backbone.embed_dim == 384 and len(d.backbone.blocks) == 12
    assert torch.all(d.backbone.blocks[0].attn.qkv.bias[384:768] == 0)


def test_dinodisc_loss_uses_diffaug(monkeypatch):
    import tokenizer.losses.vq_loss as vq_mod
    monkeypatch.setattr(vq_mod, "build_discriminator", lambda *a, **k: ConstDisc())
    loss = make_loss(disc_type="dinodisc", disc_start=1, use_direct_rec_loss=False)
    assert loss.diffaug is not None
    x, out = fake_outputs()
    torch.manual_seed(3)
    got, _ = loss.discriminator_loss(x, out[0][0], step=0)
    torch.manual_seed(3)
    aug = DiffAug(1.0, 0.2)
    lf = aug(out[0][0]).mean(1, keepdim=True)  # fake first, then real (each its own draw)
    lr = aug(x).mean(1, keepdim=True)
    assert got.item() == pytest.approx(0.5 * adv.hinge_d_loss(lr, lf).item(), rel=1e-6)


# ----- DiffAug -----------------------------------------------------------------------------------------------------

def test_diffaug_shape_determinism_grad_and_hand_translation():
    aug = DiffAug(prob=1.0, cutout=0.2)
    x = torch.randn(3, 3, 20, 20)
    torch.manual_seed(7)
    a = aug(x)
    torch.manual_seed(7)
    b = aug(x)
    assert a.shape == x.shape and a.dtype == torch.float32 and torch.equal(a, b)
    xr = x.clone().requires_grad_(True)
    aug(xr).sum().backward()
    assert xr.grad is not None

    # hand computation of the three steps with the same random draws
    torch.manual_seed(11)
    got = aug(x)
    torch.manual_seed(11)
    flags = torch.rand(3)
    r = torch.rand(7, 3, 1, 1)
    assert bool((flags <= 1.0).all())
    d = round(20 * 0.125)
    want = torch.zeros_like(x)
    for n in range(3):
        th = int(math.floor(r[0, n].item() * (2 * d + 1))) - d
        tw = int(math.floor(r[1, n].item() * (2 * d + 1))) - d
        for i in range(20):
            for j in range(20):
                si, sj = i + th, j + tw
                if 0 <= si < 20 and 0 <= sj < 20:
                    want[n, :, i, j] = x[n, :, si, sj]
    want = want + (r[2].view(3, 1, 1, 1) - 0.5)
    mc = want.mean(1, keepdim=True)
    want = (want - mc) * (2 * r[3].view(3, 1, 1, 1)) + mc
    ma = want.mean(dim=(1, 2, 3), keepdim=True)
    want = (want - ma) * (r[4].view(3, 1, 1, 1) + 0.5) + ma
    side = round(20 * 0.2)  # 4 (even): offsets drawn in [0, 20]
    for n in range(3):
        oh = int(math.floor(r[5, n].item() * 21))
        ow = int(math.floor(r[6, n].item() * 21))
        for i in range(side):
            for j in range(side):
                want[n, :, min(max(oh + i - 2, 0), 19), min(max(ow + j - 2, 0), 19)] = 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# ----- build_loss and the real tiny model ----------------------------------------------------------------------------

def test_build_loss_with_tiny_model_end_to_end(small_teacher, monkeypatch):
    """build_loss from VQ_tiny32 + distillation (8x8 grid -> teacher input 112), one real train-mode step."""
    import tokenizer.losses.vq_loss as vq_mod
    made = {}

    def fake_teacher(name, pretrained=True, weights=None, image_size=224):
        made.update(name=name, image_size=image_size)
        return small_teacher
    monkeypatch.setattr(vq_mod, "SemanticTeacher", fake_teacher)
    cfg = read_tokenizer_config(CONFIGS / "VQ_tiny32.yaml",
                                ["loss.params.disc_start=1", "loss.params.aux_loss_end=2",
                                 "loss.params.use_direct_rec_loss=True", "loss.params.disc_dim=8",
                                 "trainer.distill_loss=True", "+trainer.distill_model=dinov2-vit-s",
                                 "+loss.params.teacher_image_size=112"])
    loss = build_loss(cfg, pretrained=False).train()
    assert made == {"name": "dinov2-vit-s", "image_size": 112} and loss.distill_loss
    assert loss.perceptual is None  # perceptual_weight 0 in the tiny config
    torch.manual_seed(0)
    model = MODEL_CLASSES[cfg.model.model_cls][0](model_args(cfg)).train()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    step = 0  # t = 1: aux on (1 < 2), disc on (1 >= 1)
    assert loss.aux_active(step) and loss.disc_active(step)
    out = model(x, rec_loss=loss.aux_active(step), ret_inner_feat=True)
    assert out[2].shape == (2, 64, 384)
    total, logs = loss.generator_loss(out, x, step)
    total.backward()
    assert logs["direct_rec_loss"] > 0 and logs["generator_adv_loss"] != 0 and logs["feature_rec_loss"] > 0
    assert -1 <= logs["proj_loss"] <= 1
    d_loss, _ = loss.discriminator_loss(x, out[0][0], step, out[0][1])
    d_loss.backward()
    assert all(p.grad is not None for p in loss.discriminator.parameters())
    assert not loss.aux_active(1)
