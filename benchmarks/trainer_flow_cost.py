"""What the trainer's per-step flow costs on the host: the time spent in ``_RunHooks.on_step`` (Hugging Face's
``on_step_end``, the control's log / evaluate / save decisions, the epoch's end) per step of a
``CrossEncoderTrainer`` run, without callbacks and with one callback (which makes the run sync the model after
every step, so that callbacks get the step's model).

Model: a random 2-layer BERT (hidden 32) with MiniLM's tokenizer, so the host's share is as large as it gets.
Data: 64 random word pairs, batch 4, ``--steps`` steps, logging every 50, no checkpoints. Each configuration runs
twice and the second run (compiled step reused) is reported.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402
from compile_cache import tiny_model  # noqa: E402

WORDS = "apple river stone cloud music table green quick slow bright dark paper".split()


class _NoOp:
    def on_step_end(self, args, state, control, **kwargs):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    options = parser.parse_args()
    _bench.print_info("trainer flow cost", {"steps": str(options.steps)})

    import crossjax.trainer as trainer_module
    from crossjax import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments

    spent: list[float] = []
    on_step = trainer_module._RunHooks.on_step

    def timed(self, end):
        started = time.perf_counter()
        try:
            return on_step(self, end)
        finally:
            spent.append(time.perf_counter() - started)

    trainer_module._RunHooks.on_step = timed
    rng = random.Random(0)
    data = {
        "q": [" ".join(rng.choices(WORDS, k=3)) for _ in range(64)],
        "d": [" ".join(rng.choices(WORDS, k=5)) for _ in range(64)],
        "label": [rng.random() for _ in range(64)],
    }
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = tiny_model(Path(tmp) / "tiny")
        for name, callbacks in (("no callback", []), ("one callback", [_NoOp()])):
            for _ in range(2):
                spent.clear()
                args = CrossEncoderTrainingArguments(
                    str(Path(tmp) / "out"), max_steps=options.steps, per_device_train_batch_size=4, logging_steps=50,
                    save_strategy="no", disable_tqdm=True,
                )  # fmt: skip
                trainer = CrossEncoderTrainer(
                    model=CrossEncoder(model_dir), args=args, train_dataset=data, callbacks=callbacks
                )
                started = time.perf_counter()
                trainer.train()
                total = time.perf_counter() - started
            ordered = sorted(spent)
            print(
                f"{name:>13}: on_step median {1e6 * ordered[len(ordered) // 2]:.0f} us, "
                f"sum {sum(ordered):.3f} s of a {total:.2f} s run ({len(ordered)} steps)"
            )


if __name__ == "__main__":
    main()
