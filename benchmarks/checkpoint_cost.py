"""What a training checkpoint costs a run: the time ``fit`` spends in each checkpoint save (blocked in the loop),
the whole fit with and without checkpoints, and what a step's folder holds (the orbax state, and the exported
model that makes the folder loadable as a model).

Model: all-MiniLM-L6-v2 (``--model``) with a new 1-label head; data: the first ``--pairs`` STS-B train pairs,
batch 16, one epoch, a checkpoint every ``--every`` steps. Each configuration runs ``--trials`` times in this
process (the train step compiles once: later fits reuse it); the best trial is reported. ``--trainer`` runs
``CrossEncoderTrainer`` instead, with and without ``save_only_model`` (checkpoints of the model alone).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402  (also puts examples/ on sys.path)
import _common  # noqa: E402
from train_throughput import read_pairs  # noqa: E402


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=_common.default_model_dir())
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--every", type=int, default=4, help="checkpoint_save_steps")
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--trainer", action="store_true", help="CrossEncoderTrainer, save_only_model off and on")
    options = parser.parse_args()
    _bench.print_info("checkpoint cost", {"pairs": str(options.pairs), "every": str(options.every)})
    if options.trainer:
        trainer_checkpoints(options)
        return

    import crossjax.checkpoint as checkpoint_module
    from crossjax import CrossEncoder, DataLoader, InputExample

    save = checkpoint_module.TrainCheckpointer.save
    blocked: list[float] = []

    def timed_save(self, *args, **kwargs):
        started = time.perf_counter()
        save(self, *args, **kwargs)
        blocked.append(time.perf_counter() - started)

    checkpoint_module.TrainCheckpointer.save = timed_save
    examples = [InputExample(texts=[a, b], label=score) for a, b, score in read_pairs(options.pairs)]
    model = CrossEncoder(options.model, num_labels=1)
    quiet = dict(epochs=1, warmup_steps=0, show_progress_bar=False, seed=0)
    model.fit(DataLoader(examples, batch_size=16, shuffle=True), **quiet)  # compiles the step once
    results: dict[str, list[float]] = {"no checkpoints": [], "checkpoints": []}
    saves: list[list[float]] = []
    folder_sizes = None
    for _ in range(options.trials):
        for name in results:
            blocked.clear()
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "ckpt" if name == "checkpoints" else None
                started = time.perf_counter()
                model.fit(
                    DataLoader(examples, batch_size=16, shuffle=True),
                    checkpoint_path=str(path) if path else None,
                    checkpoint_save_steps=options.every,
                    checkpoint_save_total_limit=None,
                    **quiet,
                )
                results[name].append(time.perf_counter() - started)
                if path is not None:
                    saves.append(list(blocked))
                    last = max((p for p in path.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
                    folder_sizes = {item.name: _folder_bytes(item) for item in last.iterdir() if item.is_dir()}
    steps = -(-options.pairs // 16)
    print(f"steps per fit: {steps}, checkpoints per fit: {len(saves[-1])}")
    for name, times in results.items():
        print(f"fit, {name}: best {min(times):.2f} s (trials {', '.join(f'{t:.2f}' for t in times)})")
    best_trial = min(range(len(saves)), key=lambda i: results["checkpoints"][i])
    print("save calls of the best trial (s, the first computes the checksum program):",
          ", ".join(f"{t:.3f}" for t in saves[best_trial]))
    print("a step's folder (MB):", ", ".join(f"{k} {v / 1e6:.1f}" for k, v in sorted(folder_sizes.items())))


def trainer_checkpoints(options: argparse.Namespace) -> None:
    """The trainer's fit time and a step folder's contents with and without ``save_only_model``."""
    from crossjax import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments

    rows = read_pairs(options.pairs)
    data = {"a": [r[0] for r in rows], "b": [r[1] for r in rows], "score": [float(r[2]) / 5 for r in rows]}
    model = CrossEncoder(options.model, num_labels=1)
    with tempfile.TemporaryDirectory() as tmp:  # compiles the step once: the timed runs reuse it
        args = CrossEncoderTrainingArguments(tmp, per_device_train_batch_size=16, save_strategy="no", disable_tqdm=True)
        CrossEncoderTrainer(model=model, args=args, train_dataset=data).train()
    modes = {"no checkpoints": None, "save_only_model=False": False, "save_only_model=True": True}
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    sizes: dict[str, dict[str, int]] = {}
    for _ in range(options.trials):
        for mode, model_only in modes.items():
            with tempfile.TemporaryDirectory() as tmp:
                saving = {"save_strategy": "no"} if model_only is None else {"save_only_model": model_only}
                args = CrossEncoderTrainingArguments(
                    tmp, per_device_train_batch_size=16, save_steps=options.every, logging_steps=options.every,
                    disable_tqdm=True, seed=0, **saving,
                )  # fmt: skip
                started = time.perf_counter()
                CrossEncoderTrainer(model=model, args=args, train_dataset=data).train()
                times[mode].append(time.perf_counter() - started)
                steps = Path(tmp) / "checkpoints"
                if model_only is not None:
                    last = max((p for p in steps.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
                    sizes[mode] = {item.name: _folder_bytes(item) for item in last.iterdir() if item.is_dir()}
    for mode, spent in times.items():
        folder = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in sorted(sizes.get(mode, {}).items()))
        print(
            f"trainer, {mode}: best {min(spent):.2f} s (trials {', '.join(f'{t:.2f}' for t in spent)})"
            + (f"; a step's folder (MB): {folder}" if folder else "")
        )


if __name__ == "__main__":
    main()
