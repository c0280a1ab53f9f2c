"""The demo app and the built website in a real headless browser: Debian's chromium driven by
Playwright (`pip install -e '.[test]'`, `apt-get install chromium`; never `playwright install`).

These tests are part of the main run: without chromium they fail and say how to install it.
Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from cifar_tl.app import MAX_EXAMPLES

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = Path(os.environ.get("CIFAR_TL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
LOCAL = ("http://127.0.0.1:", "data:", "blob:")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"chromium is missing at {CHROMIUM}: install Debian's (`apt-get install -y chromium`; CI's "
                    ".ci/run does) or point CIFAR_TL_CHROMIUM at a Chromium binary")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Python Playwright is missing: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with status {process.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.25)
    pytest.fail(f"nothing listened on port {port} after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def subprocess_env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    env.pop("CIFAR_TL_DEBUG", None)
    return env


def watch(page) -> dict:
    """Collect the page's requests, JavaScript errors and console errors."""
    seen = {"requests": [], "errors": [], "bad_responses": []}
    page.on("request", lambda request: seen["requests"].append(request.url))
    page.on("pageerror", lambda error: seen["errors"].append(f"{page.url}: uncaught {error}"))
    page.on("console", lambda message: message.type == "error" and seen["errors"].append(f"{page.url}: console: {message.text}"))
    # ERR_ABORTED is a request the page itself cancelled (Gradio closing an event stream), not a failure.
    page.on("requestfailed", lambda request: request.failure != "net::ERR_ABORTED" and seen["bad_responses"].append(
        f"{request.url} failed ({request.failure})"))
    page.on("response", lambda response: response.status >= 400 and seen["bad_responses"].append(
        f"{response.url} answered {response.status}"))
    return seen


# -- the demo app ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_dir(jpeg_archive, tmp_path_factory) -> Path:
    """Two tiny checkpoints made by `cifar-tl train --save-checkpoint` on the real CIFAR-10 copy."""
    from conftest import run_cli

    folder = tmp_path_factory.mktemp("app-checkpoints")
    for backbone in ("simple_cnn", "efficientnet_lite0"):  # in this process: the session's decoded arrays
        done = run_cli("train", "--backbone", backbone, "--recipe", "linear_probe", "--profile", "smoke",
                       "--per-class", "10", "--val-per-class", "5", "--test-limit", "100", "--epochs", "2",
                       "--image-size", "32", "--data", jpeg_archive, "--save-checkpoint", folder / f"{backbone}.pt")
        assert done.returncode == 0, done.stderr[-3000:]
    return folder


@pytest.fixture  # one test uses it: stopped right after it, not kept serving beside the book build
def app_url(checkpoint_dir, jpeg_archive, tmp_path_factory):
    """`cifar-tl app` on a free port, its examples from the CIFAR-10 copy; stopped afterwards."""
    port = free_port()
    log = tmp_path_factory.mktemp("app-log") / "app.log"
    env = subprocess_env(CIFAR_TL_DATA=str(jpeg_archive), GRADIO_TEMP_DIR=str(tmp_path_factory.mktemp("gradio")))
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cifar_tl.cli", "app", "--checkpoints", str(checkpoint_dir), "--port", str(port),
             "--host", "127.0.0.1"], stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    try:
        wait_for_port(port, process, log)
        yield f"http://127.0.0.1:{port}/"
    finally:
        stop(process)


def test_app_classifies_an_example_with_every_model(browser, app_url, checkpoint_dir):
    from playwright.sync_api import expect

    from cifar_tl.models.checkpoints import load_checkpoint

    infos = [load_checkpoint(path)[1] for path in sorted(checkpoint_dir.glob("*.pt"))]
    classes = infos[0]["classes"]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    seen = watch(page)
    page.goto(app_url, wait_until="load")

    examples = page.locator("#examples").get_by_role("button")
    expect(examples.first).to_be_visible(timeout=60_000)
    assert examples.count() == min(len(classes), MAX_EXAMPLES)  # one example per class of the test split
    expect(page.locator("#examples")).to_contain_text("Test images of CIFAR-10")  # the checkpoints' data
    examples.nth(1).click()
    expect(page.locator("#input-image img").first).to_be_visible(timeout=30_000)
    expect(page.locator("#true-label")).to_contain_text(f"True label: {classes[1]}")
    page.get_by_role("button", name="Classify with every model").click()

    for i, info in enumerate(infos):
        label = page.locator(f"#prediction-{i}")
        expect(label).to_contain_text(f"{info['backbone']} · {Path(info['path']).name}")
        expect(label).to_contain_text(re.compile(r"\d+%"), timeout=60_000)
        text = label.inner_text()
        shown = [name for name in classes if re.search(rf"(?m)^{re.escape(name)}$", text)]
        assert shown, f"no class name in prediction {i}: {text!r}"
        assert len(re.findall(r"\d+%", text)) == 3, text  # the top 3 with their probabilities

    table = page.locator("#benchmark")
    for info in infos:
        expect(table).to_contain_text(Path(info["path"]).name)
        expect(table).to_contain_text(f"{100 * info['record']['test_accuracy']:.1f}%")
        expect(table).to_contain_text(f"{info['parameters']:,}")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
    outside = sorted({url for url in seen["requests"] if not url.startswith(LOCAL)})
    assert not outside, f"the app requested resources from outside 127.0.0.1: {outside}"
    assert not seen["errors"], seen["errors"]
    assert not seen["bad_responses"], seen["bad_responses"]
    page.close()


@pytest.fixture  # one test uses it: stopped right after it
def hostile_app(checkpoint_dir, jpeg_archive, tmp_path_factory):
    """`cifar-tl app` on a folder of one good checkpoint among a pickle with code in it and random bytes, and
    the files a user might upload. Yields (url, uploads folder, marker: created only if the pickle's code ran)."""
    import faults

    folder = tmp_path_factory.mktemp("hostile-checkpoints")
    marker = folder.parent / f"{folder.name}-code-ran"
    shutil.copy(checkpoint_dir / "simple_cnn.pt", folder / "simple_cnn.pt")
    torch.save({"format": "cifar-tl-checkpoint", "payload": faults.RunsCode(marker)}, folder / "code.pt")
    (folder / "garbage.pt").write_bytes(os.urandom(4000))
    uploads = tmp_path_factory.mktemp("hostile-uploads")
    (uploads / "text.png").write_text("not an image\n")
    (uploads / "empty.png").write_bytes(b"")
    (uploads / "huge.png").write_bytes(faults.png_claiming(60_000, 60_000))
    with open(uploads / "heavy.png", "wb") as f:
        f.write(os.urandom(50_000_000))
    Image.new("RGB", (64, 48), (200, 120, 40)).save(uploads / "good.png")
    port = free_port()
    log = tmp_path_factory.mktemp("hostile-app-log") / "app.log"
    env = subprocess_env(CIFAR_TL_DATA=str(jpeg_archive), GRADIO_TEMP_DIR=str(tmp_path_factory.mktemp("gradio")))
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cifar_tl.cli", "app", "--checkpoints", str(folder), "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    try:
        wait_for_port(port, process, log)
        yield f"http://127.0.0.1:{port}/", uploads, marker, process
    finally:
        stop(process)
    printed = log.read_text()
    assert "the app skips code.pt" in printed and "the app skips garbage.pt" in printed, printed


def test_app_names_bad_checkpoints_and_survives_hostile_uploads(browser, hostile_app):
    """Each bad upload gets its message in the page; then, in the same session, a good image is classified."""
    from playwright.sync_api import expect

    url, uploads, marker, process = hostile_app
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    seen = watch(page)
    page.goto(url, wait_until="load")
    summary = page.locator("#summary")
    expect(summary).to_contain_text("1 checkpoint(s)", timeout=60_000)
    expect(summary).to_contain_text("Skipped code.pt: it asks to run code")
    expect(summary).to_contain_text("Skipped garbage.pt: not a PyTorch file")
    assert not marker.exists(), "the app ran the code in code.pt"

    upload = page.locator("#input-image input[type=file]")
    status = page.locator("#status")

    def send(name: str) -> None:
        upload.set_input_files(str(uploads / name))
        # Uploaded: the preview shows the server's copy (a broken image where the file is not one).
        expect(page.locator(f'#input-image img[src*="{name}"]')).to_have_count(1, timeout=30_000)
        page.get_by_role("button", name="Classify with every model").click()

    for name, message in [
        ("text.png", "image text.png could not be read as an image (not an image Pillow knows)"),
        ("empty.png", "image empty.png is empty (0 bytes)"),
        ("huge.png", "image huge.png claims 3,600,000,000 pixels, more than the 64 megapixels"),
    ]:
        send(name)
        expect(status).to_contain_text(f"Could not classify: {message}", timeout=30_000)
    upload.set_input_files(str(uploads / "heavy.png"))  # 50 MB: refused by the server, said in the page
    expect(page.get_by_text(re.compile("exceed the maximum allowed size"))).to_be_visible(timeout=30_000)

    send("good.png")
    prediction = page.locator("#prediction-0")
    expect(prediction).to_contain_text(re.compile(r"\d+%"), timeout=60_000)
    expect(status).to_have_text("")
    assert process.poll() is None, "the server stopped"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app-hostile.png"), full_page=True)
    page.close()
    # The refused 50 MB upload is the one failed request; Gradio's page then also asks for its progress in vain.
    bad = [r for r in seen["bad_responses"] if "/gradio_api/upload" not in r]
    errors = [e for e in seen["errors"] if "Failed to load resource" not in e and "console: Response" not in e]
    assert not bad, bad
    assert not errors, errors


# -- the website ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_html(built_book) -> Path:
    """The website as `cifar-tl book --profile smoke` built it in this session (conftest.built_book)."""
    return built_book / "html"


@pytest.fixture(scope="module")
def site_url(built_html, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("http-log") / "http.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(built_html)],
            stdout=out, stderr=subprocess.STDOUT, env=subprocess_env(),
        )
    try:
        wait_for_port(port, process, log, timeout=30)
        yield f"http://127.0.0.1:{port}/"
    finally:
        stop(process)


# Wait for every image (lazy ones made eager), then report each one's source and natural width.
IMAGES_JS = """async () => {
  const images = Array.from(document.images);
  for (const image of images) image.loading = "eager";
  await Promise.all(images.map(image => image.complete ? null : new Promise(done => {
    image.addEventListener("load", done); image.addEventListener("error", done); setTimeout(done, 15000);
  })));
  return images.map(image => ({src: image.currentSrc || image.src, width: image.naturalWidth,
                               figure: image.closest(".cell_output") !== null}));
}"""


def test_website_pages_have_their_figures_and_no_errors(browser, built_html, site_url):
    chapters = sorted(p.relative_to(built_html).as_posix() for p in (built_html / "notebooks").glob("*.html"))
    prose = sorted(p.relative_to(built_html).as_posix() for p in (built_html / "book").glob("*.html"))
    assert chapters, f"no chapter pages under {built_html / 'notebooks'}"
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    seen = watch(page)
    problems = []
    for name in ["index.html", *prose, *chapters]:
        page.goto(site_url + name, wait_until="load")
        refresh = re.search(r'http-equiv="refresh" content="0; url=([^"]+)"', (built_html / name).read_text(), re.I)
        if refresh:  # index.html forwards to the first page
            page.wait_for_url("**/" + refresh.group(1), wait_until="load")
        images = page.evaluate(IMAGES_JS)
        problems += [f"{name}: broken image {image['src']}" for image in images if image["width"] == 0]
        if name.startswith("notebooks/") and not any(image["figure"] for image in images):
            problems.append(f"{name}: no figure (no <img> in any cell output)")
        if name == chapters[0]:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "book.png"), full_page=True)
    page.close()
    # The browser asks every site for /favicon.ico; the book has none, which is not an error of a page.
    bad = [r for r in seen["bad_responses"] if not r.startswith(site_url + "favicon.ico ")]
    # A failed load is also a console error without its address; `bad` names it (or excused it).
    errors = [e for e in seen["errors"] if "Failed to load resource" not in e]
    assert not problems, "\n".join(problems)
    assert not bad, "\n".join(bad)
    assert not errors, "JavaScript errors:\n" + "\n".join(errors)


# The content column of a chapter page at the viewport's width: whether it scrolls sideways, the outermost
# elements that reach past its right edge (to name them), code blocks that still scroll instead of wrapping,
# the figures in cell outputs, and the Summary and Exercises sections.
CHAPTER_LAYOUT_JS = """() => {
  const column = document.querySelector('.bd-article-container');
  if (!column) return null;
  const right = column.getBoundingClientRect().right;
  const describe = el => `<${el.tagName.toLowerCase()} class="${el.className}"> `
      + JSON.stringify((el.textContent || '').trim().slice(0, 60));
  const beyond = el => el.getBoundingClientRect().right > right + 1;
  const past = Array.from(column.querySelectorAll('*')).filter(el => beyond(el) && !beyond(el.parentElement));
  const code = Array.from(column.querySelectorAll('pre')).filter(pre => pre.scrollWidth > pre.clientWidth + 1);
  const section = name => {
    const heading = Array.from(column.querySelectorAll('section > h2'))
        .find(h => h.textContent.replace(/#$/, '').trim() === name);
    if (!heading) return null;
    const body = heading.parentElement;
    return {
      items: Array.from(body.querySelectorAll('li')).filter(li => li.closest('.admonition') === null)
          .map(li => li.textContent.trim()),
      dropdowns: Array.from(body.querySelectorAll('.admonition.dropdown, details')).map(box => ({
        title: (box.querySelector('.admonition-title, summary') || box).textContent.trim(),
        hidden: Array.from(box.children).filter(child => !child.matches('.admonition-title, summary, button'))
            .every(child => child.offsetParent === null || getComputedStyle(child).visibility === 'hidden'),
      })),
    };
  };
  return {
    scrollWidth: column.scrollWidth, clientWidth: column.clientWidth,
    past: past.slice(0, 3).map(describe), code: code.slice(0, 3).map(describe),
    figures: Array.from(column.querySelectorAll('.cell_output img')).length,
    glue: (column.innerText.match(/\\{glue[^}]*\\}/g) || []).slice(0, 3),
    summary: section('Summary'), exercises: section('Exercises'),
  };
}"""


def test_website_chapters_fit_their_column_and_end_with_summary_and_exercises(browser, built_html, site_url):
    """At 1280x900 no chapter's content column scrolls sideways, no code block hides its line ends, and every
    chapter has its figures, a Summary with measured numbers and Exercises with collapsed solutions."""
    chapters = sorted(p.relative_to(built_html).as_posix() for p in (built_html / "notebooks").glob("*.html"))
    assert chapters, f"no chapter pages under {built_html / 'notebooks'}"
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    for name in chapters:
        page.goto(site_url + name, wait_until="load")
        # sphinx-togglebutton collapses each dropdown (and gives it a button) once the page has loaded.
        page.wait_for_function("() => document.querySelectorAll('.admonition.dropdown').length"
                               " === document.querySelectorAll('.admonition.dropdown button.toggle-button').length")
        found = page.evaluate(CHAPTER_LAYOUT_JS)
        if found is None:
            problems.append(f"{name}: no .bd-article-container (the theme's content column) on the page")
            continue
        if found["scrollWidth"] > found["clientWidth"]:
            problems.append(f"{name}: the content column scrolls sideways ({found['scrollWidth']} px of content in "
                            f"{found['clientWidth']} px); reaching past its edge: {'; '.join(found['past'])}")
        if found["code"]:
            problems.append(f"{name}: code blocks scroll instead of wrapping: {'; '.join(found['code'])}")
        if not found["figures"]:
            problems.append(f"{name}: no figure (no <img> in any cell output)")
        if found["glue"]:
            problems.append(f"{name}: raw glue roles in the text: {found['glue']}")
        summary, exercises = found["summary"], found["exercises"]
        if summary is None:
            problems.append(f"{name}: no 'Summary' section")
        elif not 3 <= len(summary["items"]) <= 5 or not any(re.search(r"\d", item) for item in summary["items"]):
            problems.append(f"{name}: the Summary should have 3-5 points with measured numbers: {summary['items']}")
        if exercises is None:
            problems.append(f"{name}: no 'Exercises' section")
        else:
            if len(exercises["items"]) < 3:
                problems.append(f"{name}: fewer than 3 exercises: {exercises['items']}")
            if not exercises["dropdowns"]:
                problems.append(f"{name}: no solution in a collapsed dropdown under Exercises")
            shown = [box["title"] for box in exercises["dropdowns"] if not box["hidden"]]
            if shown:
                problems.append(f"{name}: solutions shown open instead of collapsed: {shown}")
        if name == chapters[-1]:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "book-last-chapter.png"), full_page=True)
    page.close()
    assert not problems, "\n".join(problems)
