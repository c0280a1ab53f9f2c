"""The demo app under hostile input, served for real on 127.0.0.1 in this process: uploads that are not images,
are empty, claim 60,000 x 60,000 pixels or weigh 50 MB each get a message and the server goes on serving; a
checkpoint folder with bad and hostile `.pt` files among good ones starts, names them, and serves the rest.
(test_browser.py does the same uploads through the page in chromium.)"""

from __future__ import annotations

import contextlib
import io
import os
import socket

import httpx
import pytest
import torch
from PIL import Image

from cifar_tl.app import MAX_UPLOAD_BYTES, build_app, launch_options, upload_pixels
from cifar_tl.core.errors import UserError
from cifar_tl.models.backbones import create_model
from cifar_tl.models.checkpoints import save_checkpoint

from faults import RunsCode, png_claiming

TINY_CLASSES = ["apple", "banana", "cherry"]  # conftest's tiny_dataset


@pytest.fixture(scope="module")
def checkpoint_folder(tmp_path_factory):
    """good.pt (an untrained simple_cnn on the tiny classes) among code.pt (a pickle whose loading would create
    `marker`), garbage.pt and cut.pt. Returns (folder, marker)."""
    folder = tmp_path_factory.mktemp("mixed-checkpoints")
    marker = folder.parent / f"{folder.name}-code-ran"
    torch.manual_seed(0)
    save_checkpoint(folder / "good.pt", create_model("simple_cnn", 3, pretrained=False), TINY_CLASSES, 32,
                    {"name": "untrained", "metrics": {}, "data": {"name": "tiny", "image_shape": [32, 32, 3]}})
    torch.save({"format": "cifar-tl-checkpoint", "payload": RunsCode(marker)}, folder / "code.pt")
    (folder / "garbage.pt").write_bytes(os.urandom(4000))
    (folder / "cut.pt").write_bytes((folder / "good.pt").read_bytes()[:5000])
    return folder, marker


@pytest.fixture(scope="module")
def uploads(tmp_path_factory, tiny_dataset):
    folder = tmp_path_factory.mktemp("uploads")
    Image.open(tiny_dataset / "test" / "banana" / "0000.png").save(folder / "good.png")
    (folder / "text.png").write_text("not an image\n")
    (folder / "empty.png").write_bytes(b"")
    (folder / "huge.png").write_bytes(png_claiming(60_000, 60_000))
    with open(folder / "heavy.png", "wb") as f:  # 50 MB
        f.write((folder / "good.png").read_bytes())
        f.write(os.urandom(50_000_000))
    return folder


@pytest.fixture(scope="module")
def app(checkpoint_folder, tiny_dataset):
    """The app of the mixed folder, served on a free port of 127.0.0.1: (demo, url, what it printed)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIFAR_TL_DATA", str(tiny_dataset))  # examples from data at hand: no download attempted
        printed = io.StringIO()
        with contextlib.redirect_stderr(printed):
            demo = build_app(checkpoint_folder[0])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        demo.launch(**launch_options(demo, "127.0.0.1", port), prevent_thread_lock=True, quiet=True)
        try:
            yield demo, f"http://127.0.0.1:{port}", printed.getvalue()
        finally:
            demo.close()


def test_a_bad_or_hostile_checkpoint_is_named_and_the_good_one_served(app, checkpoint_folder):
    demo, _, printed = app
    folder, marker = checkpoint_folder
    for name in ("code.pt", "garbage.pt", "cut.pt"):
        assert f"the app skips {name}: {folder / name} is not a cifar-tl checkpoint" in printed, printed
    assert "the app skips good.pt" not in printed
    assert not marker.exists(), "loading code.pt ran its code"
    summary = next(block.value for block in demo.blocks.values() if getattr(block, "elem_id", None) == "summary")
    assert "1 checkpoint(s)" in summary
    assert "**Skipped** `code.pt`: it asks to run code" in summary
    assert "**Skipped** `garbage.pt`: not a PyTorch file" in summary and "**Skipped** `cut.pt`" in summary
    labels = [b for b in demo.blocks.values() if getattr(b, "elem_id", "") and b.elem_id.startswith("prediction-")]
    assert [b.label for b in labels] == ["simple_cnn · good.pt"]


def test_hostile_uploads_get_a_message_and_the_server_keeps_serving(app, uploads):
    from gradio_client import Client, handle_file

    _, url, _ = app
    client = Client(url + "/", verbose=False)

    def classify(name: str):
        return client.predict(handle_file(str(uploads / name)), api_name="/classify")

    for name, message in [
        ("text.png", "image text.png could not be read as an image (not an image Pillow knows)"),
        ("empty.png", "image empty.png is empty (0 bytes)"),
        ("huge.png", "image huge.png claims 3,600,000,000 pixels, more than the 64 megapixels"),
    ]:
        status, prediction = classify(name)
        assert status.startswith("**Could not classify:** ") and message in status, status
        assert not prediction.get("confidences")  # the earlier predictions are cleared

    # 50 MB: the server refuses the upload itself, before writing it anywhere (the page shows Gradio's message).
    with open(uploads / "heavy.png", "rb") as f:
        refused = httpx.post(f"{url}/gradio_api/upload", files={"files": ("heavy.png", f, "image/png")}, timeout=60)
    assert refused.status_code == 413 and f"{MAX_UPLOAD_BYTES}" in refused.text

    # A path the page never uploaded is not read.
    sent = httpx.post(f"{url}/gradio_api/call/classify",
                      json={"data": [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}]}, timeout=30)
    answer = httpx.get(f"{url}/gradio_api/call/classify/{sent.json()['event_id']}", timeout=30).text
    assert "event: error" in answer and "root:" not in answer

    # ... and the same server classifies a good image.
    status, prediction = classify("good.png")
    assert status == ""
    assert sorted(c["label"] for c in prediction["confidences"]) == TINY_CLASSES
    assert sum(c["confidence"] for c in prediction["confidences"]) == pytest.approx(1.0, abs=1e-4)


def test_upload_pixels_checks_what_it_is_sent(uploads, tmp_path):
    assert upload_pixels({"path": str(uploads / "good.png"), "orig_name": "good.png"}).shape == (32, 32, 3)
    with pytest.raises(UserError, match="upload an image or click an example first"):
        upload_pixels(None)
    with pytest.raises(UserError, match="the page sent no image file"):
        upload_pixels({"url": "http://elsewhere/x.png"})
    with pytest.raises(UserError, match=r"image heavy\.png is 50\.\d MB; the app takes images up to 20\.0 MB"):
        upload_pixels({"path": str(uploads / "heavy.png"), "orig_name": "../../heavy.png"})  # named, not a path
