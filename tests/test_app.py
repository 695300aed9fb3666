"""python -m trainer.app: what its pages compute (trainer/explorer.py), and the app itself in a real browser."""

import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from browser import CHROMIUM, Chromium, classify_upload
from conftest import ROOT, free_port
from trainer.app import main as app_main
from trainer.cam_methods import cam_maps
from trainer.errors import run_cleanly
from trainer.explorer import Explorer
from trainer.image_files import read_images
from trainer.plots import ZOOM, overlay
from trainer.trained_run import Evaluation, open_run


@pytest.fixture(scope="module")
def explorer(trained_run):
    return Explorer(open_run(trained_run[0]))


def test_mistakes_are_the_runs_most_confident_first_and_filter_by_class(trained_run, explorer):
    mistakes = explorer.mistakes
    assert mistakes and all(m.true != m.predicted for m in mistakes)
    assert [m.confidence for m in mistakes] == sorted((m.confidence for m in mistakes), reverse=True)
    # From a checkpoint (not the final weights), the mistakes are evaluated anew, as the run evaluated: the same.
    evaluated = {m.row: m for m in Explorer(open_run(trained_run[0] / "checkpoints" / "last.safetensors")).mistakes}
    recorded = {m.row: m for m in mistakes}
    assert {r: m.predicted for r, m in evaluated.items()} == {r: m.predicted for r, m in recorded.items()}
    assert all(abs(evaluated[r].confidence - recorded[r].confidence) <= 0.5e-4 + 1e-6 for r in recorded)  # 4 decimals
    cat = explorer.mistakes_where(true=mistakes[0].true)
    assert cat and all(m.true == mistakes[0].true for m in cat) and cat[0] == mistakes[0]
    both = explorer.mistakes_where(true=mistakes[0].true, predicted=mistakes[0].predicted)
    assert mistakes[0] in both and all(m.predicted == mistakes[0].predicted for m in both)
    assert explorer.mistakes_where(true="no such class") == []


def test_classify_gives_the_runs_prediction_and_the_map_asked_for(trained_run, explorer):
    image = explorer.test_image(3)
    run = explorer.run
    expected = Evaluation(run).predict_images(torch.from_numpy(image)[None])
    result = explorer.classify(image, "gradcam", 1)
    assert result.predicted == int(expected.preds[0])
    assert list(result.probabilities) == run.class_names
    assert np.allclose(list(result.probabilities.values()), expected.probs[0].numpy())
    other = next(c for c in range(10) if c != result.predicted)
    for block, cls, opacity in ((1, result.predicted, 0.5), (0, other, 0.3)):
        shown = explorer.classify(image, "gradcam", block, run.class_names[cls], opacity).shown
        heatmap = cam_maps(explorer.evaluation.cam_model, explorer.evaluation.normalize(torch.from_numpy(image)[None]),
                           torch.tensor([cls]), "gradcam", block).shown[0]
        alone = (255 * overlay(image.transpose(1, 2, 0) / 255.0, heatmap, opacity)).round().astype(np.uint8)
        assert shown.shape == (32 * ZOOM, 32 * ZOOM, 3)
        assert np.array_equal(shown[::ZOOM, ::ZOOM], alone)
    assert not np.array_equal(explorer.classify(image, "gradcam", 1, run.class_names[other]).shown, result.shown)


def test_bad_requests_are_refused_before_the_app_starts(trained_run, tmp_path, capsys):
    assert run_cleanly(lambda: app_main([str(tmp_path / "nowhere")])) == 2
    assert "does not exist" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert run_cleanly(lambda: app_main([str(trained_run[0]), "--port", str(port)])) == 2
    assert f"Cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium), which "
                                             ".ci/run installs")
def test_the_app_in_a_real_browser(trained_run, explorer, tmp_path):
    """Headless Chromium opens the app, uploads an image (a test image enlarged and cropped off-square, as a photo
    would be), finds the class that predict gives it, browses the mistakes, and asks for nothing outside the app."""
    run = trained_run[0]
    photo = Image.fromarray(explorer.test_image(7).transpose(1, 2, 0)).resize((120, 96), Image.Resampling.BICUBIC)
    photo.save(tmp_path / "photo.jpg", quality=90)
    expected = Evaluation(explorer.run).predict_images(read_images([tmp_path / "photo.jpg"]).images)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "trainer.app", str(run), "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(url, server)
        with Chromium() as browser:
            top = classify_upload(browser, url, tmp_path / "photo.jpg")
            assert top.splitlines()[1] == explorer.run.class_names[int(expected.preds[0])], top
            browser.wait_for("[...document.querySelectorAll('#cam img')].some(i => i.complete && i.naturalWidth)")
            browser.click("Mistakes")
            count = f"{len(explorer.mistakes):,} of {len(explorer.mistakes):,} mistakes"
            browser.wait_for(f"document.body.innerText.includes({count!r})")
            browser.click_on("document.querySelector('#mistakes .thumbnail-item')")
            browser.wait_for("[...document.querySelectorAll('#predicted-map img, #true-map img')].filter("
                             "i => i.complete && i.naturalWidth).length == 2")
            first = explorer.mistakes[0]
            assert f"map of the predicted class: {first.predicted}" in browser.evaluate("document.body.innerText")
            browser.screenshot(tmp_path / "app.png")
            outside = [u for u in browser.requests if not u.startswith((url, "data:", "blob:"))]
            assert browser.requests and not outside, outside
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0]
    assert f"Running on local URL:  {url.rstrip('/')}" in log, log
    assert "Traceback" not in log, log


def wait_until_serving(url: str, server, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the app exited: {server.communicate()[0]}")
        try:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the app did not answer at {url} within {timeout} s")
