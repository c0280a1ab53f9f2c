"""`cifar-tl`: train one run, list and execute chapters, build the book.

A user mistake ends in one line on stderr and exit status 2; `--debug` (or CIFAR_TL_DEBUG=1) shows the
full traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from cifar_tl.core.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the whole usage block
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _clock_time(text: str) -> tuple[int, int]:
    try:
        hours, minutes = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time of day as HH:MM") from None
    if not (0 <= hours < 24 and 0 <= minutes < 60):
        raise argparse.ArgumentTypeError(f"{text!r} is not a time of day as HH:MM (00:00 to 23:59)")
    return hours, minutes


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def _sizes(text: str) -> list[int]:
    """Input sizes separated by commas, e.g. 32,64,128."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of whole numbers such as 32,64,128") from None


def _seed(text: str) -> int:
    from cifar_tl.data.subsets import MAX_SEED

    value = _non_negative_int(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed is at most {MAX_SEED}, got {value}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {value}")
    return value


def _test_limit(text: str):
    return None if text.lower() in ("all", "none") else _positive_int(text)


def build_parser() -> argparse.ArgumentParser:
    from cifar_tl.core.device import PRECISIONS
    from cifar_tl.models.backbones import BACKBONES
    from cifar_tl.training.profiles import PROFILES
    from cifar_tl.training.recipes import RECIPES

    precision_help = ("bf16 autocast or fp32; auto (the default): bf16 where the hardware runs it natively "
                      "(a GPU with bf16, a CPU with AVX-512 BF16 or AMX), else fp32")

    parser = _Parser(prog="cifar-tl", description="Transfer learning with few labels: runs, chapters and the book.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks (also CIFAR_TL_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train and evaluate one run (or read its record back)")
    train.add_argument("--backbone", default="efficientnet_lite0", help=f"one of: {', '.join(BACKBONES)}")
    train.add_argument("--recipe", default="linear_probe", help=f"one of: {', '.join(RECIPES)}")
    train.add_argument("--per-class", type=_positive_int, default=100, help="labelled training images per class")
    train.add_argument("--seed", type=_seed, default=0, help="which subset to draw")
    train.add_argument("--profile", default="full", help=f"one of: {', '.join(PROFILES)} (default: full)")
    train.add_argument("--image-size", type=_positive_int, help="input side in pixels (default: the profile's)")
    train.add_argument("--epochs", type=_positive_int, help="epochs of every stage (default: the recipe's)")
    train.add_argument("--test-limit", type=_test_limit, default=argparse.SUPPRESS,
                       help="a class-balanced cap on test images, or 'all' (default: the profile's)")
    train.add_argument("--val-per-class", type=_positive_int, default=50, help="validation images per class")
    train.add_argument("--eval-sizes", type=_sizes, metavar="N,N,...",
                       help="also classify the test images at these input sizes (the record keeps the predictions)")
    train.add_argument("--data", help="class-folder directory or .tar.gz, or 'cifar10' (default: $CIFAR_TL_DATA)")
    train.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if there is one)")
    train.add_argument("--precision", choices=PRECISIONS, default="auto", help=precision_help)
    train.add_argument("--force", action="store_true", help="train again even if the record exists")
    train.add_argument("--results", metavar="DIR",
                       help="also write the record into DIR/<machine>/ (full profile, whole test set only)")
    train.add_argument("--json", action="store_true", help="print exactly the run record as JSON on stdout")
    train.add_argument("--save-checkpoint", metavar="PATH",
                       help="train (even if the record exists) and save the model to PATH (a .pt file)")

    commands.add_parser("chapters", help="list the chapters, one line each, starting with its id")

    run = commands.add_parser("run", help="execute one chapter with papermill")
    run.add_argument("chapter", help="chapter id or number (see `cifar-tl chapters`)")
    run.add_argument("--profile", help=f"one of: {', '.join(PROFILES)} (default: the notebook's)")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="set a notebook parameter (repeatable)")
    run.add_argument("--out", default="_build/executed", help="folder for the executed notebook")

    bench = commands.add_parser("bench", help="training and evaluation speed: the library's loop against a naive one")
    bench.add_argument("--backbone", default="efficientnet_lite0", help=f"one of: {', '.join(BACKBONES)}")
    bench.add_argument("--image-size", type=_positive_int, default=224, help="input side in pixels")
    bench.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if there is one)")
    bench.add_argument("--batch-size", type=_positive_int, help="default: 256 on a GPU, 32 on a CPU")
    bench.add_argument("--steps", type=_positive_int, help="measured steps (default: 50 on a GPU, 8 on a CPU)")
    bench.add_argument("--workers", type=_non_negative_int, help="DataLoader workers of the naive loop")
    bench.add_argument("--precision", choices=PRECISIONS, default="auto", help=precision_help)
    bench.add_argument("--compile", action="store_true",
                       help="run the library's loop through torch.compile (compile time reported apart)")
    bench.add_argument("--out", help="also write the result as JSON to this file (atomically)")
    bench.add_argument("--json", action="store_true", help="print exactly the result as JSON on stdout")

    predict = commands.add_parser("predict", help="classify image files with a saved checkpoint")
    predict.add_argument("--checkpoint", required=True, help="a .pt file from `cifar-tl train --save-checkpoint`")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files of any size and format Pillow reads")
    predict.add_argument("--top", type=_positive_int, default=3, help="classes to show per image (default: 3)")
    predict.add_argument("--json", action="store_true", help="print exactly a JSON list, one object per image")

    app = commands.add_parser("app", help="the demo web app: every checkpoint in a folder, side by side")
    app.add_argument("--checkpoints", default="checkpoints", metavar="DIR",
                     help="folder of .pt checkpoints (default: ./checkpoints)")
    app.add_argument("--port", type=_port, default=7860, help="port to listen on (default: 7860)")
    app.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")

    results = commands.add_parser("results", help="summarise run records: accuracy over subsets, paired differences")
    results.add_argument("folders", nargs="*", default=["results"], metavar="FOLDER",
                         help="folders searched for run records (*.json), recursively (default: ./results)")
    results.add_argument("--base", metavar="RECIPE", help="also show each recipe's paired test difference from RECIPE")
    results.add_argument("--json", action="store_true", help="print exactly the table as a JSON list of rows")

    campaign = commands.add_parser(
        "campaign", help="train the full-profile records the book is missing, one at a time (resumable)")
    campaign.add_argument("--results", default=None, metavar="DIR",
                          help="folder of committed records (default: the checkout's results/)")
    campaign.add_argument("--data", help="class-folder directory or .tar.gz, or 'cifar10' (default: $CIFAR_TL_DATA)")
    campaign.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if there is one)")
    campaign.add_argument("--precision", choices=PRECISIONS, default="auto", help=precision_help)
    campaign.add_argument("--recipe", action="append", dest="recipes", metavar="RECIPE",
                          help="train only this recipe's missing runs (repeatable)")
    campaign.add_argument("--max-runs", type=_positive_int, help="stop after this many runs")
    deadline = campaign.add_mutually_exclusive_group()
    deadline.add_argument("--minutes", type=_positive_int,
                          help="start no run that its measured timings say cannot finish within N minutes from now")
    deadline.add_argument("--until", type=_clock_time, metavar="HH:MM",
                          help="start no run that its measured timings say cannot finish by this time of day")
    shown = campaign.add_mutually_exclusive_group()
    shown.add_argument("--status", action="store_true", help="only print what is done, missing and stale")
    shown.add_argument("--commands", action="store_true",
                       help="only print one `cifar-tl train` command per missing run, for a scheduler")

    book = commands.add_parser("book", help="execute every chapter and build the website into _build/html")
    book.add_argument("--profile", help=f"build every chapter in one profile: {', '.join(PROFILES)} (default: each "
                      "chapter from its committed full-profile records, smoke where they are missing)")
    book.add_argument("--build-dir", metavar="DIR", help="output folder (default: _build in the checkout)")
    book.add_argument("--reuse-smoke", metavar="DIR",
                      help="copy chapters to be built in the smoke profile from DIR (executed earlier) instead of "
                           "executing them again")
    book.add_argument("--jobs", type=int, metavar="N",
                      help="chapters executed side by side, each with its share of the cores (default: 2 where there "
                           "are two cores or more, else 1)")
    return parser


def _train(args) -> None:
    from cifar_tl.records.identity import make_config
    from cifar_tl.records.runner import run

    config = make_config(
        args.recipe, args.backbone, per_class=args.per_class, seed=args.seed, profile=args.profile,
        image_size=args.image_size, epochs=args.epochs, test_limit=getattr(args, "test_limit", "profile"),
        val_per_class=args.val_per_class, data=args.data, precision=args.precision, device=args.device,
        eval_sizes=args.eval_sizes,
    )
    if args.save_checkpoint:
        from cifar_tl.models.checkpoints import save_checkpoint

        record, model = run(config, force=args.force, progress=True, device=args.device, return_model=True)
        save_checkpoint(args.save_checkpoint, model, record["data"]["classes"], config.image_size, record)
        print(f"cifar-tl: saved checkpoint {args.save_checkpoint}", file=sys.stderr)
    else:
        record = run(config, force=args.force, progress=True, device=args.device)
    if args.results:
        from cifar_tl.records.campaign import save_to_results

        path = save_to_results(record, Path(args.results))
        print(f"cifar-tl: wrote {path}", file=sys.stderr)
    if args.json:
        json.dump(record, sys.stdout)
        sys.stdout.write("\n")
        return
    m = record["metrics"]
    tested = (f"test accuracy {m['test_accuracy']:.4f} on {m['test_images']} images" if m.get("test_read", True)
              else "test split not read (pilot)")
    print(f"{record['name']}: {tested}, validation accuracy {m['val_accuracy']:.4f}, "
          f"{record['timing']['total_seconds']:.0f} s")


def _chapters(args) -> None:
    from cifar_tl.book.build import chapters

    for chapter in chapters():
        print(f"{chapter.id}\t{chapter.title}")


def _run_chapter(args) -> None:
    from cifar_tl.book.build import find_chapter, parse_parameters, run_chapter
    from cifar_tl.training.profiles import get_profile

    chapter = find_chapter(args.chapter)
    parameters = parse_parameters(chapter, args.parameter)
    if args.profile:
        get_profile(args.profile)
        parameters["profile"] = args.profile
    out = run_chapter(chapter, Path(args.out), parameters)
    print(out)


def _bench(args) -> None:
    from cifar_tl.core.files import write_json
    from cifar_tl.models.backbones import check_backbone
    from cifar_tl.records.bench import bench

    check_backbone(args.backbone)
    result = bench(args.backbone, args.image_size, args.device, args.batch_size, args.steps, args.workers,
                   precision=args.precision, compile=args.compile)
    if args.out:
        write_json(args.out, result)
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
        return
    print(f"{result['backbone']} at {result['image_size']}x{result['image_size']} on {result['device']} "
          f"({result['machine']['gpu'] or result['machine']['cpu']}), {result['precision']}, "
          f"compile {result['compile']}:\n"
          f"  training, this library: {result['train_images_per_second']:.1f} images/s "
          f"(overhead outside the model: {100 * result['overhead_fraction']:.1f}%)\n"
          f"  training, naive DataLoader + PIL pipeline: {result['naive_train_images_per_second']:.1f} images/s\n"
          f"  evaluation: {result['eval_images_per_second']:.1f} images/s")


def _predict(args) -> None:
    from cifar_tl.models.checkpoints import load_checkpoint
    from cifar_tl.models.predict import predict_images

    model, info = load_checkpoint(args.checkpoint)
    results = predict_images(model, info, args.images, args.top)
    if args.json:
        json.dump(results, sys.stdout)
        sys.stdout.write("\n")
        return
    width = max(len(p["label"]) for result in results for p in result["predictions"])
    for result in results:
        print(result["image"])
        for rank, p in enumerate(result["predictions"], 1):
            print(f"  {rank:>2}. {p['label']:<{width}}  {100 * p['probability']:6.2f}%")


def _app(args) -> None:
    from cifar_tl.app import checkpoint_files, launch

    checkpoint_files(args.checkpoints)  # a missing or empty folder fails here, before gradio loads
    launch(args.checkpoints, host=args.host, port=args.port)


def _results(args) -> None:
    from cifar_tl.book.tables import reference_table
    from cifar_tl.records.store import read_records
    from cifar_tl.training.recipes import get_recipe

    if args.base:
        get_recipe(args.base)
    records, skipped = [], []
    for folder in args.folders:
        if not Path(folder).is_dir():
            raise UserError(f"{folder!r} is not a folder of run records")
        found, not_records = read_records(folder)
        records += found
        skipped += not_records
    if skipped:
        print(f"cifar-tl: skipped {len(skipped)} file(s) that are not run records: {', '.join(skipped)}",
              file=sys.stderr)
    if not records:
        raise UserError(f"no run records (JSON from `cifar-tl train --json`) under {', '.join(args.folders)}")
    table = reference_table(records, base=args.base)
    if args.json:
        json.dump(table.to_dict(orient="records"), sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
        return
    print(table.to_string(index=False))


def _campaign(args) -> None:
    from cifar_tl.records.campaign import (book_runs, campaign_order, campaign_status, deadline_from, describe,
                                           machine_slug, run_campaign, train_command)
    from cifar_tl.records.store import results_dirs
    from cifar_tl.training.recipes import get_recipe

    for name in args.recipes or []:
        get_recipe(name)
        if name not in {r.recipe for r in book_runs()}:
            raise UserError(f"recipe {name!r} is not shown in the book; the campaign trains only the book's runs")
    if args.results:
        results = Path(args.results)
        os.environ["CIFAR_TL_RESULTS"] = str(results.absolute())
    else:
        found = results_dirs(writable=True)
        if not found:
            raise UserError("no results/ folder here: run from a checkout of cifar-tl, or pass --results DIR")
        results = found[0]
    from cifar_tl.data.sources import check_source

    check_source(args.data)  # a missing path: one line now, before any run is claimed
    if args.status or args.commands:
        status = campaign_status(args.data)
        if args.commands:
            for planned in campaign_order(status.missing, status, machine_slug()):
                if not args.recipes or planned.recipe in args.recipes:
                    print(train_command(planned, results))
        else:
            print(describe(status, machine_slug()))
        return
    run_campaign(results, data=args.data, device=args.device, precision=args.precision, max_runs=args.max_runs,
                 recipes=args.recipes, deadline=deadline_from(args.minutes, args.until))


def _book(args) -> None:
    from cifar_tl.book.build import build_book
    from cifar_tl.training.profiles import get_profile

    if args.profile:
        get_profile(args.profile)
    else:
        print("cifar-tl: building the published book: each chapter from its committed full-profile records in "
              "results/, or in the smoke profile where they are not all there yet", file=sys.stderr)
    started = time.perf_counter()
    for folder in (args.reuse_smoke,):
        if folder and not Path(folder).is_dir():
            raise UserError(f"--reuse-smoke {folder!r} is not a folder of executed chapters")
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, not {args.jobs}")
    html = build_book(args.profile, reuse=Path(args.reuse_smoke) if args.reuse_smoke else None,
                      build=Path(args.build_dir).absolute() if args.build_dir else None, jobs=args.jobs)
    print(f"cifar-tl: built {html / 'index.html'} in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def _end_progress_bars() -> None:
    """Close the progress bars an error cut short, so that the error's line starts a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close must not hide the error
            pass


def _exit_on_sigterm(signum, frame):
    # A kill (SIGTERM) unwinds like Ctrl-C, so atomic writes delete their temporary files.
    raise KeyboardInterrupt


def _interrupt_once(signum, frame):
    # The first Ctrl-C unwinds; any later one (a second press, a terminal signalling the whole process group)
    # is ignored, so it cannot cut the clean-up short and end the program with a traceback instead of 130.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    debug = os.environ.get("CIFAR_TL_DEBUG", "") not in ("", "0")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    saved_results = os.environ.get("CIFAR_TL_RESULTS")  # `campaign --results` sets it for the command's runs
    try:
        args = build_parser().parse_args(argv)
        debug = debug or args.debug
        commands = {"train": _train, "chapters": _chapters, "run": _run_chapter, "bench": _bench, "results": _results,
                    "campaign": _campaign, "book": _book, "predict": _predict, "app": _app}
        commands[args.command](args)
        return 0
    except UserError as exc:
        if debug:
            raise
        _end_progress_bars()
        print(f"cifar-tl: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine failed under the program: a full disk, a folder it may not write
        if debug:
            raise
        from cifar_tl.core.files import os_error_line

        _end_progress_bars()
        print(f"cifar-tl: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        _end_progress_bars()
        print("cifar-tl: interrupted; nothing half-written was kept. Run the same command again: a training run "
              "resumes from its last finished epoch", file=sys.stderr)
        return 130
    finally:  # main called in-process (tests, notebooks) leaves the caller's environment as it was
        if saved_results is None:
            os.environ.pop("CIFAR_TL_RESULTS", None)
        else:
            os.environ["CIFAR_TL_RESULTS"] = saved_results


def run() -> None:
    """The `cifar-tl` program: `main`, with Ctrl-C handled once, and its status as the exit code."""
    signal.signal(signal.SIGINT, _interrupt_once)
    sys.exit(main())


if __name__ == "__main__":
    run()
