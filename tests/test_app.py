"""`inat-zoo app`: the Gradio app answers through gradio_client with the same top-5 as `inat-zoo predict`, shows the
model's name and test accuracy, offers the run's test images, and works in a real (headless Chromium) browser.

Needs gradio (the app extra, on Pillow 12): `make test` runs this module in .venv-extras.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="inat_zoo_gradio_"))  # not the shared /tmp/gradio

pytestmark = pytest.mark.extras_env
pytest.importorskip("gradio", reason="the app needs gradio: run `make install-extras` (pip install 'inat-zoo[app]')")
gradio_client = pytest.importorskip("gradio_client", reason="run `make install-extras` (pip install 'inat-zoo[app]')")

from inat_zoo.app import example_images, header_markdown, serve  # noqa: E402
from inat_zoo.errors import UsageError  # noqa: E402
from inat_zoo.loading import load_model  # noqa: E402
from inat_zoo.predict import predict  # noqa: E402

from .eval_helpers import image_files, make_run  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TEST_ACCURACY = 0.625


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_run(tmp_path_factory, sample_root) -> Path:
    """A trained tiny run (copied: the shared one stays untouched) with a recorded test accuracy."""
    run = tmp_path_factory.mktemp("app") / "tiny_app_run"
    shutil.copytree(make_run(tmp_path_factory.mktemp("runs"), sample_root, filters=8), run)
    (run / "metrics.json").write_text(json.dumps({"test": {"accuracy": TEST_ACCURACY, "num_samples": 40}}))
    return run


@pytest.fixture(scope="module")
def app(app_run, request):
    """The app, started in this process on 127.0.0.1 and a free port; closed when the module is done."""
    demo = serve(str(app_run), host="127.0.0.1", port=_free_port(), device="cpu")
    request.addfinalizer(demo.close)
    return demo


def test_client_gets_the_same_top5_as_predict(app, app_run, sample_root):
    image = image_files(sample_root, "val")[9][0]
    labels, overlay = gradio_client.Client(app.local_url, verbose=False).predict(
        gradio_client.handle_file(str(image)), api_name="/classify"
    )
    (expected,) = predict([image], str(app_run), top_k=5)
    assert [c["label"] for c in labels["confidences"]] == [e["label"] for e in expected["top5"]]
    got = [c["confidence"] for c in labels["confidences"]]
    assert got == pytest.approx([e["probability"] for e in expected["top5"]], abs=1e-6)
    assert labels["label"] == expected["top5"][0]["label"]
    from PIL import Image

    with Image.open(overlay) as picture:  # the Grad-CAM overlay: the model's input size, not a blank image
        pixels = np.asarray(picture.convert("RGB"), dtype=np.float32)
    assert pixels.shape == (256, 256, 3) and pixels.std() > 5  # 64 px input, shown 4x


def test_header_and_examples_come_from_the_run(app_run, sample_root, tmp_path):
    loaded = load_model(str(app_run))
    header = header_markdown(loaded)
    assert "# tiny_app_run" in header and "62.50%" in header and "inat_flexible_cnn" in header
    examples = example_images(loaded)
    test_images = {str(f): label for f, label in image_files(sample_root, "val")}
    assert len(examples) == 6 and all(e in test_images for e in examples)
    assert len({test_images[e] for e in examples}) == 6  # one per class first
    bare = shutil.copytree(app_run / "model", tmp_path / "bare")  # a model folder alone: no metrics, no examples
    bare_model = load_model(f"local-dir:{bare}")
    assert "no test accuracy" in header_markdown(bare_model) and example_images(bare_model) == []


def test_share_without_the_share_server_is_one_line(app_run, monkeypatch):
    """The share tunnel is the network boundary: replaced by one that cannot connect, as offline."""
    import gradio.networking

    def no_tunnel(*args, **kwargs):
        raise ConnectionError("share server unreachable")

    monkeypatch.setattr(gradio.networking, "setup_tunnel", no_tunnel)
    with pytest.raises(UsageError, match="--share: could not reach Gradio's share server"):
        serve(load_model(str(app_run)), port=_free_port(), share=True)


def _chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="inat_zoo_chromium_")
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--window-size=1280,1000",
    ):  # fmt: skip
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options), profile


@pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
    reason="needs Chromium and its driver: apt-get install chromium chromium-driver",
)
def test_a_browser_uploads_a_photo_and_sees_the_labels(app, app_run, sample_root, tmp_path):
    """Headless Chromium: load the page, upload a test image, press Classify, read the top label on the page.
    The screenshot goes to $INAT_ZOO_SCREENSHOT when set (the README's picture), else to a temporary folder."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = image_files(sample_root, "val")[9][0]
    (expected,) = predict([image], str(app_run), top_k=5)
    driver, profile = _chrome()
    try:
        driver.get(app.local_url)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo input[type=file]"))
        assert "62.50%" in driver.find_element(By.ID, "header").text
        driver.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(image))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo img"))
        driver.find_element(By.ID, "classify").click()
        top = expected["top5"][0]["label"]
        wait.until(lambda d: top in d.find_element(By.ID, "labels").text)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#gradcam img"))
        shown = driver.find_element(By.ID, "labels").text
        assert all(e["label"] in shown for e in expected["top5"])
        screenshot = Path(os.environ.get("INAT_ZOO_SCREENSHOT") or tmp_path / "app.png")
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_port_taken_at_launch_names_port_not_gradio_settings(app_run, monkeypatch):
    """The port is taken between the early check and Gradio's bind: Gradio's advice (GRADIO_SERVER_PORT, launch())
    is replaced by one line naming --port."""
    import inat_zoo.app

    monkeypatch.setattr(inat_zoo.app, "check_address", lambda host, port: None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UsageError) as caught:
            serve(load_model(str(app_run)), host="127.0.0.1", port=port)
    assert str(caught.value) == f"port {port} on 127.0.0.1 is in use: choose another --port"
