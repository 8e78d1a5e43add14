"""What a training checkpoint costs a run: the time ``fit`` spends in each checkpoint save (blocked in the loop),
the whole fit with and without checkpoints, and what a step's folder holds (the orbax state, and the exported
model that makes the folder loadable as a model).

Model: all-MiniLM-L6-v2 (``--model``) with a new 1-label head; data: the first ``--pairs`` STS-B train pairs,
batch 16, one epoch, a checkpoint every ``--every`` steps. Each configuration runs ``--trials`` times in this
process (the train step compiles once: later fits reuse it); the best trial is reported.
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
    options = parser.parse_args()
    _bench.print_info("checkpoint cost", {"pairs": str(options.pairs), "every": str(options.every)})

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


if __name__ == "__main__":
    main()
