"""Weights & Biases: offline mode unless WANDB_MODE / an API key says otherwise (files under
`<run_dir>/wandb/`, `wandb sync` uploads them later); the final model as a `model` artifact."""

from __future__ import annotations

import os

from .base import Tracker

__all__ = ["WandbTracker"]


class WandbTracker(Tracker):
    name = "wandb"
    loggers = ("wandb",)

    def __init__(self, cfg, run_dir):
        super().__init__(cfg, run_dir)
        os.environ.setdefault("WANDB_SILENT", "true")  # the worker never prints into the cell
        import wandb

        self.wandb = wandb
        self.run = None

    def start(self, e) -> None:
        if self.run is not None:
            return
        online = os.environ.get("WANDB_MODE") == "online" or (
            os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE") != "offline"
        )
        settings = self.wandb.Settings(console="off", x_disable_stats=True, silent=True)
        self.run = self.wandb.init(
            project=os.environ.get("WANDB_PROJECT", "nb_finetune"),
            name=e.name,
            dir=str(self.run_dir),
            mode="online" if online else "offline",
            config=self.params(),
            tags=[e.task],
            settings=settings,
            reinit="create_new",
        )
        self.run.define_metric("*", step_metric="trainer/step")

    def log_metrics(self, metrics, step, when) -> None:
        self.run.log({**metrics, "trainer/step": step})

    def log_change(self, e) -> None:
        self.run.log({"trainer/step": e.step, "live_change": self.change_text(e)})

    def finish(self, e, model_dir) -> None:
        if self.run is None:
            return
        self.run.summary["state"] = e.state
        self.run.summary["reason"] = e.reason
        if model_dir is not None:
            art = self.wandb.Artifact(f"{self.run_dir.name}-model", type="model", metadata={"step": e.step})
            art.add_dir(str(model_dir))
            self.run.log_artifact(art)
        self.run.finish(exit_code=0 if e.state != "failed" else 1)
