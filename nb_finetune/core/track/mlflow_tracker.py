"""MLflow: a run in `sqlite:///<output_dir>/mlflow.db` (or MLFLOW_TRACKING_URI), the resolved config as params,
metrics with their step, a tag per live change, the final model as an MLflow logged model, the run's status.
`mlflow ui --backend-store-uri sqlite:///<output_dir>/mlflow.db` shows it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .base import Tracker

__all__ = ["MlflowTracker", "tracking_uri"]

_STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}


def tracking_uri(output_dir: str | Path) -> str:
    """MLFLOW_TRACKING_URI when set, else a sqlite store beside the run directories."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(output_dir).expanduser().resolve() / 'mlflow.db'}"


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, cfg, run_dir):
        super().__init__(cfg, run_dir)
        from mlflow import MlflowClient

        out = Path(cfg.output_dir).expanduser().resolve()
        self.client = MlflowClient(tracking_uri=tracking_uri(out))
        exp_name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "nb_finetune")
        exp = self.client.get_experiment_by_name(exp_name)
        if exp is None:  # artifacts beside the store, not in the notebook's working directory
            self.experiment_id = self.client.create_experiment(
                exp_name, artifact_location=(out / "mlartifacts").as_uri()
            )
        else:
            self.experiment_id = exp.experiment_id
        self.run_id: str | None = None
        self.changes = 0

    def start(self, e) -> None:
        from mlflow.entities import Param

        if self.run_id is None:
            tags = {"nb_finetune.run_dir": str(self.run_dir), "nb_finetune.task": e.task, "mlflow.runName": e.name}
            self.run_id = self.client.create_run(self.experiment_id, run_name=e.name, tags=tags).info.run_id
            params = [Param(k, v[:6000]) for k, v in self.params().items()]
            for i in range(0, len(params), 100):  # log_batch takes at most 100 params a call
                self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.set_tag(self.run_id, "nb_finetune.state", "training")

    def log_metrics(self, metrics, step, when) -> None:
        from mlflow.entities import Metric

        ms = int(when * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, ms, step) for k, v in metrics.items()])

    def log_change(self, e) -> None:
        self.changes += 1
        key = f"live.{self.changes:03d}.{e.command}"
        value = json.dumps({"step": e.step, "args": e.args, "source": e.source, "ok": e.ok, "message": e.message})
        self.client.set_tag(self.run_id, key, value[:5000])

    def finish(self, e, model_dir) -> None:
        if self.run_id is None:
            return
        self.client.set_tag(self.run_id, "nb_finetune.state", e.state)
        self.client.set_tag(self.run_id, "nb_finetune.reason", e.reason)
        if e.error:
            self.client.set_tag(self.run_id, "nb_finetune.error", e.error[:5000])
        if model_dir is not None:
            model = self.client.create_logged_model(
                self.experiment_id, name=self.run_dir.name, source_run_id=self.run_id, model_type="nb_finetune"
            )
            self.client.log_model_artifacts(model.model_id, str(model_dir))
            self.client.finalize_logged_model(model.model_id, "READY")
            self.client.set_tag(self.run_id, "nb_finetune.model_id", model.model_id)
        self.client.set_terminated(self.run_id, status=_STATUS.get(e.state, "FINISHED"))
