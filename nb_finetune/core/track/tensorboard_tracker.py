"""TensorBoard: event files under `<run_dir>/tensorboard/` (`tensorboard --logdir <output_dir>` shows every
run); config and live changes as text, the status at the end."""

from __future__ import annotations

from .base import Tracker

__all__ = ["TensorBoardTracker"]


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, cfg, run_dir):
        super().__init__(cfg, run_dir)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def start(self, e) -> None:
        table = "\n".join(f"| {k} | {v} |" for k, v in self.params().items())
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + table, e.start_step)

    def log_metrics(self, metrics, step, when) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(
                k.replace("eval_", "eval/", 1) if k.startswith("eval_") else f"train/{k}", v, step, when
            )
        self.writer.flush()

    def log_change(self, e) -> None:
        self.writer.add_text("live_changes", self.change_text(e), e.step)

    def finish(self, e, model_dir) -> None:
        self.writer.add_text("status", f"{e.state} ({e.reason}) at step {e.step}", e.step)
        if model_dir is not None:
            self.writer.add_text("model", str(model_dir), e.step)
        self.writer.close()
