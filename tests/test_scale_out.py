"""Scale-out on CPU: 8 devices vs 1, two processes vs one, and kill-and-resume from orbax checkpoints.

Every run happens in a subprocess (``scale_out_worker.py``) because the number of CPU devices
(``--xla_force_host_platform_device_count``) and ``jax.distributed`` are fixed when JAX starts. A tiny random
BERT (32 hidden units, a word-level tokenizer built here) trains on 44 synthetic sentence pairs made here, with
STS-B-like scores from 0 to 5 (their word overlap), batch 16: 3 steps per epoch, the last one with 12 real rows
and 4 padding rows. Nothing comes from outside the repository, so these tests always run. One module fixture
runs all subprocesses, two chains side by side (the machine has 2 cores), with a shared persistent compilation
cache, a timeout on each and no orphans:

* chain 1: 1 device (replicated and fsdp), then 2 processes x 4 devices (fsdp, then a JSONL stream of two
  files, one per process), then the same stream killed after step 3 and resumed from step 2;
* chain 2: 8 devices (dropout reference, replicated, fsdp, a bad batch size), then a checkpointed run that is
  SIGKILLed after step 5, then the resume, the mismatched resumes and the damaged checkpoints, then the
  trainer's 2-process stream, then chain 1's fsdp run with a preemption notice (SIGTERM) to one process, and
  its resume.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import xla_flags

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("scale_out_worker.py")
TIMEOUT_S = 420  # per worker run: a hang, not a slow machine (two CI workers share 2 cores)
EXAMPLES = 44  # 3 batches of 16 per epoch: 16, 16 and 12 real rows
FIT = dict(batch_size=16, limit=EXAMPLES, lr=1e-3)
# The run that is killed and resumed, with dropout on: the RNG state must be restored too.
RESUMABLE = dict(FIT, name="", sharding="fsdp", epochs=3, dropout=True, seed=3, predict=False)
# A 2-process stream over two JSONL files (split_dataset_by_node gives each process one), 20 and 28 pairs: 8
# pairs a process a step in one shape planned from the global stream's first step. It runs out before max_steps.
# max_length 24 (rows of 24 tokens) with the shortest pairs planned on: later, longer steps must defer pairs.
STREAM = dict(
    kind="stream", batch_size=16, max_steps=20, lookahead=1, dropout=True, seed=3, predict=False, max_length=24
)
SHARD_SIZES = (20, 28)
BAD_ROW = 12  # of process 1's file: a pair with no second text, past the planned first step (see _bad_stream)
WORDS = (
    "the a man woman dog cat plays runs guitar field music park red blue small large quickly slowly "
    "house car child ball water tree sings eats bread river city green old young"
).split()


def synthetic_pairs(n: int, seed: int = 0) -> list[tuple[str, str, float]]:
    """``n`` distinct sentence pairs with an STS-B-like score in [0, 5]: 5 x the Jaccard overlap of their words."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str, float]] = []
    while len(rows) < n:
        first = list(rng.choice(WORDS, size=rng.integers(3, 10)))
        # Mostly paraphrase-like (mean score ~3.7 of 5, as the first STS-B training pairs): the model's output
        # must move away from 0 (loss ln 2), so a few steps visibly lower the loss.
        share = rng.uniform(0.6, 1.0)
        kept = [w for w in first if rng.random() < share]
        second = kept + list(rng.choice(WORDS, size=rng.integers(0 if kept else 1, 2)))
        a, b = " ".join(first), " ".join(rng.permutation(second))
        if any((a, b) == row[:2] for row in rows):
            continue
        overlap = len(set(a.split()) & set(b.split())) / len(set(a.split()) | set(b.split()))
        rows.append((a, b, round(5.0 * overlap, 2)))
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Processes:
    """Starts worker subprocesses and kills every one still running when the fixture ends."""

    def __init__(self, root: Path, data: Path, model: Path) -> None:
        self.root, self.data, self.model = root, data, model
        self.cache = root / "jax_cache"
        self.running: list[subprocess.Popen] = []
        self.lock = threading.Lock()

    def run(self, name: str, devices: int, jobs: list[dict], processes: int = 1) -> dict:
        """Run ``jobs`` in ``processes`` workers of ``devices`` CPU devices each; never raises.

        Returns ``{"results": [per process], "returncodes": [...], "logs": [...], "seconds": ...}``; a
        result is None where the worker wrote none (crash, kill, timeout)."""
        out_dir = self.root / name
        spec = {"model_dir": str(self.model), "data": str(self.data), "out_dir": str(out_dir), "jobs": jobs}
        if processes > 1:
            spec["distributed"] = {"coordinator": f"127.0.0.1:{_free_port()}", "num_processes": processes}
        spec_file = self.root / f"{name}.json"
        spec_file.write_text(json.dumps(spec))
        env = dict(os.environ)
        env.update(
            JAX_PLATFORMS="cpu",
            XLA_FLAGS=xla_flags(f"--xla_force_host_platform_device_count={devices}"),
            JAX_COMPILATION_CACHE_DIR=str(self.cache),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
            TOKENIZERS_PARALLELISM="false",
        )
        started = time.monotonic()
        procs, logs = [], []
        for pid in range(processes):
            log = self.root / f"{name}_{pid}.log"
            logs.append(log)
            with open(log, "w") as f:
                proc = subprocess.Popen(
                    [sys.executable, str(WORKER), str(spec_file), str(pid)], env=env, stdout=f, stderr=f
                )
            with self.lock:
                self.running.append(proc)
            procs.append(proc)
        returncodes = []
        for proc in procs:
            try:
                returncodes.append(proc.wait(timeout=max(1.0, TIMEOUT_S - (time.monotonic() - started))))
            except subprocess.TimeoutExpired:
                returncodes.append("timeout")
                for other in procs:  # a lone survivor of a distributed run would wait forever for its peer
                    other.kill()
        for proc in procs:
            proc.wait()
            with self.lock:
                self.running.remove(proc)
        results = []
        for pid in range(processes):
            path = out_dir / f"result_{pid}.json"
            results.append(json.loads(path.read_text()) if path.exists() else None)
        return {
            "results": results,
            "returncodes": returncodes,
            "logs": [log.read_text()[-4000:] for log in logs],
            "seconds": time.monotonic() - started,
        }

    def kill_all(self) -> None:
        with self.lock:
            for proc in self.running:
                proc.kill()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    rows = synthetic_pairs(48)
    assert len({score for _, _, score in rows}) > 10  # varied labels: the loss and Spearman mean something
    root = tmp_path_factory.mktemp("scale_out")
    data = root / "pairs.json"
    data.write_text(json.dumps(rows))
    model = root / "tiny-bert"
    _tiny_bert(model)

    procs = _Processes(root, data, model)
    ck = root / "kill_resume_checkpoints"
    one_device = [
        dict(FIT, name="replicated", sharding="replicated", export=str(root / "export_1dev_replicated")),
        dict(FIT, name="fsdp", sharding="fsdp", evaluator=True, export=str(root / "export_1dev_fsdp")),
    ]
    eight_devices = [
        dict(RESUMABLE, name="reference", export=str(root / "export_reference")),
        dict(FIT, name="replicated", sharding="replicated", export=str(root / "export_8dev_replicated")),
        dict(
            FIT,
            name="fsdp",
            sharding="fsdp",
            evaluator=True,
            checkpoint_path=str(root / "checkpoints_8dev"),
            export=str(root / "export_8dev_fsdp"),
        ),
        dict(FIT, name="batch_12", sharding="fsdp", batch_size=12, predict=False),
    ]
    two_processes = [
        dict(
            FIT,
            name="fsdp",
            sharding="fsdp",
            evaluator=True,
            checkpoint_path=str(root / "checkpoints_2proc"),
            export=str(root / "export_2proc_{process}"),
        ),
        {"name": "interleaved", "kind": "interleaved_mesh"},
        {"name": "trainer_best", "kind": "trainer_best"},
        dict(FIT, name="lr_differs", process_1_lr=1e-2, predict=False),
        {"name": "mismatches", "kind": "mismatches"},
    ]
    stream_order, files = _stream_files(rows, root)
    stream = dict(STREAM, files=files)
    two_processes.append(dict(stream, name="stream"))
    # The same stream with a bad example in process 1's shard: checked in its step, read to the log at once
    # (logging_steps=1) or only by the next step's dispatch.
    bad_stream = dict(stream, files=[files[0], _bad_stream_file(files[1], root)])
    two_processes.append(dict(bad_stream, name="stream_bad"))
    two_processes.append(dict(bad_stream, name="stream_bad_unlogged", logging_steps=1000))
    stream_ck = dict(stream, checkpoint_path=str(root / "stream_checkpoints"), save_steps=2)
    stream_killed = [dict(stream_ck, name="stream_killed", kill_after_step=3, kill_wait_for_step=2)]
    stream_resumed = [dict(stream_ck, name="stream_resumed")]
    # Process 1 gets a preemption notice (SIGTERM) as step 3 is fed; no periodic checkpoint before it. The resume
    # must end as the uninterrupted "fsdp" run of two_processes.
    preempted = dict(
        two_processes[0], name="preempted", checkpoint_path=str(root / "preempt_checkpoints"), save_steps=100
    )
    preempted.pop("export")
    preempt_resumed = dict(preempted, name="preempt_resumed", export=str(root / "export_preempt_resumed_{process}"))
    preempted.update(term_after_step=2, term_process=1, predict=False)
    checkpointed = dict(RESUMABLE, checkpoint_path=str(ck), save_steps=2, save_total_limit=2)
    killed = [
        dict(checkpointed, name="killed", kill_after_step=5, kill_wait_for_step=4, fed_log=str(root / "fed.jsonl"))
    ]
    garbled, truncated = root / "checkpoints_garbled", root / "checkpoints_truncated"
    resumed = [
        dict(checkpointed, name="resumed", export=str(root / "export_resumed")),
        dict(checkpointed, name="other_batch_size", batch_size=8),
        dict(checkpointed, name="other_dataset_size", limit=EXAMPLES - 4),
        dict(checkpointed, name="other_labels", label_scale=4.0),  # same size, other data
        {"name": "garble", "action": "garble", "source": str(ck), "target": str(garbled)},
        dict(checkpointed, name="garbled", checkpoint_path=str(garbled)),
        {"name": "truncate", "action": "truncate", "source": str(ck), "target": str(truncated)},
        dict(checkpointed, name="truncated", checkpoint_path=str(truncated)),
        {"name": "drop_damaged", "action": "delete_step", "target": str(garbled), "step": 9},
        dict(checkpointed, name="from_earlier_step", checkpoint_path=str(garbled), export=str(root / "export_8")),
    ]
    # A run that never happened (its chain hung) reads as None, which _results reports.
    out: dict = collections.defaultdict(lambda: None)
    out.update(root=root, checkpoints=ck, garbled=garbled, truncated=truncated, stream_order=stream_order)

    def chain_1():
        out["1dev"] = procs.run("1dev", 1, one_device)
        out["2proc"] = procs.run("2proc", 4, two_processes, processes=2)
        out["stream_killed"] = procs.run("stream_killed", 4, stream_killed, processes=2)
        out["stream_resumed"] = procs.run("stream_resumed", 4, stream_resumed, processes=2)

    def chain_2():
        out["8dev"] = procs.run("8dev", 8, eight_devices)
        out["killed"] = procs.run("killed", 8, killed)
        out["resumed"] = procs.run("resumed", 8, resumed)
        trainer_stream = [{"name": "trainer_stream", "kind": "trainer_stream"}]
        out["trainer_stream"] = procs.run("trainer_stream", 4, trainer_stream, processes=2)
        out["preempted"] = procs.run("preempted", 4, [preempted], processes=2)
        out["preempt_resumed"] = procs.run("preempt_resumed", 4, [preempt_resumed], processes=2)

    threads = [threading.Thread(target=chain_1), threading.Thread(target=chain_2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=4 * TIMEOUT_S)
    finally:
        procs.kill_all()
    timings = {k: round(v["seconds"], 1) for k, v in out.items() if isinstance(v, dict) and "seconds" in v}
    print(f"scale-out subprocess wall times (s): {timings}")
    yield out
    procs.kill_all()


def _stream_files(rows: list, root: Path) -> tuple[list[int], list[str]]:
    """Two JSONL files of the rows, the 16 shortest pairs first (the plan, made from that first step, then gives
    later, longer steps too few rows: they defer pairs); returns the rows' order in the stream and the files."""
    by_length = sorted(range(len(rows)), key=lambda i: (len(rows[i][0].split()) + len(rows[i][1].split()), i))
    first = sorted(by_length[:16])
    order = first + [i for i in range(len(rows)) if i not in first]
    files = []
    for index, part in enumerate((order[: SHARD_SIZES[0]], order[SHARD_SIZES[0] :])):
        path = root / f"stream_{index}.jsonl"
        lines = [json.dumps({"sentence1": rows[i][0], "sentence2": rows[i][1], "label": rows[i][2] / 5}) for i in part]
        path.write_text("\n".join(lines) + "\n")
        files.append(str(path))
    return order, files


def _bad_stream_file(path: str, root: Path) -> str:
    """``path`` with its row ``BAD_ROW`` missing the second text."""
    lines = Path(path).read_text().splitlines()
    row = json.loads(lines[BAD_ROW])
    lines[BAD_ROW] = json.dumps({**row, "sentence2": None})
    bad = root / "stream_1_bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    return str(bad)


def _tiny_bert(directory: Path) -> None:
    """A random 2-layer BERT and a word-level tokenizer for ``WORDS`` (vocab_size as BERT's: the word embedding
    stays large enough for fsdp to shard it)."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, BertTokenizer

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        vocab_size=30522,
        num_labels=1,
    )
    AutoModelForSequenceClassification.from_config(config).save_pretrained(directory)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}).save_pretrained(directory)


def _results(run: dict | None) -> list[dict]:
    """The per-process results of a run; fails with the workers' log tails if one is missing."""
    if run is None:
        pytest.fail("the run did not happen (an earlier run of its chain hung)")
    if any(r is None for r in run["results"]) or any(rc != 0 for rc in run["returncodes"]):
        logs = "\n----\n".join(run["logs"])
        pytest.fail(f"worker failed (return codes {run['returncodes']}):\n{logs}")
    return run["results"]


def _job(run: dict, name: str) -> dict:
    job = _results(run)[0]["jobs"][name]
    if "error" in job:
        pytest.fail(f"job {name} failed:\n{job['error']['traceback']}")
    return job


def _load(directory: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(directory / "model.safetensors"))


def _max_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _max_tensor_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(_max_diff(a[k], b[k]) for k in a)


def _per_epoch(fed: list[list[int]], steps_per_epoch: int = 3) -> list[list[int]]:
    return [sum(fed[i : i + steps_per_epoch], []) for i in range(0, len(fed), steps_per_epoch)]


def _report(what: str, **diffs: float) -> None:
    """Print the measured differences (shown with ``pytest -s``)."""
    print(f"\n{what}: " + ", ".join(f"max |diff| {k} {v:.2e}" for k, v in diffs.items()))


def _assert_trained(losses: list[float]) -> None:
    assert abs(losses[-1] - losses[0]) > 5e-3, f"the loss barely moved ({losses}): the comparison would be vacuous"


# --------------------------------------------------------------------------------------- 8 devices vs 1


@pytest.mark.parametrize("mode", ["replicated", "fsdp"])
def test_eight_devices_match_one_device(runs, mode):
    one, eight = _job(runs["1dev"], mode), _job(runs["8dev"], mode)
    assert _results(runs["1dev"])[0]["device_count"] == 1
    assert _results(runs["8dev"])[0]["device_count"] == 8
    assert len(one["losses"]) == len(eight["losses"]) == 6  # 2 epochs x 3 steps
    _assert_trained(one["losses"])
    # The same batches, in the same order (8 devices pack them into 8 groups, so compare each batch as a set).
    assert [sorted(b) for b in one["fed"]] == [sorted(b) for b in eight["fed"]]
    exported_one = _load(runs["root"] / f"export_1dev_{mode}")
    exported_eight = _load(runs["root"] / f"export_8dev_{mode}")
    _report(
        f"8 vs 1 device, {mode}",
        losses=_max_diff(one["losses"], eight["losses"]),
        predictions=_max_diff(one["predictions"], eight["predictions"]),
        params=_max_tensor_diff(exported_one, exported_eight),
    )
    assert _max_diff(one["losses"], eight["losses"]) <= 1e-5
    assert _max_diff(one["predictions"], eight["predictions"]) <= 1e-5
    assert np.std(one["predictions"]) > 0
    assert _max_tensor_diff(exported_one, exported_eight) <= 1e-5


def test_fsdp_really_shards_parameters_and_optimizer_state(runs):
    assert _job(runs["8dev"], "replicated")["sharded_params"] == {}
    fsdp = _job(runs["8dev"], "fsdp")
    sharded = fsdp["sharded_params"]
    word = [k for k in sharded if "word" in k]
    assert word, f"the word embedding is replicated under fsdp; sharded: {sharded}"
    assert "'data'" in sharded[word[0]]
    # Adam's moments are laid out like their parameters (mu and nu of each sharded parameter).
    moments = [k for k in fsdp["sharded_opt_state"] if "word" in k]
    assert len(moments) == 2, fsdp["sharded_opt_state"]
    assert all(fsdp["sharded_opt_state"][k] == sharded[word[0]] for k in moments)


def test_batch_size_not_divisible_by_devices_is_a_clear_error(runs):
    error = _results(runs["8dev"])[0]["jobs"]["batch_12"].get("error")
    assert error is not None and error["type"] == "ValueError"
    message = error["message"]
    assert "batch_size=12" in message and "8 data shards" in message
    assert "8, 16, 24" in message  # the sizes that work


# --------------------------------------------------------------------------------------- 2 processes


def test_two_processes_match_one_process_with_eight_devices(runs):
    p0, p1 = _results(runs["2proc"])
    for index, result in enumerate((p0, p1)):
        assert result["process_index"] == index
        assert result["process_count"] == 2
        assert result["local_device_count"] == 4 and result["device_count"] == 8
        assert result["cpu_collectives"] == "gloo"  # chosen by initialize_distributed
    single = _job(runs["8dev"], "fsdp")
    jobs = [p0["jobs"]["fsdp"], p1["jobs"]["fsdp"]]
    for job in jobs:
        assert "error" not in job, job.get("error", {}).get("traceback")
    for job in jobs:
        assert _max_diff(job["losses"], single["losses"]) <= 1e-5
        # predict (and the evaluator inside fit) give every process the full result
        assert _max_diff(job["predictions_before"], single["predictions_before"]) <= 1e-5
        assert _max_diff(job["predictions"], single["predictions"]) <= 1e-5
        assert job["best_score"] == pytest.approx(single["best_score"], abs=1e-5)
        assert job["sharded_params"] == single["sharded_params"]
    _assert_trained(single["losses"])

    # Only process 0 writes the export, and it equals the single-process export.
    root = runs["root"]
    _report(
        "2 processes x 4 devices vs 1 process x 8 devices, fsdp",
        losses=max(_max_diff(job["losses"], single["losses"]) for job in jobs),
        predictions=max(_max_diff(job["predictions"], single["predictions"]) for job in jobs),
        params=_max_tensor_diff(_load(root / "export_2proc_0"), _load(root / "export_8dev_fsdp")),
    )
    assert jobs[0]["export_returned"] is not None and jobs[1]["export_returned"] is None
    assert not (root / "export_2proc_1").exists()
    assert _max_tensor_diff(_load(root / "export_2proc_0"), _load(root / "export_8dev_fsdp")) <= 1e-5
    # Both processes wrote their shards of the same checkpoints.
    steps = sorted(p.name for p in (root / "checkpoints_2proc").iterdir() if p.name.isdigit())
    assert steps == ["4", "6"]

    # Every example exactly once per epoch over the two processes; empty pair slots are never counted.
    assert len(jobs[0]["fed"]) == len(jobs[1]["fed"]) == 6
    for epoch, (mine, theirs) in enumerate(zip(_per_epoch(jobs[0]["fed"]), _per_epoch(jobs[1]["fed"]), strict=True)):
        assert sorted(mine + theirs) == list(range(EXAMPLES)), f"epoch {epoch}"
    # Full batches split 8 + 8 (each process holds 4 of the 8 groups of 2 pair slots); the last batch of an
    # epoch has 12 real pairs, dealt over the 8 groups by token count.
    assert [len(b) for b in jobs[0]["fed"][:2]] == [len(b) for b in jobs[1]["fed"][:2]] == [8, 8]
    assert [len(a) + len(b) for a, b in zip(jobs[0]["fed"], jobs[1]["fed"], strict=True)] == [16, 16, 12] * 2
    # Together they feed exactly what the single process fed, step by step.
    for step, (a, b, whole) in enumerate(zip(jobs[0]["fed"], jobs[1]["fed"], single["fed"], strict=True)):
        assert sorted(a + b) == sorted(whole), f"step {step + 1}"


def test_two_process_trainer_keeps_the_best_model_of_an_fsdp_run(runs):
    """load_best_model_at_end gathers the best parameters from both processes' shards (fetching a sharded
    array that spans another process's devices fails)."""
    jobs = [result["jobs"]["trainer_best"] for result in _results(runs["2proc"])]
    for job in jobs:
        assert "error" not in job, job.get("error", {}).get("traceback")
        assert job["best_step"] in (2, 4)
    assert jobs[0]["predictions"] == jobs[1]["predictions"]


def test_two_process_trainer_streams_each_process_its_own_shard(runs):
    """Each process reads only its shard of the stream (the planning read of the stream's first steps aside).
    The shards hold, step by step, the halves of the in-memory sampler's steps: the same losses and model as in
    memory, to round-off (the pairs are packed otherwise). A run stopped after step 2 and resumed ends as the
    uninterrupted one, bit for bit. Rows that outgrow the shape planned from the first step wait for a later
    step: every row of each shard is trained once, in order, and the processes agree on every step."""
    jobs = [result["jobs"]["trainer_stream"] for result in _results(runs["trainer_stream"])]
    for process, job in enumerate(jobs):
        assert "error" not in job, job.get("error", {}).get("traceback")
        shard, stream, in_memory = job["shards"][process], job["stream"], job["in_memory"]
        assert stream["read"]["crossjax-trainer-stream"] == sorted(shard)
        assert stream["global_step"] == 3 and stream["stream_rows"] == 24  # 3 steps of 8 rows a process
        np.testing.assert_allclose(list(stream["losses"].values()), list(in_memory["losses"].values()), rtol=1e-5)
        np.testing.assert_allclose(stream["predictions"], in_memory["predictions"], rtol=1e-5, atol=1e-6)
        stopped, resumed = job["stopped"], job["resumed"]
        assert stopped["global_step"] == 2 and resumed["global_step"] == 3
        assert list(resumed["read"]) == ["crossjax-trainer-stream"]  # the plan comes from the checkpoint
        assert resumed["read"]["crossjax-trainer-stream"] == sorted(shard)  # datasets' skip reads the rows it skips
        assert resumed["losses"]["3"] == stream["losses"]["3"]
        assert resumed["predictions"] == stream["predictions"]
        # Hugging Face's total_flos counts every process's tokens, the checkpoint's too (the shards' differ)
        assert resumed["total_flos"] == stream["total_flos"] == in_memory["total_flos"] > 0
        deferring = job["deferring"]
        assert [row for step in deferring["fitted"] for row in step] == list(range(24))
        assert deferring["global_step"] > 3 and deferring["stream_rows"] == 24
    assert jobs[0]["stream"]["losses"] == jobs[1]["stream"]["losses"]
    assert jobs[0]["resumed"]["total_flos"] == jobs[1]["resumed"]["total_flos"]
    assert jobs[0]["deferring"]["losses"] == jobs[1]["deferring"]["losses"]
    assert jobs[0]["deferring"]["global_step"] == jobs[1]["deferring"]["global_step"]


def test_processes_given_different_settings_stop_with_a_clear_error(runs):
    """Process 1 was given another learning rate: both processes refuse before training (they would otherwise
    train their replicas apart, or wait forever in a collective when the step counts differ)."""
    for result in _results(runs["2proc"]):
        error = result["jobs"]["lr_differs"].get("error")
        assert error is not None and error["type"] == "ValueError"
        assert "were given different settings" in error["message"]


def test_processes_given_different_pairs_weights_or_disks_stop_with_a_clear_error(runs):
    """What would otherwise score or train silently wrong, or hang: process 1 scores other pairs than process 0
    (each computes its share of every batch: both would get wrong scores), loads other weights (the replicas
    would train apart), resolves the checkpoint folder on its own disk (the first checkpoint would wait
    forever for the other process's files), streams its own file (the processes would plan other shapes), or
    alone refuses a resume (the other waited in orbax's restore). Every process refuses each by name; then both
    still predict."""
    results = _results(runs["2proc"])
    for result in results:
        told = result["jobs"]["mismatches"]
        assert "called predict (or an evaluator) with different pairs" in told["predict"]
        assert "loaded different weights" in told["weights"] and "process(es) [1] differ" in told["weights"]
        assert "is not one folder for every process: process(es) [1] do not see" in told["checkpoint_folder"]
        assert told["marks_left"] == []
        assert "were given different training data" in told["own_streams"]
    # the process that refused says why; the other that it refused (a probe's run hung in orbax's restore)
    assert "max_length: checkpoint 64 vs now 7" in results[1]["jobs"]["mismatches"]["one_refuses"]
    assert "process(es) [1] of this run refused to resume" in results[0]["jobs"]["mismatches"]["one_refuses"]
    assert results[0]["jobs"]["mismatches"]["after"] == results[1]["jobs"]["mismatches"]["after"]


def test_mesh_interleaving_the_processes_feeds_the_right_rows(runs):
    """A mesh whose device order alternates between processes: each process must feed the rows its devices
    hold (not a contiguous half), or predictions would land on the wrong pairs."""
    p0, p1 = (r["jobs"]["interleaved"] for r in _results(runs["2proc"]))
    assert p0["process_rows"] == [0, 1, 4, 5, 8, 9, 12, 13]
    assert p1["process_rows"] == [2, 3, 6, 7, 10, 11, 14, 15]
    for job in (p0, p1):
        # The random tiny model's scores differ by ~1e-5 between pairs: misplaced rows would show.
        assert np.ptp(job["usual"]) > 1e-5
        assert _max_diff(job["usual"], job["interleaved"]) <= 1e-7


# --------------------------------------------------------------------------------------- kill and resume


def test_killed_run_resumes_exactly(runs):
    killed = runs["killed"]
    if killed is None:
        pytest.fail("the run to kill did not happen (an earlier run of its chain hung)")
    assert killed["returncodes"] == [-signal.SIGKILL], killed["logs"]
    fed_before_kill = [json.loads(line) for line in (runs["root"] / "fed.jsonl").read_text().splitlines()]
    assert len(fed_before_kill) == 5  # killed while step 6 was being fed
    reference = _job(runs["8dev"], "reference")
    resumed = _job(runs["resumed"], "resumed")
    assert resumed["resumed_from_step"] == 4  # the checkpoint of step 4, not a fresh start
    assert resumed["history"][0]["step"] == 5 and resumed["global_step"] == 9
    assert len(reference["losses"]) == 9
    _assert_trained(reference["losses"])
    # The exact data position: steps 5.. of the resumed run feed what the uninterrupted run fed.
    assert fed_before_kill[:4] + resumed["fed"] == reference["fed"]
    assert fed_before_kill == reference["fed"][:5]
    for epoch in _per_epoch(reference["fed"]):
        assert sorted(epoch) == list(range(EXAMPLES))
    # Same losses and parameters as the run that was never interrupted, dropout on (RNG restored).
    root = runs["root"]
    _report(
        "killed at step 5 + resumed from step 4 vs uninterrupted, dropout on",
        losses=_max_diff(resumed["losses"], reference["losses"][4:]),
        params=_max_tensor_diff(_load(root / "export_resumed"), _load(root / "export_reference")),
    )
    assert _max_diff(resumed["losses"], reference["losses"][4:]) <= 1e-6
    assert _max_tensor_diff(_load(root / "export_resumed"), _load(root / "export_reference")) <= 1e-6


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        ("other_batch_size", "batch_size: checkpoint 16 vs now 8"),
        ("other_dataset_size", f"examples: checkpoint {EXAMPLES} vs now {EXAMPLES - 4}"),
        ("other_labels", "data: checkpoint"),
    ],
)
def test_resuming_another_run_is_refused(runs, job, expected):
    error = _results(runs["resumed"])[0]["jobs"][job].get("error")
    assert error is not None, f"{job} resumed a checkpoint of another run"
    assert error["type"] == "CheckpointMismatchError"
    assert expected in error["message"]
    if job == "other_labels":  # same size and settings: only the data hash tells them apart
        assert "examples:" not in error["message"] and "batch_size:" not in error["message"]


@pytest.mark.parametrize("damage", ["garbled", "truncated"])
def test_damaged_checkpoint_is_reported_and_earlier_step_kept(runs, damage):
    jobs = _results(runs["resumed"])[0]["jobs"]
    action = jobs["garble" if damage == "garbled" else "truncate"]
    assert action["latest"] == 9
    error = jobs[damage].get("error")
    assert error is not None, f"a {damage} checkpoint was restored without complaint"
    assert error["type"] == "CheckpointCorruptError"
    message = error["message"]
    assert "step 9" in message and "[8]" in message and "Nothing was deleted" in message
    if damage == "garbled":
        # Flipped bytes inside zstd-compressed data: the decoder fails, or (inside a stored block) the values
        # change silently and only the checksums catch it. Which one depends on the bytes the run wrote; the
        # checksum path is tested deterministically in test_hardening.py.
        assert "does not match the checksums" in message or "could not be restored" in message
    # The earlier step is still there, byte for byte, and so is the damaged one (nothing was overwritten).
    original, damaged_copy = runs["checkpoints"], runs[damage]
    if damage == "truncated":
        assert (damaged_copy / "9").is_dir()
    for path in sorted((original / "8").rglob("*")):
        if path.is_file():
            copy = damaged_copy / path.relative_to(original)
            assert copy.read_bytes() == path.read_bytes(), f"{copy} changed"


def test_resume_from_earlier_step_after_removing_damaged_one(runs):
    job = _job(runs["resumed"], "from_earlier_step")
    assert job["resumed_from_step"] == 8 and job["global_step"] == 9
    root = runs["root"]
    assert _max_tensor_diff(_load(root / "export_8"), _load(root / "export_reference")) <= 1e-6


# --------------------------------------------------------------------------------------- multi-host stream


def _stream_jobs(run: dict | None, name: str) -> list[dict]:
    jobs = [result["jobs"][name] for result in _results(run)]
    for job in jobs:
        if "error" in job:
            pytest.fail(f"job {name} failed:\n{job['error']['traceback']}")
    return jobs


def test_two_process_stream_reads_only_its_own_shard(runs):
    jobs = _stream_jobs(runs["2proc"], "stream")
    order = runs["stream_order"]
    shards = [order[: SHARD_SIZES[0]], order[SHARD_SIZES[0] :]]
    for p, (job, shard) in enumerate(zip(jobs, shards, strict=True)):
        # Planning read the global stream's first step; the process's reader tokenized its own file only, once.
        assert job["tokenized"]["crossjax-stream-plan"] == order[:16], f"process {p}"
        assert job["tokenized"]["crossjax-stream"] == shard, f"process {p}"
        # It trained on all of it, each pair once, in stream order (a step's pairs are the next ones of its
        # shard, fed in packing order); at most 8 pairs (its share) a step.
        bounds = np.cumsum([0] + [len(fed) for fed in job["fed"]])
        assert bounds[-1] == len(shard) == job["stream_examples"], f"process {p}"
        for fed, start, stop in zip(job["fed"], bounds[:-1], bounds[1:], strict=True):
            assert sorted(fed) == sorted(shard[start:stop]), f"process {p}"
        assert 0 < max(len(fed) for fed in job["fed"]) <= 8  # at most its share a step
    # Some step deferred pairs that did not fit the agreed shape (fewer than 8 with more of the shard to come).
    assert any(
        len(fed) < 8 and any(job["fed"][i + 1 :]) for job in jobs for i, fed in enumerate(job["fed"])
    ), [[len(f) for f in job["fed"]] for job in jobs]
    # Both ran the same steps, stopping together when both shards were used up (before max_steps), with one
    # global loss a step and the same parameters.
    p0, p1 = jobs
    assert p0["global_step"] == p1["global_step"] < STREAM["max_steps"]
    # The last step fed was the empty one that found both shards used up: it is not counted (and changed nothing).
    assert len(p0["fed"]) == len(p1["fed"]) == p0["global_step"] + 1
    assert p0["fed"][-1] == p1["fed"][-1] == [] and (p0["fed"][-2] or p1["fed"][-2])
    assert len(p0["losses"]) == p0["global_step"]
    assert p0["losses"] == p1["losses"] and all(np.isfinite(p0["losses"]))
    assert p0["losses"][-1] < p0["losses"][0] - 5e-3, p0["losses"]
    assert p0["params_sha256"] == p1["params_sha256"]


def test_two_process_stream_resumes_exactly(runs):
    killed = runs["stream_killed"]
    if killed is None:
        pytest.fail("the stream run to kill did not happen (an earlier run of its chain hung)")
    assert killed["returncodes"] == [-signal.SIGKILL] * 2, killed["logs"]
    straight = _stream_jobs(runs["2proc"], "stream")
    resumed = _stream_jobs(runs["stream_resumed"], "stream_resumed")
    for p, (whole, job) in enumerate(zip(straight, resumed, strict=True)):
        assert job["resumed_from_step"] == 2 and job["global_step"] == whole["global_step"], f"process {p}"
        # Each process restarts at its own data position: the same pairs in the same steps from step 3 on.
        assert job["fed"] == whole["fed"][2:], f"process {p}"
        assert job["stream_examples"] == whole["stream_examples"]
        assert job["losses"] == whole["losses"][2:], f"process {p}"  # bit-exact, dropout on
        assert job["params_sha256"] == whole["params_sha256"], f"process {p}"


def test_a_preemption_notice_to_one_process_checkpoints_one_step_on_all_and_resumes_exactly(runs):
    """SIGTERM to process 1 only: JAX's preemption service tells process 0, both checkpoint the same step and stop
    with status 143 (a SIGTERM ended the run before this: with jax.distributed the signal was caught and the run
    went on until the scheduler killed it, losing every step since the last checkpoint); the resumed run ends
    where the uninterrupted one does."""
    preempted = runs["preempted"]
    if preempted is None:
        pytest.fail("the preempted run did not happen (an earlier run of its chain hung)")
    assert preempted["returncodes"] == [143, 143], preempted["logs"]
    jobs = [r["jobs"]["preempted"]["preempted"] for r in preempted["results"]]
    step = jobs[0]["step"]
    assert jobs[1]["step"] == step and 3 <= step < 6, jobs  # one step for both, after the notice, before the end
    folder = runs["root"] / "preempt_checkpoints"
    assert all(job["checkpoint"] == str(folder) and job["status"] == 143 for job in jobs)
    # the preemption's checkpoint, and the resumed run's last step
    assert sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) == [step, 6]
    straight = _job(runs["2proc"], "fsdp")
    resumed = _job(runs["preempt_resumed"], "preempt_resumed")
    assert resumed["resumed_from_step"] == step and resumed["global_step"] == straight["global_step"] == 6
    assert _max_diff(resumed["losses"], straight["losses"][step:]) <= 1e-6
    assert _max_diff(resumed["predictions"], straight["predictions"]) <= 1e-6
    root = runs["root"]
    assert _max_tensor_diff(_load(root / "export_preempt_resumed_0"), _load(root / "export_2proc_0")) <= 1e-6


def test_two_process_stream_with_a_bad_example_stops_every_process(runs):
    """A bad example past the planned steps, in one process's shard: every process stops after the same steps
    with an error that says why (none waits for its peer until a timeout), and the model is that of the last
    step before it, on both."""
    straight = _stream_jobs(runs["2proc"], "stream")
    stopped_models = set()
    for name in ("stream_bad", "stream_bad_unlogged"):
        p0, p1 = (result["jobs"][name] for result in _results(runs["2proc"]))
        assert "error" in p0 and "error" in p1, name
        first, second = p0["error"], p1["error"]
        assert second["type"] == "ValueError", second["traceback"]
        assert f"Example {BAD_ROW}" in second["message"], second["message"]
        match = re.search(r"every process stopped at step (\d+)", second["traceback"])
        assert match, second["traceback"]
        stopped = int(match.group(1))
        assert first["type"] == "RuntimeError", first["traceback"]
        assert f"stopped at step {stopped} of a multi-host stream: process 1 " in first["message"], first["message"]
        # The bad example is in process 1's 2nd chunk of 8 pairs, while process 0 still has pairs to feed.
        assert 2 <= stopped <= 3, stopped
        for p, (job, whole) in enumerate(zip((p0, p1), straight, strict=True)):
            # The steps before it fed what the run without the bad example fed; the stopped step (process 1 fed
            # nothing) and, read lazily, the one packed after it were not trained.
            assert job["fed"][: stopped - 1] == whole["fed"][: stopped - 1], f"{name}, process {p}"
            after = job["fed"][stopped - 1 :]
            assert after == ([[]] * len(after) if p else whole["fed"][stopped - 1 : len(job["fed"])]), f"{name} {p}"
        assert len(p0["fed"]) == stopped + (name == "stream_bad_unlogged"), name
        if name == "stream_bad":  # logged every step: the losses of the steps that trained, as in the whole run
            assert p0["losses"] == p1["losses"] == straight[0]["losses"][: stopped - 1]
        assert p0["params_sha256"] == p1["params_sha256"], name
        stopped_models.add((stopped, p0["params_sha256"]))
    assert len(stopped_models) == 1, stopped_models  # read at once or one step later: the same model
