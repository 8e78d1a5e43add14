"""How long a preempted run takes to stop, and what its resume costs (the scheduler's notice is short: 30 s on
Google Cloud's spot VMs).

A child process fits MiniLM on the first ``--pairs`` STS-B train pairs with ``checkpoint_path`` (no periodic
checkpoint before the notice) and prints a line as each step is fed; this driver sends it SIGTERM once step
``--notice-after`` is fed, and times the child's exit (the step in flight, its checkpoint written and committed,
``TrainingPreempted``'s exit status 143). Then the same fit runs again and resumes: its wall time, and the
seconds to its first step, against a run that never stopped. Fresh processes, persistent compilation cache off.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402  (also puts examples/ on sys.path)
import _common  # noqa: E402  (examples/_common.py: data readers, default checkpoint)

CHILD = """
import json, sys, time
started = time.perf_counter()
from crossjax import CrossEncoder, DataLoader, InputExample, training
spec = json.loads(sys.argv[1])
sys.path.insert(0, spec["examples"])
import _common
rows = _common.read_stsb_csv(_common.SHARED_DATA / "stsb", "train")[: spec["pairs"]]
examples = [InputExample(texts=[a, b], label=s / 5.0) for a, b, s in rows]
real = training.batch_to_global
fed = [0]
def feeding(*args, **kwargs):
    fed[0] += 1
    print(f"FED {fed[0]} {time.perf_counter() - started:.3f}", flush=True)
    return real(*args, **kwargs)
training.batch_to_global = feeding
model = CrossEncoder(spec["model"], num_labels=1)
summary = model.fit(DataLoader(examples, batch_size=16, shuffle=True), epochs=1, warmup_steps=0,
                    checkpoint_path=spec["checkpoint"], checkpoint_save_steps=10**6, show_progress_bar=False)
print("SUMMARY " + json.dumps({"resumed_from_step": summary["resumed_from_step"],
      "global_step": summary["global_step"], "seconds": time.perf_counter() - started}), flush=True)
"""


def run_child(spec: dict, notice_after: int | None) -> dict:
    env = dict(os.environ, CROSSJAX_COMPILATION_CACHE="0", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env,
    )  # fmt: skip
    first_step, noticed, summary = None, None, None
    for line in proc.stdout:
        if line.startswith("FED "):
            _, step, seconds = line.split()
            first_step = first_step if first_step is not None else float(seconds)
            if notice_after is not None and int(step) == notice_after + 1 and noticed is None:
                proc.send_signal(signal.SIGTERM)  # as step notice_after + 1 is fed: it finishes, then the stop
                noticed = time.perf_counter()
        elif line.startswith("SUMMARY "):
            summary = json.loads(line[len("SUMMARY ") :])
    status = proc.wait()
    stopped = time.perf_counter()
    stderr = proc.stderr.read()
    if notice_after is None and status != 0:
        raise SystemExit(f"the child failed ({status}):\n{stderr[-3000:]}")
    return {
        "status": status,
        "first_step_s": first_step,
        "notice_to_exit_s": None if noticed is None else stopped - noticed,
        "summary": summary,
        "message": next((x for x in stderr.splitlines() if "stopped the run" in x), ""),
    }


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=_common.default_model_dir())
    parser.add_argument("--pairs", type=int, default=320, help="the first N STS-B train pairs (batch 16)")
    parser.add_argument("--notice-after", type=int, default=5, help="SIGTERM as the step after this one is fed")
    args = parser.parse_args()
    _bench.print_info("preemption", {"model": str(args.model), "pairs": str(args.pairs)})
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"model": str(args.model), "pairs": args.pairs, "examples": str(_common.__file__).rsplit("/", 1)[0]}
        whole = run_child({**spec, "checkpoint": f"{tmp}/whole"}, None)
        stopped = run_child({**spec, "checkpoint": f"{tmp}/run"}, args.notice_after)
        steps = sorted(int(p.name) for p in Path(f"{tmp}/run").iterdir() if p.name.isdigit())
        size = folder_mb(Path(f"{tmp}/run") / str(steps[-1])) if steps else 0.0
        resumed = run_child({**spec, "checkpoint": f"{tmp}/run"}, None)
    print(f"stopped run: exit status {stopped['status']}, checkpoint steps {steps} ({size:.0f} MiB)")
    print(f"  notice (SIGTERM as step {args.notice_after + 1} was fed) to exit: {stopped['notice_to_exit_s']:.2f} s")
    print(f"  its message: {stopped['message'].strip()}")
    print(
        f"uninterrupted run: {whole['summary']['global_step']} steps in {whole['summary']['seconds']:.1f} s "
        f"(first step fed at {whole['first_step_s']:.1f} s)"
    )
    print(
        f"resumed run: from step {resumed['summary']['resumed_from_step']} to {resumed['summary']['global_step']} in "
        f"{resumed['summary']['seconds']:.1f} s (first step fed at {resumed['first_step_s']:.1f} s)"
    )


if __name__ == "__main__":
    main()
