"""The course as a whole, from its files: every chapter's questionnaire, the page faults that once reached the
built book (each checked where it could come back), no sentence the records contradict, the introduction built
from records, one repository address, and a README that a newcomer can follow. The last tests read the built
book itself (slow: they share the session's book builds)."""

from __future__ import annotations

import json
import re
import subprocess

import nbformat
import pytest

from cifar_tl.book import course, repository
from cifar_tl.book.build import ROOT, chapters

CHAPTERS = chapters()


def _notebook(chapter_id: str) -> nbformat.NotebookNode:
    return nbformat.read(next(c.path for c in CHAPTERS if c.id == chapter_id), as_version=4)


def _code(chapter_id: str) -> str:
    return "\n".join(c.source for c in _notebook(chapter_id).cells if c.cell_type == "code")


def _markdown(chapter_id: str) -> str:
    return "\n".join(c.source for c in _notebook(chapter_id).cells if c.cell_type == "markdown")


def _sections(notebook) -> list[tuple[str, str]]:
    found = []
    for cell in notebook.cells:
        heading = next((line[3:].strip() for line in cell.source.splitlines() if line.startswith("## ")), None)
        if cell.cell_type == "markdown" and heading is not None:
            found.append((heading, cell.source))
    return found


@pytest.fixture(scope="module")
def records():
    return course.book_records()


# -- every chapter ends with a questionnaire ----------------------------------------------------------------


@pytest.mark.parametrize("chapter_id", [c.id for c in CHAPTERS])
def test_chapter_ends_with_a_questionnaire_after_its_exercises(chapter_id):
    notebook = _notebook(chapter_id)
    names = [name for name, _ in _sections(notebook)]
    assert names[-3:] == ["Summary", "Exercises", "Questionnaire"], names[-3:]
    assert notebook.cells[-1].cell_type == "markdown" and notebook.cells[-1].source.startswith("## Questionnaire")
    text = notebook.cells[-1].source
    questions = re.findall(r"(?m)^\d+\.\s", text)
    answers = re.findall(r"(?ms)^[ \t]*:::\{admonition\} Answer\n[ \t]*:class: dropdown\n.*?^[ \t]*:::[ \t]*$", text)
    assert len(questions) >= 3, f"{len(questions)} questions; at least 3"
    assert len(answers) == len(questions), "every question has one folded answer (:class: dropdown)"
    assert not re.search(r"\d+(\.\d+)?\s*%", text), "a questionnaire types a percentage in (measured numbers come from code)"


# -- the page faults, each where it could come back ---------------------------------------------------------


def test_chapter_1_states_the_count_of_images_it_shows_from_the_code_that_shows_them():
    code, markdown = _code("01-data"), _markdown("01-data")
    assert "[:shown_per_class]" in code and "{shown_per_class}" in code
    assert not re.search(r"(?i)the first (twenty|ten|five|\d+) training images", markdown)


def test_chapter_1_says_the_validation_images_are_labels_too():
    code, markdown = _code("01-data"), _markdown("01-data")
    assert "labels too" in markdown
    assert "labelled = len(train_idx) + len(val_idx)" in code and "Cross-validate" in code and "Hold some out" in code


def test_chapter_3_words_its_pairs_edges_and_time_from_the_tables():
    code = _code("03-linear-probe")
    assert "tables.pairs_sentence(pairs)" in code and "could not teach" not in code
    assert "tables.probe_grid_edges(records)" in code
    assert "tables.probe_time_split(records)" in code and "almost free" not in code


def test_chapters_4_and_7_measure_the_distance_from_the_pretrained_weights():
    for chapter_id in ("04-naive-finetune", "07-staged-unfreezing"):
        code = _code(chapter_id)
        assert "tables.distances_from_pretrained(" in code and "lacking" in code, chapter_id


def test_chapter_11_replays_what_the_average_holds_and_never_rounds_it_to_zero():
    code = _code("11-tta-averaging")
    assert "recipe_cards.ema_summary(" in code and "recipe_cards.fmt_share(" in code
    assert "still comes from before the fine-tuning stage" not in code
    assert "course.as_evaluated(" in code  # the two changes of the rung, taken apart where records allow


def test_chapter_13_never_writes_a_range_whose_ends_are_equal():
    code = _code("13-unlabelled")
    assert "course.fmt_range(kept)" in code and "(from {min(kept):,} to {max(kept):,})" not in code
    assert "ctx.runs(" not in _markdown("13-unlabelled")  # the context has no such method


def test_appendix_a1_compares_latency_at_one_input_size():
    assert "course.fastest_at_common_size(" in _code("a1-backbones")


def test_chapter_12_has_the_recipe_card_the_own_data_guide_and_the_error_analysis():
    code, markdown = _code("12-full-recipe"), _markdown("12-full-recipe")
    for call in ("recipe_cards.recipe_card(", "tables.step_effects(", "own_data.write_digits_folders(",
                 "tables.per_class_accuracy(", "tables.directed_confusions(", "tables.confident_mistakes(",
                 "plots.mistake_gallery("):
        assert call in code, call
    for heading in ("## The recipe card", "## On your own images", "### A worked example", "## The errors that remain"):
        assert heading in markdown, heading
    assert "--recipe linear_probe" in markdown


@pytest.mark.parametrize("chapter_id", ["02-scratch", "03-linear-probe", "04-naive-finetune", "05-schedule",
                                        "06-discriminative-lr", "07-staged-unfreezing", "08-batchnorm",
                                        "09-augmentation", "10-regularisation", "11-tta-averaging", "13-unlabelled",
                                        "a2-cost"])
def test_chapter_runs_every_recipe_the_campaign_trains_for_it(chapter_id):
    from cifar_tl.records.campaign import chapter_recipes

    code = _code(chapter_id)
    shown = set(re.findall(r'run_seeds\("(\w+)"', code))
    assert set(chapter_recipes(chapter_id)) <= shown, set(chapter_recipes(chapter_id)) - shown


@pytest.mark.parametrize("chapter_id", [c.id for c in CHAPTERS])
def test_decisions_are_worded_from_their_numbers(chapter_id):
    code = _code(chapter_id)
    if "ladder.decision(" in code:
        assert "['verdict']" not in code, "word a decision with pages.decision_text (its interval and outcome)"
        assert "pages.decision_text(" in code or "pages.decision_outcome(" in code


# -- no claim the records contradict, in any source ---------------------------------------------------------


def _prose_sources() -> dict[str, str]:
    texts = {"README.md": (ROOT / "README.md").read_text()}
    texts.update({f"book/{p.name}": p.read_text() for p in (ROOT / "book").glob("*.md")})
    for path in [ROOT / "book" / "intro.ipynb", *(c.path for c in CHAPTERS)]:
        notebook = nbformat.read(path, as_version=4)
        texts[str(path.relative_to(ROOT))] = "\n".join(c.source for c in notebook.cells)
    return texts


def test_no_source_says_what_the_records_contradict(records):
    problems = {name: found for name, text in _prose_sources().items()
                if (found := course.contradicted_claims(text, records))}
    assert not problems, problems


def test_the_setup_page_says_what_cifar_tl_book_does():
    page = (ROOT / "book" / "setup.md").read_text()
    assert "chooses `full` when a GPU" not in page
    assert "committed records" in page


# -- the introduction -----------------------------------------------------------------------------------------


def test_the_introduction_is_a_notebook_the_build_executes_from_records():
    assert not (ROOT / "book" / "intro.md").exists(), "two pages named book/intro"
    notebook = nbformat.read(ROOT / "book" / "intro.ipynb", as_version=4)
    assert notebook.metadata["mystnb"]["execution_mode"] == "force"
    assert not [c for c in notebook.cells if c.cell_type == "code" and (c.outputs or c.execution_count)]
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    assert "course.book_records()" in code and "course.story_table(" in code and "plots.ladder_story(" in code
    assert "course.chapter_build(" in code  # the plan marks the chapters built in the smoke profile
    assert "run_seeds" not in code and "cifar_tl.records.runner import run" not in code  # it reads, never trains
    markdown = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    assert "13-unlabelled" in code and "cifar-tl run 03-linear-probe" in markdown
    assert re.search(r"(?m)^root: book/intro$", (ROOT / "_toc.yml").read_text())


def test_story_table_reads_every_rung_and_says_which_are_not_measured(records):
    table = course.story_table(records)
    assert list(table.index) == course.story_rungs()
    for name in table.index:
        runs = records.get(name, [])
        if len(runs) >= len(course.planned_seeds()):
            from cifar_tl.core.stats import accuracies, fmt_mean_std

            assert table.loc[name, "test accuracy"] == fmt_mean_std(accuracies(runs))
        else:
            assert table.loc[name, "test accuracy"].startswith("not measured yet")


# -- one repository address ---------------------------------------------------------------------------------


def test_every_install_line_names_the_repository_of_config_yml():
    url = repository.repository_url()
    assert url == repository.PUBLISHED_REPOSITORY, "the fallback for installed copies is _config.yml's address"
    mentions = repository.repository_mentions()
    assert len([m for m in mentions if m.startswith("notebooks/")]) == len(CHAPTERS)
    assert "book/setup.md" in mentions and "README.md" in mentions
    assert {u for urls in mentions.values() for u in urls} == {url}


def test_sync_url_rewrites_every_install_line_from_config_yml(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "book").mkdir()
    (tmp_path / "_config.yml").write_text("repository:\n  url: https://example.org/me/my-book/\n")
    line = '"cifar-tl @ git+https://github.com/cifar-tl/cifar-tl@v0.1.0"'
    for name in ("notebooks/01-data.ipynb", "book/setup.md", "README.md"):
        (tmp_path / name).write_text(f"install {line}\n")
    assert sorted(repository.sync_repository_url(tmp_path)) == ["README.md", "book/setup.md", "notebooks/01-data.ipynb"]
    assert "git+https://example.org/me/my-book@v0.1.0" in (tmp_path / "README.md").read_text()
    assert repository.sync_repository_url(tmp_path) == []


# -- the README, for a newcomer -------------------------------------------------------------------------------


def _readme() -> str:
    return (ROOT / "README.md").read_text()


def test_readme_first_screen_says_what_the_book_is_what_it_measured_and_how_to_open_it():
    first = "\n".join(_readme().splitlines()[:45])
    assert "100 labelled" in first or "100 labels" in first
    assert "Colab" in first and "cifar-tl run" in first
    assert re.search(r"\d+\.\d ± \d+\.\d% \(n=\d\)", first), "a measured number on the first screen"
    for words in ("CI machines", "wheel store"):
        assert words not in _readme()


def test_readme_numbers_are_the_records(records):
    table = course.story_table(records)
    rows = re.findall(r"(?m)^\| `(\w+)` \| \d+ \|[^|]*\| ([^|]+?\(n=\d+\)) \| ([^|]+?\(n=\d+\)) \|$", _readme())
    assert rows, "the README's ladder table"
    for name, validation, test in rows:
        assert validation == table.loc[name, "validation accuracy"], name
        assert test == table.loc[name, "test accuracy"], name
    measured = course.measured(records)
    assert [name for name, _, _ in rows] == measured, \
        "the README's table lists exactly the measured rungs: paste `python -m cifar_tl.book readme-table`"
    if measured == course.story_rungs():
        assert "still being trained" not in _readme(), "every rung is measured now"


def test_readme_main_command_uses_the_offline_archive_only_where_it_exists(tmp_path):
    readme = _readme()
    main = re.search(r"<!-- main-command -->\n```bash\n(.*?)\n```", readme, re.S).group(1)
    assignment = re.search(r'CIFAR_TL_DATA="(\$\{CIFAR_TL_DATA:-.*?\})"', main).group(1)
    probe = f'CIFAR_TL_DATA= ; printf "%s" "{assignment}"'
    without = subprocess.run(["bash", "-c", probe], cwd=tmp_path, capture_output=True, text=True).stdout
    assert without == "", "no archive beside the checkout: torchvision downloads CIFAR-10"
    (tmp_path / "checkout").mkdir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "cifar10-jpeg.tar.gz").write_bytes(b"")
    beside = subprocess.run(["bash", "-c", probe], cwd=tmp_path / "checkout", capture_output=True, text=True).stdout
    assert beside == "../shared/data/cifar10-jpeg.tar.gz"
    assert "cifar-tl book" in main


def test_ci_still_finds_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    awk = re.search(r"command=\$\(awk '([^']*)' README\.md\)", ci).group(1)
    found = subprocess.run(["awk", awk, "README.md"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert found.endswith("python -m pytest -q") and "pip install -e '.[test]'" in found


# -- the built book ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_built_pages_hold_no_claim_the_records_contradict(published_book, records):
    build = published_book[0]
    problems = {}
    for page in sorted((build / "html").rglob("*.html")):
        if "_static" in page.parts or "reports" in page.parts:
            continue
        found = course.contradicted_claims(course.page_text(page.read_text()), records)
        if found:
            problems[str(page.relative_to(build / "html"))] = found
    assert not problems, problems


@pytest.mark.slow
def test_built_introduction_shows_the_ladder_from_the_records(published_book, records):
    build = published_book[0]
    page = (build / "html" / "book" / "intro.html").read_text()
    text = course.page_text(page)
    for name in course.measured(records):
        assert name in text
    full = records.get("full")
    if full:
        from cifar_tl.core.stats import accuracies, fmt_mean_std

        assert fmt_mean_std(accuracies(full)) in text
    assert "<img" in page  # the ladder's figure
    assert "~90%" in text and "Error" not in text


@pytest.mark.slow
def test_smoke_pages_carry_a_banner_at_their_top_and_a_mark_in_the_contents(published_book):
    from cifar_tl.book.build import chapter_profiles

    build = published_book[0]
    profiles, _ = chapter_profiles([c.id for c in CHAPTERS])
    index = (build / "html" / "notebooks" / "01-data.html").read_text()
    for chapter in CHAPTERS:
        page = (build / "html" / "notebooks" / f"{chapter.id}.html").read_text()
        banner = page.find("smoke-banner")
        if profiles[chapter.id] == "smoke":
            assert banner != -1 and banner < page.find("cell_input"), f"{chapter.id}: no banner above its first cell"
            assert re.search(rf'href="{re.escape(chapter.id)}\.html"[^>]*>[^<]*\(smoke\)', index), chapter.id
        else:
            assert banner == -1, chapter.id
            assert not re.search(rf'href="{re.escape(chapter.id)}\.html"[^>]*>[^<]*\(smoke\)', index), chapter.id
    assert json.dumps(profiles)  # every chapter was looked at


def test_the_worked_example_is_a_real_class_folder_dataset_with_its_licence(tmp_path):
    from cifar_tl.data import own_data
    from cifar_tl.data.sources import load_dataset

    root = own_data.write_digits_folders(tmp_path / "digits")
    assert "CC BY 4.0" in (root / "LICENCE.txt").read_text()
    counts = own_data.folder_counts(root)
    assert list(counts.columns) == ["train", "test"] and len(counts) == 10
    assert (counts["test"] == 40).all() and counts["train"].min() >= 100 + 20  # the example's per-class and validation
    dataset = load_dataset(root, progress=False)
    assert dataset.classes == [f"digit_{d}" for d in range(10)] and dataset.train_images.shape[1:] == (8, 8, 3)
    assert own_data.write_digits_folders(root) == root  # written once


def test_python_m_cifar_tl_book_prints_the_readme_table_and_refuses_other_words(capsys):
    from cifar_tl.book.__main__ import main

    assert main(["readme-table"]) == 0 and capsys.readouterr().out.startswith("| rung | chapter |")
    assert main(["nonsense"]) == 2 and "usage: python -m cifar_tl.book" in capsys.readouterr().err
