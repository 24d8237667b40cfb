"""The demo's logic without a browser: model discovery in a quickstart folder, reconstruction equal to
tokenizer.reconstruct, samples equal to sample_c2i's, the memory guard and residency, and a message for bad input.
(test_demo_browser.py drives the page itself.)"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from autoregressive.demo import build_parser
from autoregressive.demo import models as m

from testlib import PHOTOS, REPO, make_quickstart_models


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    return make_quickstart_models(tmp_path_factory.mktemp("demo") / "quickstart")


@pytest.fixture(scope="module")
def choices(quickstart):
    toks, gens = m.quickstart_models(quickstart)
    assert [t.label for t in toks] == ["quickstart VQ_tiny32_2d (step 2)"]
    assert len(gens) == 1 and gens[0].tokenizer is toks[0] and gens[0].class_names[3] == "Dress"
    return toks[0], gens[0]


def test_a_missing_quickstart_offers_nothing_and_says_how_to_make_it(tmp_path):
    assert m.quickstart_models(tmp_path / "none") == ([], [])
    from autoregressive.demo.app import Demo
    demo = Demo(build_parser().parse_args(["--quickstart", str(tmp_path / "none"), "--no-released", "--device", "cpu",
                                           "--output-dir", str(tmp_path / "out")]))
    assert not demo.has_quickstart and "bash scripts/quickstart.sh" in demo.status()


def test_reconstruction_equals_the_reconstruct_driver(choices, tmp_path, single_thread):
    from tokenizer.reconstruct import main as reconstruct
    tok_choice, _ = choices
    folder = tmp_path / "one"
    folder.mkdir()
    photo = PHOTOS / "photos" / "camera_gray_odd.png"  # greyscale, odd size: the same conversion and crop
    (folder / photo.name).write_bytes(photo.read_bytes())
    ref = reconstruct(["--data-path", str(folder), "--image-size", "32", "--vq-ckpt", tok_choice.checkpoint,
                       "--model-config", tok_choice.config, "--sample-dir", str(tmp_path / "rec"), "--device", "cpu",
                       "--num-workers", "0"])
    pool = m.ModelPool(torch.device("cpu"))
    r = m.reconstruct(pool.tokenizer(tok_choice), m.open_image(photo))
    assert r["psnr"] == pytest.approx(ref["psnr"], abs=1e-9) and r["ssim"] == pytest.approx(ref["ssim"], abs=1e-9)
    saved = np.asarray(Image.open(next((tmp_path / "rec").rglob("images/000000.png"))))
    assert np.array_equal(r["reconstruction"], saved) and r["pair"].shape == (32, 64, 3)
    assert r["codes"].shape == (64,) and r["heatmap"].shape == (256, 256, 3)
    assert r["codebook_usage"] == pytest.approx(ref["codebook_usage"])


def test_samples_equal_sample_c2i_with_one_class_and_the_same_seed(choices, tmp_path, single_thread):
    from autoregressive.sample_c2i import main as sample
    _, gen = choices
    pool = m.ModelPool(torch.device("cpu"))
    gpt, tok = pool.generator(gen)
    req = m.SampleRequest(class_id=3, num_images=3, cfg_scale=2.5, cfg_schedule="step", window_start=0.3, top_k=20,
                          top_p=0.9, temperature=1.1, seed=7)
    mine = list(m.sample_images(gpt, tok, req, batch_size=2))  # batching does not change the images
    settings = m.write_settings(tmp_path / "settings.json", gen, req, torch.device("cpu"), [])
    command = json.loads(settings.read_text())["command"].split()
    folder = sample(command[3:] + ["--sample-dir", str(tmp_path / "cli"), "--device", "cpu"])
    theirs = [np.asarray(Image.open(p)) for p in sorted(folder.glob("class_3_*/*.png"))]
    assert len(theirs) == 3 and all(np.array_equal(a, b) for a, b in zip(mine, theirs, strict=True))


def test_one_model_resident_and_the_memory_guard(choices):
    tok_choice, gen = choices
    pool = m.ModelPool(torch.device("cpu"), max_resident=1)
    pool.tokenizer(tok_choice)
    pool.generator(gen)
    assert list(pool.loaded) == [f"gen:{gen.label}"]  # the tokenizer was unloaded first
    two = m.ModelPool(torch.device("cpu"), max_resident=2)
    two.tokenizer(tok_choice)
    two.generator(gen)
    assert len(two.loaded) == 2
    small = m.ModelPool(torch.device("cpu"), memory_limit=1024)
    with pytest.raises(m.DemoError, match="too big for this machine"):
        small.generator(gen)
    assert not small.loaded


def test_bad_input_is_a_message(choices, tmp_path):
    tok_choice, gen = choices
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(m.DemoError, match="not an image"):
        m.open_image(text)
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(big)
    with pytest.raises(m.DemoError, match="300 x 200 pixels"):
        m.open_image(big, max_pixels=10_000)
    with pytest.raises(m.DemoError, match="files up to"):
        m.open_image(big, max_bytes=10)
    with pytest.raises(m.DemoError, match="out of range"):
        m.parse_class("42", gen.class_names)
    assert m.parse_class("3: Dress", gen.class_names) == 3 and m.parse_class("sneak", gen.class_names) == 7
    with pytest.raises(m.DemoError, match="matches 2 classes"):
        m.parse_class("shirt", gen.class_names)
    with pytest.raises(m.DemoError, match="temperature"):
        m.SampleRequest(0, 2, temperature=-1).check(8)
    with pytest.raises(m.DemoError, match="1 to 8"):
        m.SampleRequest(0, 9).check(8)
    broken = m.TokenizerChoice("broken", tok_choice.config, str(text))
    with pytest.raises(m.DemoError, match="could not load broken"):
        m.ModelPool(torch.device("cpu")).tokenizer(broken)


def test_the_page_actions_return_messages_not_tracebacks(quickstart, tmp_path):
    from autoregressive.demo.app import Demo
    args = build_parser().parse_args(["--quickstart", str(quickstart), "--no-released", "--device", "cpu",
                                      "--output-dir", str(tmp_path / "out"), "--max-images", "4"])
    demo = Demo(args)
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    pair, metrics, heat, message = demo.reconstruct(demo.tokenizers[0].label, str(text), None, None)
    assert pair is None and message.startswith("**Error:**") and "not an image" in message
    pair, metrics, heat, message = demo.reconstruct(demo.tokenizers[0].label, None, "astronaut.png", None)
    assert message == "" and pair.shape == (32, 64, 3) and "PSNR" in metrics
    steps = list(demo.generate(demo.generators[0].label, "99", 4.0, "constant", 0.18, 0, 1.0, 1.0, 0, 2, None))
    assert steps == [([], None, "**Error:** class id 99 is out of range: this model has classes 0 to 9")]
    steps = list(demo.generate(demo.generators[0].label, "Bag", 4.0, "linear", 0.18, 0, 1.0, 1.0, 0, 2, None))
    assert [len(s[0]) for s in steps] == [1, 2, 2]  # the grid grows image by image
    files = steps[-1][1]
    assert len(files) == 3 and files[-1].endswith("settings.json")
    assert json.loads(open(files[-1]).read())["class_name"] == "Bag"


def test_a_generation_resumed_on_other_threads_releases_the_model_lock(quickstart, tmp_path):
    """Gradio runs each step of a streaming handler on whichever worker thread is free; the pool lock is held across
    the yields, so it must be releasable from another thread than the one that took it (an RLock is not)."""
    from concurrent.futures import ThreadPoolExecutor

    from autoregressive.demo.app import Demo
    args = build_parser().parse_args(["--quickstart", str(quickstart), "--no-released", "--device", "cpu",
                                      "--output-dir", str(tmp_path / "out")])
    demo = Demo(args)
    steps = demo.generate(demo.generators[0].label, "Bag", 4.0, "constant", 0.18, 0, 1.0, 1.0, 0, 2, None)
    workers = [ThreadPoolExecutor(1) for _ in range(3)]  # all alive, so three distinct thread ids
    try:
        out = [w.submit(next, steps).result() for w in workers]
    finally:
        for w in workers:
            w.shutdown()
    assert "saved in" in out[-1][2], out[-1][2]
    assert demo.pool.lock.acquire(timeout=1)  # free again for the next request
    demo.pool.lock.release()


def test_every_flag_has_help():
    for action in build_parser()._actions:
        assert action.help, action.dest
    assert isinstance(build_parser().parse_args([]), argparse.Namespace)


def _demo_without_models(tmp_path):
    from autoregressive.demo.app import Demo
    return Demo(build_parser().parse_args(["--quickstart", str(tmp_path / "made"), "--no-released", "--device", "cpu",
                                           "--output-dir", str(tmp_path / "out")]))


def test_the_make_quickstart_button_streams_the_run_and_then_offers_its_models(tmp_path, monkeypatch):
    """The page's button runs scripts/quickstart.sh OUT_DIR (here a stand-in that makes seeded models in seconds)
    and streams its last lines; afterwards the demo lists the new models."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "scripts" / "quickstart.sh").write_text(
        'echo "step 1 of 2: $1"\n'
        f'PYTHONPATH="{REPO}:{REPO / "tests"}" "{sys.executable}" -c '
        '"import sys; from pathlib import Path; from testlib import make_quickstart_models; '
        'make_quickstart_models(Path(sys.argv[1]))" "$1"\n'
        'echo "step 2 of 2: done"\n')
    monkeypatch.setattr(m, "REPO", repo)
    demo = _demo_without_models(tmp_path)
    assert not demo.has_quickstart and demo.generators == []
    updates = list(demo.make_quickstart())
    assert f"step 1 of 2: {tmp_path / 'made'}" in updates[0]
    assert "step 2 of 2: done" in updates[-1]
    assert updates[-1].endswith("reload the page to use the quickstart's models.")
    made = m.quickstart_models(tmp_path / "made")[1]
    assert demo.has_quickstart and [g.label for g in demo.generators] == [g.label for g in made] != []


def test_a_failing_or_missing_quickstart_script_is_reported(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    monkeypatch.setattr(m, "REPO", repo)
    demo = _demo_without_models(tmp_path)
    assert list(demo.make_quickstart()) == [f"**Error:** {repo / 'scripts' / 'quickstart.sh'} is missing: the "
                                            "quickstart runs from a clone of the repository, not from an installed "
                                            "package."]
    (repo / "scripts").mkdir(parents=True)
    (repo / "scripts" / "quickstart.sh").write_text('echo "no data here" >&2\nexit 3\n')
    updates = list(demo.make_quickstart())
    assert "no data here" in updates[-1] and updates[-1].endswith("stopped with exit code 3; see the lines above.")
    assert not demo.has_quickstart
