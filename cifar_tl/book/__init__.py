"""book: what the chapters call, and the build that runs them.

A chapter imports what it uses from here, in one line: the book's own modules (`chapter`, `pages`, `plots`,
`tables`, ...) and the few names of the library below that a chapter calls directly. `book.build` executes the
chapters with papermill and builds the site.
"""

from cifar_tl.book import (bn_diagnostics, chapter, cost_views, course, ladder, pages, plots, pseudo_label_views,
                           recipe_cards, tables)
from cifar_tl.book.build import chapters
from cifar_tl.book.chapter import record_for, render_only, run_seeds
from cifar_tl.core import metrics, stats
from cifar_tl.core.errors import UserError
from cifar_tl.core.files import cache_dir
from cifar_tl.core.metrics import hardest_pairs
from cifar_tl.data import augment, own_data
from cifar_tl.data.sources import load_dataset
from cifar_tl.data.subsets import balanced_subset, capped_test
from cifar_tl.models.backbones import BACKBONES, create_model
from cifar_tl.records import campaign
from cifar_tl.records.identity import DEFAULT_VAL_PER_CLASS, make_config, stale_reason
from cifar_tl.records.store import committed_records, machine_name, records_location
from cifar_tl.training import logistic_probe, self_training
from cifar_tl.training.loop import train, training_step
from cifar_tl.training.profiles import get_profile
from cifar_tl.training.recipes import RECIPES

__all__ = [
    "augment", "BACKBONES", "balanced_subset", "bn_diagnostics", "cache_dir", "campaign", "capped_test", "chapter",
    "chapters", "committed_records", "cost_views", "course", "create_model", "DEFAULT_VAL_PER_CLASS", "get_profile",
    "hardest_pairs", "ladder", "load_dataset", "logistic_probe", "machine_name", "make_config", "metrics",
    "own_data", "pages", "plots", "pseudo_label_views", "recipe_cards", "RECIPES", "record_for", "records_location",
    "render_only", "run_seeds", "self_training", "stale_reason", "stats", "tables", "train", "training_step",
    "UserError",
]
