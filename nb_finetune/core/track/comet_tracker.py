"""Comet: an `OfflineExperiment` (a zip under `<run_dir>/comet/`, uploaded later with `comet upload`) unless
COMET_API_KEY is set; the final model as a model asset."""

from __future__ import annotations

import os

from .base import Tracker

__all__ = ["CometTracker"]


class CometTracker(Tracker):
    name = "comet"
    loggers = ("comet_ml",)

    def __init__(self, cfg, run_dir):
        super().__init__(cfg, run_dir)
        import comet_ml

        self.comet_ml = comet_ml
        self.exp = None

    def start(self, e) -> None:
        if self.exp is not None:
            return
        project = os.environ.get("COMET_PROJECT_NAME", "nb_finetune")
        common = dict(
            project_name=project,
            auto_output_logging=False,
            auto_metric_logging=False,
            auto_param_logging=False,
            log_env_details=False,
            log_git_metadata=False,
            log_git_patch=False,
            log_code=False,
            log_graph=False,
            log_env_gpu=False,
            log_env_host=False,
            log_env_cpu=False,
            display_summary_level=0,
        )
        if os.environ.get("COMET_API_KEY") and os.environ.get("COMET_MODE", "").lower() != "offline":
            self.exp = self.comet_ml.Experiment(**common)
        else:
            offline_dir = self.run_dir / "comet"
            offline_dir.mkdir(exist_ok=True)
            self.exp = self.comet_ml.OfflineExperiment(offline_directory=str(offline_dir), **common)
        self.exp.set_name(e.name)
        self.exp.log_parameters(self.params())
        self.exp.add_tag(e.task)

    def log_metrics(self, metrics, step, when) -> None:
        self.exp.log_metrics(metrics, step=step)

    def log_change(self, e) -> None:
        self.exp.log_other(f"live_change_{e.step}_{e.command}", self.change_text(e))
        self.exp.log_text(self.change_text(e), step=e.step, metadata={"kind": "live_change", "command": e.command})

    def finish(self, e, model_dir) -> None:
        if self.exp is None:
            return
        self.exp.log_other("state", e.state)
        self.exp.log_other("reason", e.reason)
        if model_dir is not None:
            self.exp.log_model(f"{self.run_dir.name}-model", str(model_dir))
        self.exp.end()
