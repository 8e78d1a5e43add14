"""Subprocess worker of ``test_scale_out.py``: runs a list of ``fit`` jobs on the CPU devices it was given.

Usage: ``python scale_out_worker.py SPEC.json [PROCESS_ID]``. The caller sets ``JAX_PLATFORMS=cpu`` and
``XLA_FLAGS=--xla_force_host_platform_device_count=N``; with ``spec["distributed"]`` the process joins a
multi-process run through ``crossjax.parallel.initialize_distributed``. Results go to
``spec["out_dir"]/result_{PROCESS_ID}.json``.

Instrumentation (worker-side monkeypatching, no library hooks needed):

* every packed training batch (``packing.pack`` is wrapped) records, when it is fed, the example indices of
  the real pair slots in the groups this process's devices hold (empty slots excluded), checking that each
  slot's tokens are its example's;
* a ``stream`` job trains on a JSONL ``datasets`` stream and records, by row of the data, which examples
  each reader thread tokenized (planning vs this process's shard) and which it fed;
* ``kill_after_step`` SIGKILLs the process when step ``kill_after_step + 1`` is about to be fed, once the
  checkpoint of step ``kill_wait_for_step`` is on disk, so the kill point is deterministic;
* ``term_after_step`` sends process ``term_process`` SIGTERM (a preemption notice) when step
  ``term_after_step + 1`` is about to be fed; the preempted job ends the job list and the process exits with the
  status ``TrainingPreempted`` carries.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any


def act(job: dict) -> dict:
    """File operations between fit jobs: damage a copy of a checkpoint, or delete one of its steps."""
    import shutil

    if job["action"] == "delete_step":
        shutil.rmtree(Path(job["target"]) / str(job["step"]))
        return {}
    target = Path(job["target"])
    shutil.copytree(job["source"], target)
    latest = max(int(p.name) for p in target.iterdir() if p.name.isdigit())
    files = [p for p in (target / str(latest) / "state").rglob("*") if p.is_file()]
    victim = max(files, key=lambda p: p.stat().st_size)  # the largest array data file
    data = bytearray(victim.read_bytes())
    if job["action"] == "garble":  # flip the bits of 64 bytes in the middle: same size, other values
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    else:  # truncate
        data = data[: len(data) // 2]
    victim.write_bytes(bytes(data))
    return {"latest": latest, "damaged_file": str(victim.relative_to(target))}


def train_keeping_best(model_dir: str, rows: list, job: dict, out_dir: Path) -> dict:
    """CrossEncoderTrainer with ``load_best_model_at_end`` on an fsdp mesh: the best parameters are gathered
    from every process's shards (a sharded array spanning other processes cannot be fetched)."""
    from datasets import Dataset

    from crossjax import CrossEncoder, losses
    from crossjax.evaluation import CrossEncoderCorrelationEvaluator
    from crossjax.trainer import CrossEncoderTrainer
    from crossjax.training_args import CrossEncoderTrainingArguments

    model = CrossEncoder(model_dir, num_labels=1, max_length=64, sharding="fsdp")
    columns = {"a": [a for a, _, _ in rows], "b": [b for _, b, _ in rows], "label": [s / 5 for *_, s in rows]}
    train = Dataset.from_dict(columns)
    evaluator = CrossEncoderCorrelationEvaluator(
        [[a, b] for a, b, _ in rows[:16]], [s / 5 for *_, s in rows[:16]], name="dev"
    )
    args = CrossEncoderTrainingArguments(
        str(out_dir / "trainer_best"),
        per_device_train_batch_size=8,
        max_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="no",
        load_best_model_at_end=True,
        metric_for_best_model="eval_dev_spearman",
        report_to=[],
    )
    trainer = CrossEncoderTrainer(
        model=model, args=args, train_dataset=train, loss=losses.BinaryCrossEntropyLoss(model), evaluator=evaluator
    )
    try:
        trainer.train()
    except Exception as e:  # noqa: BLE001 - reported to the test
        return {"error": {"type": type(e).__name__, "message": str(e), "traceback": traceback.format_exc()}}
    pairs = [(a, b) for a, b, _ in rows[:8]]
    return {"best_step": trainer.state.best_global_step, "predictions": [float(x) for x in model.predict(pairs)]}


def train_from_a_stream(model_dir: str, rows: list, out_dir: Path) -> dict:
    """CrossEncoderTrainer over a ``datasets.IterableDataset`` of two shards, each process reading only its own,
    against the same rows in memory: the shards are cut so that the rows the two processes take for a step are
    the rows of the in-memory sampler's step (its first epoch's order). Then a run stopped after step 2 and
    resumed; then a run whose later steps outgrow the shape planned from its first step (they defer rows)."""
    import numpy as np
    from datasets import Dataset
    from transformers import TrainerCallback

    from crossjax import CrossEncoder, losses
    from crossjax.list_batches import ListData, StreamListData
    from crossjax.trainer import CrossEncoderTrainer
    from crossjax.training_args import CrossEncoderTrainingArguments

    columns = {"a": [a for a, _, _ in rows], "b": [b for _, b, _ in rows], "label": [s / 5 for *_, s in rows]}
    step_rows = 16  # 2 rows on each of the 8 devices
    order = [int(i) for i in np.random.default_rng((0, 0)).permutation(len(rows))]
    # shard p: the p-th half of every in-memory step's rows
    shards = [[order[s + p * 8 + i] for s in range(0, len(rows), step_rows) for i in range(8)] for p in range(2)]
    by_length = sorted(range(len(rows)), key=lambda i: (len(rows[i][0].split()) + len(rows[i][1].split()), i))
    short_first = [by_length[:16], by_length[16:]]  # the 16 shortest rows make the first step (8 a shard)
    deferring_shards = [sorted(short_first[0])[p::2] + sorted(short_first[1])[p::2] for p in range(2)]
    read: list[tuple[str, int]] = []  # (thread, row) of each row this process's readers took from the stream

    def stream(shard_rows: list[list[int]]) -> Any:
        ids = {"id": list(range(len(rows)))}
        dataset = Dataset.from_dict({**columns, **ids}).select(shard_rows[0] + shard_rows[1])
        return dataset.to_iterable_dataset(num_shards=2).map(
            lambda row: read.append((threading.current_thread().name, row["id"])) or {}, remove_columns="id"
        )

    class StopAfterStep2(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 2

    fitted: list[list[int]] = []  # the shard rows of each step this process trained (deferring run)
    fitting_rows = StreamListData._fitting_rows

    def recording(self, pending, *args):
        taken, laid = fitting_rows(self, pending, *args)
        fitted.append([i for i, _ in pending[:taken]])
        return taken, laid

    runs = {
        "in_memory": (Dataset.from_dict(columns), losses.BinaryCrossEntropyLoss, {}),
        "stream": (stream(shards), losses.BinaryCrossEntropyLoss, {}),
        "stopped": (stream(shards), losses.BinaryCrossEntropyLoss, {"save_steps": 2, "callbacks": [StopAfterStep2()]}),
        "resumed": (stream(shards), losses.BinaryCrossEntropyLoss, {"resume": True}),
        "deferring": (stream(deferring_shards), lambda m: losses.MultipleNegativesRankingLoss(m, num_negatives=3), {
            "max_steps": 20
        }),
    }
    result = {"shards": shards, "deferring_shards": deferring_shards}
    for name, (dataset, loss_of, settings) in runs.items():
        read.clear()
        model = CrossEncoder(model_dir, num_labels=1, max_length=64, config_kwargs={"hidden_dropout_prob": 0.0})
        args = CrossEncoderTrainingArguments(
            str(out_dir / ("trainer_stopped" if name == "resumed" else f"trainer_{name}")),
            per_device_train_batch_size=2, max_steps=settings.get("max_steps", 3), seed=0, report_to=[],
            disable_tqdm=True, save_strategy="steps" if "save_steps" in settings else "no",
            save_steps=settings.get("save_steps", 500),
        )  # fmt: skip
        if name == "deferring":
            ListData.PLAN_SAMPLE_STEPS, StreamListData._fitting_rows = 1, recording
        try:
            callbacks = settings.get("callbacks")
            trainer = CrossEncoderTrainer(model, args, dataset, loss=loss_of(model), callbacks=callbacks)
            output = trainer.train(resume_from_checkpoint=True if settings.get("resume") else None)
        except Exception as e:  # noqa: BLE001 - reported to the test
            return {"error": {"type": type(e).__name__, "message": str(e), "traceback": traceback.format_exc()}}
        finally:
            ListData.PLAN_SAMPLE_STEPS, StreamListData._fitting_rows = 64, fitting_rows
        result[name] = {
            "losses": {h["step"]: h["loss"] for h in model.training_history},
            "global_step": output.global_step,
            "predictions": [float(x) for x in model.predict([(a, b) for a, b, _ in rows[:8]])],
            "stream_rows": output.metrics.get("stream_rows"),
            "total_flos": output.metrics["total_flos"],
            "read": {thread: sorted(r for t, r in read if t == thread) for thread in {t for t, _ in read}},
        }
    result["deferring"]["fitted"] = fitted
    return result


def predict_on_interleaved_mesh(model_dir: str, pairs: list) -> dict:
    """Predict on the usual mesh, then on one whose device order alternates between the processes."""
    import jax
    from flax import nnx

    from crossjax import CrossEncoder
    from crossjax.parallel import make_mesh, process_rows, put_global

    ce = CrossEncoder(model_dir, num_labels=1, max_length=64)
    usual = ce.predict(pairs, batch_size=16)
    groups = [[d for d in jax.devices() if d.process_index == p] for p in range(jax.process_count())]
    ce.mesh_plan = make_mesh("replicated", devices=[d for group in zip(*groups, strict=True) for d in group])
    params = jax.device_get(nnx.state(ce.model, nnx.Param))  # fully replicated: every process has it all
    nnx.update(ce.model, put_global(params, ce.mesh_plan.state_shardings(params)))
    return {
        "process_rows": process_rows(ce.mesh_plan.batch, 16).tolist(),
        "usual": [float(x) for x in usual],
        "interleaved": [float(x) for x in ce.predict(pairs, batch_size=16)],
    }


def refuse_mismatches(model_dir: str, rows: list, out_dir: Path) -> dict:
    """What each process is told when the processes were given different pairs to score, different weights, or
    a checkpoint folder that is not one folder for all (the same relative path in each process's own working
    directory, as on each worker's own disk); then a predict of the same pairs, which must still work."""
    import os

    import jax

    from crossjax import CrossEncoder, DataLoader, InputExample
    from crossjax.models import FlaxAutoModelForSequenceClassification

    pid, told = jax.process_index(), {}

    def attempt(name: str, call) -> None:
        try:
            call()
            told[name] = None
        except ValueError as e:
            told[name] = str(e)

    ce = CrossEncoder(model_dir, num_labels=1, max_length=64)
    pairs = [(a, b) for a, b, _ in rows]
    attempt("predict", lambda: ce.predict(pairs[: 8 if pid == 0 else 6], batch_size=16))
    source = model_dir
    if pid == 1:  # a copy with a moved head: same architecture, other weights
        moved = FlaxAutoModelForSequenceClassification.from_pretrained(model_dir)
        moved.classifier.bias[...] = moved.classifier.bias[...] + 1.0
        source = str(moved.save_pretrained(out_dir / "moved_head", ce.tokenizer))
    attempt("weights", lambda: CrossEncoder(source, num_labels=1, max_length=64))
    disk = out_dir / f"disk_{pid}"
    disk.mkdir(parents=True, exist_ok=True)
    here = os.getcwd()
    os.chdir(disk)
    try:
        examples = [InputExample(texts=[a, b], label=s / 5) for a, b, s in rows[:32]]
        loader = DataLoader(examples, batch_size=16)
        attempt(
            "checkpoint_folder",
            lambda: ce.fit(loader, epochs=1, checkpoint_path="checkpoints", show_progress_bar=False),
        )
    finally:
        os.chdir(here)
    told["marks_left"] = [str(p) for p in disk.rglob(".crossjax-shared-folder-check")]
    # Each process its own stream (its own file): crossjax splits one stream between the processes and plans the
    # shapes from its first steps, which would differ; refused by every process before a step.
    import datasets

    own = out_dir / f"own_stream_{pid}.jsonl"
    own.write_text("".join(json.dumps({"a": a, "b": b, "label": s / 5}) + "\n" for a, b, s in rows[pid::2]))
    stream = datasets.load_dataset("json", data_files=[str(own)], split="train", streaming=True)
    attempt("own_streams", lambda: ce.fit(stream, max_steps=2, batch_size=16, show_progress_bar=False))
    # A resume that one process refuses alone (here a setting made to differ on process 1 only, after the check
    # that settings agree): every process stops, none waits in orbax's restore for the other.
    from crossjax.checkpoint import TrainCheckpointer

    loader = DataLoader([InputExample(texts=[a, b], label=s / 5) for a, b, s in rows[:32]], batch_size=16)
    shared = str(out_dir / "refused_resume")
    ce.fit(loader, epochs=1, checkpoint_path=shared, show_progress_bar=False)  # 2 steps, checkpointed
    real_restore = TrainCheckpointer.restore_latest

    def restore_on_process_1_of_another_run(self, *args, **kwargs):
        if pid == 1:
            self.fingerprint = {**self.fingerprint, "max_length": 7}
        return real_restore(self, *args, **kwargs)

    TrainCheckpointer.restore_latest = restore_on_process_1_of_another_run
    try:
        attempt("one_refuses", lambda: ce.fit(loader, epochs=1, checkpoint_path=shared, show_progress_bar=False))
    finally:
        TrainCheckpointer.restore_latest = real_restore
    told["after"] = [float(x) for x in ce.predict(pairs[:8], batch_size=16)]
    return told


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    process_id = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    dist = spec.get("distributed")
    if dist:
        import jax

        from crossjax.parallel import initialize_distributed

        # Older JAX has no CPU collectives by default: initialize_distributed must choose gloo itself.
        jax.config.update("jax_cpu_collectives_implementation", None)
        initialize_distributed(dist["coordinator"], dist["num_processes"], process_id)

    import jax
    import numpy as np
    from flax import nnx

    from crossjax import CrossEncoder, DataLoader, InputExample, fit_loop, packing, training
    from crossjax import data as data_lib
    from crossjax.checkpoint import TrainCheckpointer
    from crossjax.evaluation import CECorrelationEvaluator
    from crossjax.parallel import process_rows
    from crossjax.runtime import TrainingPreempted

    rows = json.loads(Path(spec["data"]).read_text())
    out_dir = Path(spec["out_dir"])
    result: dict = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "cpu_collectives": jax.config.jax_cpu_collectives_implementation,
        "jobs": {},
    }

    recorder = {
        "active": False, "fed": [], "log": None, "calls": 0, "kill": None, "term": None, "ids": None, "tokenized": None
    }  # fmt: skip
    orig_pack = packing.pack
    orig_to_global = training.batch_to_global

    def pack(tokenized, indices, labels, *args, **kwargs):
        batch = orig_pack(tokenized, indices, labels, *args, **kwargs)
        if labels is not None:  # a training batch (prediction passes labels=None)
            batch._tokenized = tokenized
        return batch

    def record_fed(batch, plan, local: bool) -> None:
        groups = batch.input_ids.shape[0]
        mine = process_rows(plan.batch, groups) if jax.process_count() > 1 and not local else np.arange(groups)
        fed = []
        for g in mine:
            for p in np.flatnonzero(batch.indices[g] >= 0):
                example = int(batch.indices[g, p])
                ids = batch._tokenized.input_ids[example]
                row, start = batch.pair_row[g, p], batch.pair_start[g, p]
                assert np.array_equal(batch.input_ids[g, row, start : start + len(ids)], ids), "slot is not its example"
                fed.append(example if recorder["ids"] is None else recorder["ids"][tuple(int(t) for t in ids)])
        recorder["fed"].append(fed)
        if recorder["log"] is not None:
            with open(recorder["log"], "a") as f:
                f.write(json.dumps(fed) + "\n")

    def batch_to_global(batch, plan, *global_groups):
        if recorder["active"] and hasattr(batch, "_tokenized"):
            recorder["calls"] += 1
            kill = recorder["kill"]
            if kill is not None and recorder["calls"] == kill["after_step"] + 1:
                step_dir = Path(kill["checkpoint_path"]) / str(kill["wait_for_step"])
                deadline = time.monotonic() + 120
                while not step_dir.is_dir() and time.monotonic() < deadline:
                    time.sleep(0.05)
                os.kill(os.getpid(), signal.SIGKILL)
            term = recorder["term"]
            if term and recorder["calls"] == term["after_step"] + 1 and jax.process_index() == term["process"]:
                os.kill(os.getpid(), signal.SIGTERM)  # a preemption notice to this process only
            record_fed(batch, plan, bool(global_groups))
        return orig_to_global(batch, plan, *global_groups)

    def params_sha256(model) -> str:
        params = jax.device_get(jax.tree.leaves(nnx.state(model, nnx.Param)))  # replicated: all here
        return hashlib.sha256(b"".join(np.asarray(p).tobytes() for p in params)).hexdigest()

    def not_replicated(tree) -> dict:
        return {
            jax.tree_util.keystr(path): str(x.sharding.spec)
            for path, x in jax.tree_util.tree_leaves_with_path(tree)
            if not x.sharding.is_fully_replicated
        }

    saved_layouts = []  # how the optimizer state is laid out on the mesh, as checkpointed
    orig_save = TrainCheckpointer.save

    def save(self, step, state, extra, **kwargs):
        saved_layouts.append(not_replicated(state.opt_state))
        return orig_save(self, step, state, extra, **kwargs)

    TrainCheckpointer.save = save
    orig_tokenize = data_lib.tokenize_pairs

    def tokenize_pairs(tokenizer, texts_a, texts_b, *args, **kwargs):
        if recorder["tokenized"] is not None:  # by reader thread: the planning read or this process's shard
            rows = recorder["tokenized"].setdefault(threading.current_thread().name, [])
            rows.extend(recorder["row_of"][(a, b)] for a, b in zip(texts_a, texts_b, strict=True))
        return orig_tokenize(tokenizer, texts_a, texts_b, *args, **kwargs)

    data_lib.tokenize_pairs = tokenize_pairs
    packing.pack = pack
    training.batch_to_global = batch_to_global

    exit_status = 0
    for job in spec["jobs"]:
        name = job["name"]
        started = time.perf_counter()
        res: dict = {}
        result["jobs"][name] = res
        if job.get("action"):
            res.update(act(job))
            continue
        if job.get("kind") == "interleaved_mesh":
            res.update(predict_on_interleaved_mesh(spec["model_dir"], [(a, b) for a, b, _ in rows]))
            continue
        if job.get("kind") == "trainer_best":
            res.update(train_keeping_best(spec["model_dir"], rows, job, out_dir))
            continue
        if job.get("kind") == "trainer_stream":
            res.update(train_from_a_stream(spec["model_dir"], rows, out_dir))
            continue
        if job.get("kind") == "mismatches":
            res.update(refuse_mismatches(spec["model_dir"], rows, out_dir))
            continue
        limit = job.get("limit", len(rows))
        scale = job.get("label_scale", 5.0)
        examples = [InputExample(texts=[a, b], label=s / scale) for a, b, s in rows[:limit]]
        config_kwargs = {} if job.get("dropout") else {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
        ce = CrossEncoder(
            spec["model_dir"],
            num_labels=1,
            max_length=job.get("max_length", 64),
            config_kwargs=config_kwargs,
            seed=job.get("seed", 0),
            sharding=job.get("sharding", "replicated"),
        )
        evaluator = None
        if job.get("evaluator"):
            evaluator = CECorrelationEvaluator(
                [[a, b] for a, b, _ in rows[:limit]], [s / 5.0 for _, _, s in rows[:limit]], batch_size=16
            )
        fit_kwargs = dict(
            epochs=job.get("epochs", 2),
            warmup_steps=2,
            # process_1_lr: process 1 is given another learning rate than the others (a misconfigured run)
            optimizer_params={"lr": job.get("process_1_lr" if jax.process_index() == 1 else "lr", job.get("lr", 1e-3))},
            show_progress_bar=False,
            logging_steps=job.get("logging_steps", 1),
            evaluator=evaluator,
        )
        if job.get("checkpoint_path"):
            fit_kwargs.update(
                checkpoint_path=job["checkpoint_path"],
                checkpoint_save_steps=job.get("save_steps", 2),
                checkpoint_save_total_limit=job.get("save_total_limit", 2),
            )
        pairs = [(a, b) for a, b, _ in rows[:limit]]
        if job.get("predict", True):  # before any fit too: the model's state was only placed, not trained
            res["predictions_before"] = [float(x) for x in ce.predict(pairs, batch_size=16)]
        loader = DataLoader(examples, batch_size=job["batch_size"], shuffle=True)
        recorder.update(
            active=True, fed=[], calls=0, log=job.get("fed_log"), kill=None, term=None, ids=None, tokenized=None
        )
        if job.get("kind") == "stream":  # a JSONL stream over the files of the job, max_steps steps
            import datasets

            loader = datasets.load_dataset("json", data_files=job["files"], split="train", streaming=True)
            fit_kwargs.update(max_steps=job["max_steps"], batch_size=job["batch_size"])
            fit_loop.STREAM_LOOKAHEAD = job["lookahead"]
            row_of = {(a, b): i for i, (a, b, _) in enumerate(rows)}
            encoded = ce.tokenizer(
                [a for a, _, _ in rows], [b for _, b, _ in rows], truncation=True, max_length=ce.max_length
            )
            recorder.update(
                ids={tuple(ids): i for i, ids in enumerate(encoded["input_ids"])}, tokenized={}, row_of=row_of
            )
        saved_layouts.clear()
        if job.get("kill_after_step"):
            recorder["kill"] = {
                "after_step": job["kill_after_step"],
                "wait_for_step": job["kill_wait_for_step"],
                "checkpoint_path": job["checkpoint_path"],
            }
        if job.get("term_after_step"):
            recorder["term"] = {"after_step": job["term_after_step"], "process": job.get("term_process", 0)}
        try:
            summary = ce.fit(loader, **fit_kwargs)
        except TrainingPreempted as e:  # the job list ends here, and the process with the status it asks for
            res["preempted"] = {"step": e.global_step, "checkpoint": e.checkpoint, "status": e.code}
            res["fed"] = recorder["fed"]
            res["losses"] = [h["loss"] for h in ce.training_history]
            exit_status = e.code
            break
        except Exception as e:  # noqa: BLE001 - reported to the test, which decides
            res["error"] = {"type": type(e).__name__, "message": str(e), "traceback": traceback.format_exc()}
            res["seconds"] = time.perf_counter() - started
            if recorder["tokenized"] is not None:  # a stream that stopped: what it fed and the model it left
                res["fed"] = recorder["fed"]
                res["losses"] = [h["loss"] for h in ce.training_history]
                res["params_sha256"] = params_sha256(ce.model)
            continue
        finally:
            recorder["active"] = False
        res["global_step"] = summary["global_step"]
        res["resumed_from_step"] = summary.get("resumed_from_step")
        res["history"] = ce.training_history
        res["losses"] = [h["loss"] for h in ce.training_history]
        res["best_score"] = summary["best_score"]
        res["fed"] = recorder["fed"]
        if recorder["tokenized"] is not None:
            res["tokenized"] = recorder["tokenized"]
            res["stream_examples"] = summary["stream_examples"]
            res["params_sha256"] = params_sha256(ce.model)
        res["sharded_params"] = not_replicated(nnx.state(ce.model, nnx.Param))
        if saved_layouts:
            res["sharded_opt_state"] = saved_layouts[0]
        if job.get("predict", True):
            res["predictions"] = [float(x) for x in ce.predict(pairs, batch_size=16)]
        if job.get("export"):
            export = Path(job["export"].format(process=jax.process_index()))
            written = ce.save(export)
            res["export_returned"] = None if written is None else str(written)
        res["seconds"] = time.perf_counter() - started

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"result_{jax.process_index()}.json").write_text(json.dumps(result))
    sys.exit(exit_status)


if __name__ == "__main__":
    main()
