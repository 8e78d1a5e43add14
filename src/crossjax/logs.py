"""What a training run leaves behind besides the model: ``metrics.jsonl``, TensorBoard events and a PNG of curves.

The fit loop reports what happens through :class:`RunCallback` methods (the run starts, a step's metrics are
fetched, an evaluation ran, the best model is about to be saved, the run ends). :class:`TrainingLog` is the
callback that writes the files, into ``log_dir`` (fit's ``log_dir``, else its ``output_path``):

- ``metrics.jsonl``: one JSON object per optimizer step (``step``, ``epoch``, ``learning_rate``, ``loss``,
  ``grad_norm``, ``pairs_per_second``) and one per evaluation (``step``, ``epoch`` and every evaluator metric
  prefixed ``eval_``, as sentence-transformers' trainer logs them). Each line is flushed as it is written, so a
  killed run keeps its log. A run resumed from a checkpoint at step ``S`` keeps the lines of steps ``<= S`` and
  drops the later ones (they belong to the trajectory the resume replays), so no step appears twice.
- ``runs/events.out.tfevents.*``: TensorBoard scalars (``train/loss``, ``train/learning_rate``, ...,
  ``eval/<metric>``) through ``tensorboardX`` when it is installed (``pip install crossjax[logs]``), silently
  skipped otherwise; a resume purges the events after ``S`` (TensorBoard's ``purge_step``).
- ``training_curves.png``: the loss and evaluation curves of the whole run, drawn at its end with matplotlib
  (Agg backend) when it is installed; the model card embeds it.

Only process 0 of a multi-process run writes. The same callbacks serve ``CrossEncoder.fit`` and the trainer.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossjax.runtime import is_main_process

logger = logging.getLogger("crossjax")

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "runs"
CURVES_FILE = "training_curves.png"
EVAL_PREFIX = "eval_"
# Keys of a step record, in the order they are written (the evaluation records hold step, epoch and eval_*).
STEP_KEYS = ("step", "epoch", "learning_rate", "loss", "grad_norm", "pairs_per_second")


@dataclass
class RunInfo:
    """What a run is, known once its data is planned: handed to :meth:`RunCallback.on_train_begin`."""

    total_steps: int
    start_step: int = 0  # > 0 when resumed from a checkpoint
    steps_per_epoch: int | None = None  # None for a stream
    train_examples: int | None = None  # None for a stream (unknown length)
    train_samples: list[tuple[list[str], Any]] = field(default_factory=list)  # the first few (texts, label)
    loss: str = ""  # the loss as the model card names it (fit_loop.card_loss)
    loss_config: dict[str, Any] = field(default_factory=dict)  # and its settings, as the card shows them
    activation: str = ""  # the activation applied to logits before the loss
    config: dict[str, Any] = field(default_factory=dict)  # the run's settings (FitConfig or trainer arguments)
    default_config: dict[str, Any] = field(default_factory=dict)  # the same settings' defaults
    devices: str = ""
    previous_records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl lines kept on resume
    log_dir: str | None = None  # where this run writes metrics.jsonl and its curves (None: nowhere)


def epoch_at(
    step: int, steps_per_epoch: int, accumulation_steps: int = 1, batches_per_epoch: int | None = None
) -> float:
    """Hugging Face's ``state.epoch`` after optimizer step ``step``: the epochs done plus the share of the epoch's
    batches consumed (a step takes ``accumulation_steps`` batches, an epoch's last step what is left). Without
    ``batches_per_epoch``: the share of its steps."""
    if not batches_per_epoch or step <= 0:
        return step / steps_per_epoch
    done, index = divmod(step - 1, steps_per_epoch)
    return done + min((index + 1) * accumulation_steps, batches_per_epoch) / batches_per_epoch


class RunCallback:
    """Hooks the fit loop calls; every method is a no-op here, so a callback overrides only what it needs."""

    def on_train_begin(self, info: RunInfo) -> None:
        """The data is planned and the run is about to take its first step."""

    def on_log(self, record: dict[str, Any]) -> None:
        """One optimizer step's metrics, fetched from the device (``STEP_KEYS``)."""

    def on_evaluate(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        """An evaluator ran after ``step``; ``metrics`` are its results (unprefixed, as the evaluator names them)."""

    def on_save(self, step: int) -> None:
        """The model of ``step`` is about to be saved to the output path as the best one so far."""

    def on_checkpoint(self, step: int) -> None:
        """The training state of ``step`` was checkpointed (for a resume)."""

    def on_train_end(self, completed: bool) -> None:
        """The run ended (``completed`` False when it stopped on an exception); always called."""


class RunCallbacks(RunCallback):
    """Several callbacks as one, called in order."""

    def __init__(self, callbacks: Sequence[RunCallback]) -> None:
        self.callbacks = list(callbacks)
        self.started: list[RunCallback] = []  # those whose on_train_begin ran: only they get on_train_end

    def on_train_begin(self, info: RunInfo) -> None:
        self.started = []
        for callback in self.callbacks:
            callback.on_train_begin(info)
            self.started.append(callback)

    def on_log(self, record: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_log(record)

    def on_evaluate(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        for callback in self.callbacks:
            callback.on_evaluate(step, epoch, metrics)

    def on_save(self, step: int) -> None:
        for callback in self.callbacks:
            callback.on_save(step)

    def on_checkpoint(self, step: int) -> None:
        for callback in self.callbacks:
            callback.on_checkpoint(step)

    def on_train_end(self, completed: bool) -> None:
        """Every started callback gets to close its files, even if one fails. The first failure is raised after
        a completed run; after a failed one it is logged, so the run's own error is the one the caller sees."""
        errors = []
        for callback in self.started:
            try:
                callback.on_train_end(completed)
            except Exception as e:  # noqa: BLE001 - reported after the others ran
                errors.append(e)
        self.started = []
        if errors and completed:
            raise errors[0]
        for error in errors:
            logger.error("a training callback failed while the run was stopping: %r", error)


def check_evaluator_number(value: Any, evaluator: Any, key: str | None = None) -> float:
    """An evaluator's score as a float, or a TypeError that names the evaluator and the value (a ``None`` or a
    string would otherwise fail deep inside the run's bookkeeping, or never count as a best score)."""
    if not is_number(value):
        where = f"{key!r}: {value!r}" if key is not None else repr(value)
        raise TypeError(
            f"the evaluator {type(evaluator).__name__} returned {where}; an evaluator returns a number, or a dict "
            "of numbers holding its primary_metric"
        )
    return float(value)


def evaluation_metrics(score: Any, primary_metric: str | None) -> dict[str, float]:
    """An evaluator's return value as ``{metric: value}``: a dict as is (numbers only), a bare number (the
    legacy evaluators' return) under its ``primary_metric`` or ``"score"``."""
    if isinstance(score, dict):
        return {str(k): float(v) for k, v in score.items() if is_number(v)}
    return {primary_metric or "score": float(score)}


def describe_devices(devices: Any) -> str:
    """``"8 x TPU v5 lite"``: how many devices of each kind a run used."""
    from collections import Counter

    counts = Counter(getattr(d, "device_kind", None) or getattr(d, "platform", "device") for d in devices)
    return ", ".join(f"{n} x {kind}" for kind, n in counts.items())


def is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, (str, bytes))


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file; a last line cut off by a kill is skipped."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                logger.warning("%s line %d is not JSON (a run killed while writing it?); skipped", path, number)
    return records


def tensorboard_available() -> bool:
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return False
    return True


class TrainingLog(RunCallback):
    """Writes ``metrics.jsonl``, TensorBoard events and, at the end, ``training_curves.png`` into ``log_dir``.

    ``tensorboard`` None means "when tensorboardX is installed"; ``plot`` None "when matplotlib is".
    """

    def __init__(self, log_dir: str | os.PathLike, tensorboard: bool | None = None, plot: bool | None = None):
        self.log_dir = Path(log_dir)
        self.tensorboard = tensorboard
        self.plot = plot
        self.curves = _Curves()
        self._file = None
        self._writer = None

    @property
    def metrics_path(self) -> Path:
        return self.log_dir / METRICS_FILE

    @property
    def curves_path(self) -> Path:
        return self.log_dir / CURVES_FILE

    def previous_records(self, start_step: int) -> list[dict[str, Any]]:
        """The lines of an earlier run that a run starting after ``start_step`` keeps (none for a fresh run)."""
        if start_step <= 0 or not self.metrics_path.is_file():
            return []
        return [r for r in read_metrics(self.metrics_path) if int(r.get("step", 0)) <= start_step]

    def on_train_begin(self, info: RunInfo) -> None:
        if not is_main_process():
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.curves = _Curves(info.previous_records)
        # Rewrite the kept lines (atomically), then append: a fresh run starts an empty file.
        tmp = self.metrics_path.with_name(METRICS_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for record in info.previous_records:
                f.write(json.dumps(record) + "\n")
        os.replace(tmp, self.metrics_path)
        if info.start_step == 0:
            self.curves_path.unlink(missing_ok=True)  # an earlier run's curves; this run draws its own at the end
        self._file = open(self.metrics_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in on_train_end
        if self.tensorboard is not False and tensorboard_available():
            from tensorboardX import SummaryWriter

            # its "NaN or Inf found in input tensor." once per scalar: a NaN metric is named where it is logged
            logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
            # TensorBoard drops the events of earlier files from purge_step on: a resumed run's orphaned steps,
            # and all of an earlier run's when this one starts afresh in the same folder (as metrics.jsonl does).
            purge = {"purge_step": info.start_step + 1 if info.start_step > 0 else 0}
            # tensorboardX names event files by the second and host only: a resumed run starting within the
            # same second would overwrite the first run's file. A nanosecond suffix keeps each run's file and
            # sorts them in run order (TensorBoard reads files in name order, which the purge relies on).
            self._writer = SummaryWriter(
                str(self.log_dir / TENSORBOARD_DIR),
                flush_secs=10,
                filename_suffix=f".{time.time_ns():020d}",
                **purge,
            )
        elif self.tensorboard:
            raise ImportError("TensorBoard logging needs tensorboardX: pip install 'crossjax[logs]'")

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self.curves.add(record)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # a killed run keeps every line written so far

    def on_log(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._write({k: record[k] for k in STEP_KEYS if k in record})
        if self._writer is not None:
            for key in STEP_KEYS[2:]:
                value = record.get(key)
                if value is not None and math.isfinite(value):
                    self._writer.add_scalar(f"train/{key}", value, record["step"])

    def on_evaluate(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        if self._file is None:
            return
        self._write({"step": step, "epoch": epoch, **{EVAL_PREFIX + k: v for k, v in metrics.items()}})
        if self._writer is not None:
            for key, value in metrics.items():
                self._writer.add_scalar(f"eval/{key}", value, step)
            self._writer.flush()

    def on_train_end(self, completed: bool) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.plot is not False:
            plot_training_curves(self.curves.records(), self.curves_path, required=bool(self.plot))


class _Curves:
    """What the curves need of a run's records, compactly: each step's loss as two numbers (a step's whole
    record, kept as a dict, took ~750 bytes: 0.7 GB a million steps), the evaluation records whole."""

    def __init__(self, records: Iterable[dict[str, Any]] = ()) -> None:
        self.steps, self.losses = array("q"), array("d")
        self.evaluations: list[dict[str, Any]] = []
        for record in records:
            self.add(record)

    def add(self, record: dict[str, Any]) -> None:
        if "loss" in record:
            self.steps.append(int(record["step"]))
            self.losses.append(float(record["loss"]))
        if any(k.startswith(EVAL_PREFIX) for k in record):
            self.evaluations.append(record)

    def records(self) -> list[dict[str, Any]]:
        """Records :func:`plot_training_curves` reads (the loss ones hold only step and loss)."""
        losses = [{"step": s, "loss": v} for s, v in zip(self.steps, self.losses, strict=True)]
        return losses + self.evaluations


def plot_training_curves(records: list[dict[str, Any]], path: str | os.PathLike, required: bool = False) -> Path | None:
    """Draw the loss (left) and the evaluation metrics (right) against the step into a PNG at ``path``.

    Returns the path, or None when there is nothing to plot or matplotlib is missing (unless ``required``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)  # no display needed; leaves an interactive session's backend alone
        from matplotlib.figure import Figure
    except ImportError:
        if required:
            raise ImportError("plotting training curves needs matplotlib: pip install 'crossjax[logs]'") from None
        return None
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if any(k.startswith(EVAL_PREFIX) for k in r)]
    if not steps and not evals:
        return None
    eval_keys = list(dict.fromkeys(k for r in evals for k in r if k.startswith(EVAL_PREFIX)))
    figure = Figure(figsize=(11 if evals else 6, 4), dpi=100)  # no pyplot: no global state, thread-safe
    axes = figure.subplots(1, 2 if evals else 1, squeeze=False)[0]
    axes[0].plot([r["step"] for r in steps], [r["loss"] for r in steps], linewidth=1)
    axes[0].set(title="training loss", xlabel="step", ylabel="loss")
    if evals:
        for key in eval_keys:
            points = [(r["step"], r[key]) for r in evals if key in r]
            axes[1].plot(*zip(*points, strict=True), marker="o", label=key[len(EVAL_PREFIX) :])
        axes[1].set(title="evaluation", xlabel="step")
        axes[1].legend(fontsize="small")
    for ax in axes:
        ax.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    figure.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


__all__ = [
    "CURVES_FILE",
    "METRICS_FILE",
    "RunCallback",
    "RunCallbacks",
    "RunInfo",
    "TrainingLog",
    "describe_devices",
    "evaluation_metrics",
    "plot_training_curves",
    "read_metrics",
]
