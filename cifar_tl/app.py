"""The demo app: every checkpoint in a folder classifies the same image, side by side, with a
benchmark table of their test accuracy, parameters and file size.

`cifar-tl app --checkpoints DIR` runs it (Gradio, on 127.0.0.1 by default). It works offline: no
analytics, a theme with system fonts only, and nothing loaded from outside the server.
Gradio is an optional dependency: `pip install -e '.[app]'`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cifar_tl.core.errors import UserError, format_bytes
from cifar_tl.data.images import MAX_IMAGE_PIXELS, read_image
from cifar_tl.models.checkpoints import HOW_TO_MAKE, load_checkpoint
from cifar_tl.models.predict import predict_arrays

EXAMPLE_DISPLAY_SIZE = 128
MAX_EXAMPLES = 10
TOP_K = 3
# The largest upload the server takes (Gradio refuses a bigger one before it is written to disk); a photo
# from any camera is well below it.
MAX_UPLOAD_BYTES = 20_000_000


def _gradio():
    """Import gradio with telemetry off (the variable must be set before the import)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio as gr
    except ImportError as exc:
        raise UserError("the demo app needs gradio: pip install -e '.[app]' (or pip install 'cifar-tl[app]')") from exc
    return gr


def offline_theme():
    """Gradio's default look with system fonts: the stock theme would fetch fonts from Google."""
    gr = _gradio()
    return gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def checkpoint_files(checkpoint_dir: str | os.PathLike) -> list[Path]:
    """The *.pt files of `checkpoint_dir`, sorted; a missing or empty folder is a `UserError`."""
    folder = Path(checkpoint_dir).expanduser()
    how = "train one with `cifar-tl train ... --save-checkpoint DIR/NAME.pt`"
    if not folder.is_dir():
        raise UserError(f"checkpoint folder {checkpoint_dir} does not exist; pass --checkpoints DIR; {how}")
    files = sorted(folder.glob("*.pt"))  # a *.pt that is not a file is named when it fails to load
    if not files:
        raise UserError(f"checkpoint folder {checkpoint_dir} holds no *.pt checkpoint; {how}")
    return files


def load_checkpoints(files: list[Path]) -> tuple[list[tuple], list[tuple[Path, str]]]:
    """Load each checkpoint file: the (model, info) of those that load, and (file, why) for each that does not
    (unreadable, not a checkpoint, a pickle that would run code), each named on stderr. None loading is a
    `UserError` that names them all."""
    models, skipped = [], []
    for path in files:
        try:
            models.append(load_checkpoint(path))
        except UserError as exc:
            skipped.append((path, getattr(exc, "why", None) or str(exc)))
            print(f"cifar-tl: the app skips {path.name}: {exc}", file=sys.stderr)
    if not models:
        raise UserError(f"none of the {len(files)} checkpoint(s) in {files[0].parent} could be loaded: "
                        + "; ".join(f"{path.name} ({why})" for path, why in skipped)
                        + f"; {HOW_TO_MAKE}")
    return models, skipped


def upload_pixels(payload, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """The uint8 RGB pixels of an image the page sent (Gradio's file data: a dict with the server-side `path` of
    the upload and its `orig_name`). Anything that is not an image of at most `max_bytes` and `max_pixels` is a
    `UserError` whose message the page shows."""
    if payload is None:
        raise UserError("upload an image or click an example first")
    if not isinstance(payload, dict) or not payload.get("path"):
        raise UserError("the page sent no image file; upload an image or click an example")
    path = Path(payload["path"])
    name = Path(str(payload.get("orig_name") or path.name)).name
    if path.is_file() and path.stat().st_size > max_bytes:
        raise UserError(f"image {name} is {format_bytes(path.stat().st_size)}; the app takes images up to "
                        f"{format_bytes(max_bytes)}")
    return read_image(path, name=name, max_pixels=max_pixels)


def _synthetic_examples(count: int = 4) -> list[tuple[str, np.ndarray]]:
    """Small drawn scenes (32x32) for when no dataset is at hand."""
    rng = np.random.default_rng(0)
    scenes = []
    for i in range(count):
        sky = np.linspace([90, 150, 230], [200, 220, 250], 32).astype(np.uint8)[:, None, :].repeat(32, 1)
        image = Image.fromarray(sky)
        draw = ImageDraw.Draw(image)
        draw.rectangle([0, 22, 31, 31], fill=(70, 140, 60) if i % 2 else (60, 90, 160))
        colour = tuple(int(c) for c in rng.integers(30, 230, 3))
        if i % 2:
            draw.ellipse([8, 10, 24, 26], fill=colour)
        else:
            draw.polygon([(4, 22), (16, 8), (28, 22)], fill=colour)
        scenes.append((f"synthetic {i + 1}", np.asarray(image)))
    return scenes


def trained_on(dataset, infos: list[dict]) -> bool:
    """Whether `dataset` is the data the checkpoints were trained on: every checkpoint's classes, in the same
    order (so that a test image's true label means the same to every model), and one checkpoint's data, by
    checksum or by name (a checkpoint saved before checksums were recorded names its data only)."""
    if any(list(info["classes"]) != list(dataset.classes) for info in infos):
        return False
    checksum, name = dataset.identity.get("checksum"), dataset.identity.get("name")
    for info in infos:
        summary = info.get("record") or {}
        if (checksum and summary.get("data_checksum") == checksum) or (name and summary.get("data_name") == name):
            return True
    return False


def example_images(infos: list[dict], data: str | None = None) -> tuple[list[tuple[str, np.ndarray]], str | None]:
    """One test image per class (at most MAX_EXAMPLES), captioned with its true label, from the data the
    checkpoints were trained on, and that data's name. The data resolves as everywhere in cifar_tl: `data`,
    else $CIFAR_TL_DATA, else CIFAR-10 through torchvision. Where it cannot be loaded, or is other data
    than the checkpoints', drawn shapes and None (with one line on stderr saying why)."""
    from cifar_tl.data.sources import load_dataset, resolve_source

    source = resolve_source(data)
    try:
        dataset = load_dataset(source, progress=False)
    except UserError as exc:
        print(f"cifar-tl: the app's examples are drawn shapes: the checkpoints' data is not at hand ({exc})",
              file=sys.stderr)
        return _synthetic_examples(), None
    if not trained_on(dataset, infos):
        trained = sorted({str((info.get("record") or {}).get("data_name")) for info in infos})
        print(f"cifar-tl: the app's examples are drawn shapes: {dataset.name} ({source}) is not the data the "
              f"checkpoints were trained on ({', '.join(trained)}); set CIFAR_TL_DATA to that data", file=sys.stderr)
        return _synthetic_examples(), None
    examples = []
    for c, name in enumerate(dataset.classes[:MAX_EXAMPLES]):
        where = np.flatnonzero(dataset.test_labels == c)
        if len(where):
            examples.append((name, dataset.test_images[where[0]]))
    return examples, dataset.name


def write_examples(folder: Path, examples: list[tuple[str, np.ndarray]]) -> list[str]:
    """Write the (caption, uint8 image) examples into `folder` as PNG files; small ones are enlarged to
    128x128 for display. Returns their paths."""
    paths = []
    for i, (caption, pixels) in enumerate(examples):
        image = Image.fromarray(pixels)
        if max(image.size) < EXAMPLE_DISPLAY_SIZE:
            scale = EXAMPLE_DISPLAY_SIZE / max(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in caption)
        path = folder / f"{i:02d}-{safe}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def _benchmark_rows(models: list[tuple]) -> list[list]:
    rows = []
    for _, info in models:
        record = info["record"] or {}
        accuracy = record.get("test_accuracy")
        rows.append([
            info["backbone"],
            Path(info["path"]).name,
            f"{100 * accuracy:.1f}%" if isinstance(accuracy, (int, float)) else "n/a",
            record.get("test_images") if record.get("test_images") is not None else "n/a",
            f"{info['parameters']:,}",
            round(info["file_bytes"] / 1e6, 2),
        ])
    return rows


BENCHMARK_HEADERS = ["backbone", "checkpoint", "test accuracy", "test images", "parameters", "size (MB)"]


def build_app(checkpoint_dir: str | os.PathLike):
    """The Gradio Blocks of the demo for every checkpoint in `checkpoint_dir` (launch it with
    `theme=offline_theme()`, as `launch` does, so that it loads no fonts from the internet)."""
    files = checkpoint_files(checkpoint_dir)
    models, skipped = load_checkpoints(files)
    gr = _gradio()

    example_dir = Path(tempfile.mkdtemp(prefix="cifar-tl-app-"))
    atexit.register(shutil.rmtree, example_dir, True)
    examples, examples_from = example_images([info for _, info in models])
    example_paths = write_examples(example_dir, examples)
    example_captions = [caption for caption, _ in examples]
    if examples_from:
        examples_label = f"Test images of {examples_from}, one per class, click one. True labels: "
    else:
        examples_label = ("Drawn shapes (the data the checkpoints were trained on is not at hand: set CIFAR_TL_DATA "
                          "to it for real test images), click one: ")
    examples_label += ", ".join(example_captions)

    def classify(payload):
        """The status line and every model's top classes. The image arrives as the uploaded file (the event
        does not preprocess it), so that whatever was uploaded, classify decodes it and says what is wrong
        with it in the page; the server goes on serving."""
        try:
            pixels = upload_pixels(payload)
            outputs = []
            for model, info in models:
                top = predict_arrays(model, info, [pixels], TOP_K)[0]
                outputs.append({p["label"]: p["probability"] for p in top})
        except UserError as exc:
            return [f"**Could not classify:** {exc}", *[None] * len(models)]
        except Exception as exc:  # noqa: BLE001 - a page must get an answer, whatever the image did
            print(f"cifar-tl: the app could not classify an upload: {exc.__class__.__name__}: {exc}", file=sys.stderr)
            return [f"**Could not classify:** the image could not be processed ({exc.__class__.__name__}); "
                    "try another image", *[None] * len(models)]
        return ["", *outputs]

    data_names = sorted({str((info["record"] or {}).get("data_name")) for _, info in models})
    with gr.Blocks(title="cifar-tl: every model, side by side") as demo:
        gr.Markdown(
            f"# cifar-tl: every model, side by side\n"
            f"{len(models)} checkpoint(s) from `{checkpoint_dir}`, trained on {', '.join(data_names)}. "
            "Click an example or upload an image, then classify it with every model."
            + "".join(f"\n\n**Skipped** `{path.name}`: {why}" for path, why in skipped),
            elem_id="summary",
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", image_mode="RGB", sources=["upload", "clipboard"], format="png",
                                 label="Image", height=260, elem_id="input-image")
                button = gr.Button("Classify with every model", variant="primary", elem_id="classify")
                status = gr.Markdown("", elem_id="status")
                truth = gr.Markdown("", elem_id="true-label")
                shown = gr.Examples(examples=[[p] for p in example_paths], inputs=image, label=examples_label,
                                    elem_id="examples")
            with gr.Column(scale=2):
                with gr.Row():
                    labels = [
                        gr.Label(num_top_classes=TOP_K, label=f"{info['backbone']} · {Path(info['path']).name}",
                                 elem_id=f"prediction-{i}", min_width=220)
                        for i, (_, info) in enumerate(models)
                    ]
        gr.Markdown("## Benchmark\nTest accuracy and test images are from each checkpoint's run record.")
        gr.Dataframe(value=_benchmark_rows(models), headers=BENCHMARK_HEADERS, interactive=False,
                     elem_id="benchmark")
        button.click(classify, inputs=image, outputs=[status, *labels], api_name="classify", preprocess=False)

        def true_label(event) -> tuple[str, str]:  # the example's label, and no status left from before
            caption = example_captions[event.index]
            return (f"**True label:** {caption}" if examples_from else f"**Example:** {caption} (a drawn shape)"), ""

        # Gradio passes the clicked example's index to a parameter typed gr.SelectData; set as an object, since
        # this module's annotations are strings and `gr` is not a module-level name that Gradio could resolve.
        true_label.__annotations__["event"] = gr.SelectData
        shown.dataset.select(true_label, inputs=None, outputs=[truth, status])
        # The user's own image: no label is known, and no earlier message applies. Cleared in the page itself (no
        # round trip to the server), so that it cannot arrive after the answer to a Classify clicked at once.
        image.upload(None, inputs=None, outputs=[truth, status], js="() => ['', '']", show_progress="hidden",
                     queue=False)
    demo.example_dir = example_dir
    return demo


def launch_options(demo, host: str = "127.0.0.1", port: int = 7860) -> dict:
    """How `launch` serves `demo` (`demo.launch(**launch_options(...))`): on `host` only, offline, its
    examples' folder readable, uploads above MAX_UPLOAD_BYTES refused."""
    return dict(server_name=host, server_port=port, share=False, inbrowser=False, theme=offline_theme(),
                ssr_mode=False, allowed_paths=[str(demo.example_dir)], max_file_size=MAX_UPLOAD_BYTES)


def launch(checkpoint_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Build the app and serve it until interrupted (no share link, no browser opened)."""
    demo = build_app(checkpoint_dir)
    try:
        demo.launch(**launch_options(demo, host, port))
    except OSError as exc:  # the port is taken, or the address is not this machine's
        reason = str(exc).split(". ")[0].strip() or exc.__class__.__name__
        raise UserError(f"the app could not listen on {host}:{port} ({reason}); the port may be taken: "
                        "pass another --port (or --host 127.0.0.1)") from exc
