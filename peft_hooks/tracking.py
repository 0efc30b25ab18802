"""Live-view sinks for experiment trackers: Weights & Biases and MLflow (tags: ``peft_hooks.live``).

Both log into a run the user already has open (the Trainer's ``report_to`` integrations open one) and
leave it open; otherwise they open a run named ``<benchmark> seed <seed>`` with the recorder's run
description as its config and close it with the recording's status.
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Any

from qformer_budget.core.run_folder import dotted_items

from .live import LiveViewSink, missing_extra

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ALLOCATION_STEP = "allocation_step"
TAG_PREFIXES = ("budget", "rank", "share", "score", "heatmap")


def _mlflow_params(meta: dict[str, Any]) -> dict[str, str]:
    """The run description as flat ``a.b`` keys with string values (MLflow params are strings); lists are left
    out (the module list is long and already in run.json)."""
    return {key: str(value) for key, value in dotted_items(meta).items() if not isinstance(value, list)}


def _png(figure: Figure):
    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    return Image.open(buffer)


class WandbSink(LiveViewSink):
    """Logs each recorded step to Weights & Biases.

    The values are plotted against their own x-axis, ``allocation_step`` (the records' 1-based step),
    declared with ``define_metric``, so they never clash with the step counter of other loggers
    sharing the run. ``init_kwargs`` go to ``wandb.init`` (``project``, ``mode="offline"``, ``dir``...).
    """

    def __init__(self, run=None, **init_kwargs: Any) -> None:
        super().__init__()
        try:
            import wandb
        except ImportError as exc:
            raise missing_extra("WandbSink", "wandb", "wandb") from exc
        self._wandb = wandb
        self._given_run = run
        self._init_kwargs = init_kwargs
        self.run = None
        self._owns_run = False

    def _open(self, meta: dict[str, Any]) -> None:
        self.run = self._given_run or self._wandb.run
        if self.run is None:
            options = {"name": self._title, "config": {"qformer_budget": meta}} | self._init_kwargs
            self.run = self._wandb.init(**options)
            self._owns_run = True
        self.run.define_metric(ALLOCATION_STEP)
        for prefix in TAG_PREFIXES:
            self.run.define_metric(f"{prefix}/*", step_metric=ALLOCATION_STEP)

    def _log(self, step: int, scalars: dict[str, float], figures: dict[str, Figure]) -> None:
        values: dict[str, Any] = {ALLOCATION_STEP: step, **scalars}
        values.update((tag, self._wandb.Image(_png(figure), caption=f"step {step}")) for tag, figure in figures.items())
        self.run.log(values)

    def _close(self, status: str) -> None:
        if self._owns_run:
            self.run.finish(exit_code=0 if status == "finished" else 1)
        self.run = None
        self._owns_run = False


class MlflowSink(LiveViewSink):
    """Logs each recorded step to MLflow: metrics by tag, the heatmap as ``heatmap/rank_step<NNNNNN>.png``.

    ``tracking_uri`` defaults to MLflow's own setting (``MLFLOW_TRACKING_URI``); a new run goes to
    ``experiment`` (created if missing). Metrics go in one ``log_batch`` call per recorded step.
    """

    # Limits of one log_batch call in MLflow's REST API; params longer than 500 characters are cut there.
    METRICS_PER_BATCH = 1000
    PARAMS_PER_BATCH = 100

    def __init__(self, tracking_uri: str | None = None, experiment: str = "qformer-budget", run_id: str | None = None) -> None:
        super().__init__()
        try:
            import mlflow
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise missing_extra("MlflowSink", "mlflow", "mlflow") from exc
        self._mlflow, self._metric, self._param = mlflow, Metric, Param
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment = experiment
        self._given_run_id = run_id
        self.run_id: str | None = None
        self._owns_run = False

    def _open(self, meta: dict[str, Any]) -> None:
        active = self._mlflow.active_run()
        self.run_id = self._given_run_id or (active.info.run_id if active is not None else None)
        if self.run_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
            tags = {"benchmark": str(meta.get("benchmark", "")), "seed": str(meta.get("seed", ""))}
            self.run_id = self.client.create_run(experiment_id, run_name=self._title, tags=tags).info.run_id
            self._owns_run = True
        params = [self._param(f"qformer_budget.{key}", value[:500]) for key, value in _mlflow_params(meta).items()]
        for start in range(0, len(params), self.PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + self.PARAMS_PER_BATCH])

    def _log(self, step: int, scalars: dict[str, float], figures: dict[str, Figure]) -> None:
        timestamp = int(time.time() * 1000)
        metrics = [self._metric(tag, value, timestamp, step) for tag, value in scalars.items()]
        for start in range(0, len(metrics), self.METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + self.METRICS_PER_BATCH])
        for tag, figure in figures.items():
            self.client.log_figure(self.run_id, figure, f"{tag}_step{step:06d}.png")

    def _close(self, status: str) -> None:
        if self._owns_run:
            self.client.set_terminated(self.run_id, "FINISHED" if status == "finished" else "FAILED")
        self.run_id = None
        self._owns_run = False
