"""Progress display for the training loop: a rich bar on a terminal, one plain line per epoch otherwise."""

from __future__ import annotations

import math
import os
import sys

from regraft.training.loop import Callback, EpochResult


def epoch_line(r: EpochResult, epochs: int) -> str:
    """One evaluation as a line; ``lr`` is the mean LR of the steps it covers (the LR used). A
    multi-label row shows its mAP and macro F1 (at 0.5) where a single-label one shows accuracy."""
    stage = f"[{r.stage}] " if r.stage not in ("train", "") else ""
    epoch = f"{r.epoch:.2f}" if not float(r.epoch).is_integer() else str(int(r.epoch))
    lr = f"  lr {r.lr:.2e}" if r.lr is not None else ""
    train_acc = f" acc {r.train_acc:.3f}" if r.train_acc is not None else ""
    if r.val_acc is not None:
        val = f" acc {r.val_acc:.3f}"
    else:
        val = f" mAP {r.extra.get('val_map', math.nan):.3f} F1 {r.extra.get('val_f1_macro', math.nan):.3f}"
    return (
        f"{stage}epoch {epoch}/{epochs}  train loss {r.train_loss:.4f}{train_acc}  "
        f"val loss {r.val_loss:.4f}{val}{lr}  "
        f"{r.images_per_sec:.1f} img/s  {r.epoch_seconds:.1f}s"
    )


class PlainProgress(Callback):
    """One line per epoch and per message, for logs and pipes."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout
        self.epochs = 0

    def on_fit_start(self, *, epochs, start_epoch, steps_per_epoch, stage) -> None:
        self.epochs = epochs

    def on_epoch_end(self, result: EpochResult) -> None:
        print(epoch_line(result, self.epochs), file=self.stream, flush=True)

    def on_message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class RichProgress(PlainProgress):
    """A progress bar with ETA per epoch; the epoch's line stays when it ends."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        super().__init__()
        self.console = Console()
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
            console=self.console, transient=True,
        )
        self.task = None
        self.steps = 0

    def on_fit_start(self, *, epochs, start_epoch, steps_per_epoch, stage) -> None:
        self.epochs, self.steps = epochs, steps_per_epoch
        self.progress.start()

    def on_epoch_start(self, epoch: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"epoch {epoch}/{self.epochs}", total=self.steps, loss="-")

    def on_step(self, epoch, step, steps, loss) -> None:
        if self.task is not None:
            shown = f"{loss:.4f}" if math.isfinite(loss) else str(loss)
            self.progress.update(self.task, completed=step, loss=shown)

    def on_epoch_end(self, result: EpochResult) -> None:
        self.progress.console.print(epoch_line(result, self.epochs), highlight=False)
        if result.epoch >= self.epochs:
            self.close()

    def on_message(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, markup=False)

    def close(self) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        self.progress.stop()


def make_progress(quiet: bool = False) -> list[Callback]:
    # under torchrun / accelerate launch only the main process reports
    if quiet or os.environ.get("RANK", "0").strip() not in ("", "0"):
        return []
    if sys.stdout.isatty() and os.environ.get("REGRAFT_NO_PROGRESS") != "1":
        return [RichProgress()]
    return [PlainProgress()]
