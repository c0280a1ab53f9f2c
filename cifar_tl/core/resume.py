"""Training state on disk, so an interrupted run resumes from its last finished epoch.

After every epoch the trainer writes everything the next epoch depends on (weights, optimizer, position
in the schedule, the weights' moving average, every random-number generator, the history so far) to one
file, atomically. A run started again with the same identity reads it and carries on; on a CPU the record
it ends with is the same, field for field, as an uninterrupted run's (timings aside). When a training call
ends, its file says so and holds the final weights, so a later step of the same run (self-training's
students) can start again without training the teacher twice.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cifar_tl.core.files import save_torch

FORMAT = 1  # bump when the file's layout changes: older files are then ignored, not misread


@dataclass(frozen=True)
class StateFile:
    """Where one training call of a run keeps its state: `<folder>/<tag>.pt`."""

    folder: Path
    tag: str = "train"

    @property
    def path(self) -> Path:
        return self.folder / f"{self.tag}.pt"

    def child(self, tag: str) -> StateFile:
        """The state file of another training call of the same run (a self-training round's student)."""
        return StateFile(self.folder, tag)

    def load(self, device: torch.device) -> dict | None:
        """The saved state, or None when there is none (or it is unreadable or of another format)."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location=device, weights_only=True)
        except Exception:  # cut short by a full disk, or from another version: start the call over
            return None
        return state if isinstance(state, dict) and state.get("format") == FORMAT else None

    def save(self, state: dict) -> None:
        save_torch(self.path, {"format": FORMAT, **state})

    def clear(self) -> None:
        """Remove every state file of the run (its record is written, or it is to be trained afresh)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def rng_states(generator: torch.Generator, rng: np.random.Generator) -> dict:
    """The trainer's generators (batch order and augmentation; MixUp/CutMix) and the global ones
    (dropout), on the CPU and every GPU."""
    return {
        "generator": generator.get_state(),
        "numpy": rng.bit_generator.state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_states(states: dict, generator: torch.Generator, rng: np.random.Generator) -> None:
    generator.set_state(states["generator"].cpu())
    rng.bit_generator.state = states["numpy"]
    torch.set_rng_state(states["torch"].cpu())
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])
