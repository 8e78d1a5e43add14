"""CrossEncoderTrainer against sentence-transformers 6.2's CrossEncoderTrainer, loss by loss.

The oracle is sentence-transformers' own trainer (Hugging Face Trainer + torch AdamW) on the same tiny BERT
checkpoint with dropout off. Each dataset is one full batch (batch size = rows), so the order of rows inside a
batch cannot matter. For each loss: the first step's loss equals sentence-transformers' (its collator and
``compute_loss`` on the same rows), the parameters after one step equal to 1e-5, after three steps to 1e-4.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_bert

from crossjax import CrossEncoder, losses
from crossjax.checkpoint import CheckpointMismatchError
from crossjax.trainer import CrossEncoderTrainer
from crossjax.training_args import CrossEncoderTrainingArguments

WORDS = "apple river stone cloud music table green quick slow bright dark paper glass ocean forest city".split()
ROWS = 6
LR = 1e-3
# Parameters whose true gradient is exactly zero: attention key biases (softmax ignores a per-query constant)
# and, for losses of score differences within a query (margins, lists), the classifier bias. Adam turns the
# round-off of a zero gradient into steps of size lr in either library: they are compared loosely, all else tightly.
KEY_BIAS = "attention.self.key.bias"
SHIFT_INVARIANT = {
    "mnrl_softmax", "margin_mse", "ranknet", "listnet", "listmle", "plistmle", "lambda_ndcg2pp", "lambda_rank",
    "adr_mse",
}  # fmt: skip


def _text(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, size=n))




@pytest.fixture(scope="module")
def tiny_dirs(minilm_dir, tmp_path_factory) -> dict[int, Path]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    settings = dict(dropout=0.0, initializer_range=0.2)
    return {n: save_tiny_bert(tmp_path_factory.mktemp(f"t{n}"), tokenizer, n, seed=7 + n, **settings) for n in (1, 3)}


def _dataset(kind: str) -> dict[str, list]:
    rng = np.random.default_rng(3)
    queries = [_text(rng, 3) for _ in range(ROWS)]
    docs = lambda: [_text(rng, int(rng.integers(3, 9))) for _ in range(ROWS)]  # noqa: E731
    if kind == "pairs":
        return {"q": queries, "d": docs(), "label": [float(x) for x in rng.uniform(0, 1, ROWS)]}
    if kind == "classes":
        return {"q": queries, "d": docs(), "label": [int(x) for x in rng.integers(0, 3, ROWS)]}
    if kind == "classes_some_unlabelled":  # -100: torch's default ignore_index, rows the loss leaves out
        labels = [int(x) for x in rng.integers(0, 3, ROWS)]
        return {"q": queries, "d": docs(), "label": [-100 if i % 4 == 1 else y for i, y in enumerate(labels)]}
    if kind == "bools":  # a dataset's boolean column: 1.0 / 0.0, as torch converts it
        return {"q": queries, "d": docs(), "label": [bool(x) for x in rng.integers(0, 2, ROWS)]}
    if kind == "triplets":
        return {"q": queries, "pos": docs(), "neg": docs()}
    if kind == "margins":
        return {"q": queries, "pos": docs(), "neg": docs(), "score": [float(x) for x in rng.normal(0, 2, ROWS)]}
    if kind == "lists":
        counts = [2, 4, 3, 4, 1, 3]
        lists = [[_text(rng, int(rng.integers(2, 8))) for _ in range(c)] for c in counts]
        labels = [[float(x) for x in rng.integers(0, 3, c)] for c in counts]
        for row in labels:  # every query has a relevant document
            row[0] = max(row[0], 1.0)
        return {"q": queries, "docs": lists, "labels": labels}
    raise ValueError(kind)


# (case id, dataset kind, labels of the model, crossjax loss factory, sentence-transformers loss factory)
def _cases():
    from sentence_transformers.cross_encoder import losses as st

    return [
        ("bce", "pairs", 1, lambda m: losses.BinaryCrossEntropyLoss(m), lambda m: st.BinaryCrossEntropyLoss(m)),
        ("bce_pos_weight", "pairs", 1, lambda m: losses.BinaryCrossEntropyLoss(m, pos_weight=2.0),
         lambda m: st.BinaryCrossEntropyLoss(m, pos_weight=__import__("torch").tensor(2.0))),
        ("ce", "classes", 3, lambda m: losses.CrossEntropyLoss(m), lambda m: st.CrossEntropyLoss(m)),
        ("ce_ignore_index", "classes_some_unlabelled", 3, lambda m: losses.CrossEntropyLoss(m),
         lambda m: st.CrossEntropyLoss(m)),
        ("bce_bool_labels", "bools", 1, lambda m: losses.BinaryCrossEntropyLoss(m),
         lambda m: st.BinaryCrossEntropyLoss(m)),
        ("mse", "pairs", 1, lambda m: losses.MSELoss(m), lambda m: st.MSELoss(m)),
        ("margin_mse", "margins", 1, lambda m: losses.MarginMSELoss(m), lambda m: st.MarginMSELoss(m)),
        ("mnrl", "triplets", 1, lambda m: losses.MultipleNegativesRankingLoss(m, num_negatives=None),
         lambda m: st.MultipleNegativesRankingLoss(m, num_negatives=None)),
        ("mnrl_softmax", "triplets", 1,
         lambda m: losses.MultipleNegativesRankingLoss(m, num_negatives=None, activation_fn="softmax"),
         lambda m: st.MultipleNegativesRankingLoss(m, num_negatives=None,
                                                   activation_fn=__import__("torch").nn.Softmax(dim=-1))),
        ("cached_mnrl", "triplets", 1,
         lambda m: losses.CachedMultipleNegativesRankingLoss(m, num_negatives=None, mini_batch_size=4),
         lambda m: st.CachedMultipleNegativesRankingLoss(m, num_negatives=None, mini_batch_size=4)),
        ("ranknet", "lists", 1, lambda m: losses.RankNetLoss(m), lambda m: st.RankNetLoss(m)),
        ("listnet", "lists", 1, lambda m: losses.ListNetLoss(m), lambda m: st.ListNetLoss(m)),
        ("listmle", "lists", 1, lambda m: losses.ListMLELoss(m), lambda m: st.ListMLELoss(m)),
        ("plistmle", "lists", 1, lambda m: losses.PListMLELoss(m), lambda m: st.PListMLELoss(m)),
        ("lambda_ndcg2pp", "lists", 1, lambda m: losses.LambdaLoss(m), lambda m: st.LambdaLoss(m)),
        ("lambda_rank", "lists", 1, lambda m: losses.LambdaLoss(m, weighting_scheme=losses.LambdaRankScheme()),
         lambda m: st.LambdaLoss(m, weighting_scheme=st.LambdaRankScheme())),
        ("adr_mse", "lists", 1, lambda m: losses.ADRMSELoss(m), lambda m: st.ADRMSELoss(m)),
    ]


CASES = [
    "bce", "bce_pos_weight", "ce", "ce_ignore_index", "bce_bool_labels", "mse", "margin_mse", "mnrl", "mnrl_softmax",
    "cached_mnrl", "ranknet", "listnet", "listmle", "plistmle", "lambda_ndcg2pp", "lambda_rank", "adr_mse",
]  # fmt: skip


def _st_run(directory: Path, kind: str, st_loss, tmp: Path, **settings) -> tuple[float, list[dict[str, np.ndarray]]]:
    """sentence-transformers' first-step loss and its parameters after steps 1 and 3 (``settings``: more
    training arguments)."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder as STCrossEncoder
    from sentence_transformers.cross_encoder import CrossEncoderTrainer as STTrainer
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments as STArgs
    from transformers import TrainerCallback

    torch.manual_seed(0)
    model = STCrossEncoder(str(directory), device="cpu")
    dataset = Dataset.from_dict(_dataset(kind))
    snapshots: list[dict[str, np.ndarray]] = []

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (1, 3):
                snapshots.append({k: v.detach().clone().numpy() for k, v in model.model.state_dict().items()})

    args = STArgs(
        output_dir=str(tmp / "st"),
        per_device_train_batch_size=ROWS,
        max_steps=3,
        learning_rate=LR,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        **settings,
    )
    loss = st_loss(model)
    trainer = STTrainer(model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[Snapshot()])
    batch = trainer.data_collator([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        first_loss = float(trainer.compute_loss(model, batch))
    trainer.train()
    return first_loss, snapshots


def _ours(directory: Path, kind: str, loss, tmp: Path, **settings):
    """crossjax's first-step loss and its parameters after steps 1 and 3 (a callback reads them)."""
    model = CrossEncoder(str(directory))
    loss.model = model
    snapshots: list[dict[str, np.ndarray]] = []

    class Snapshot:
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step in (1, 3):
                snapshots.append(model.model.hf_state_dict())

    args = CrossEncoderTrainingArguments(
        str(tmp / "ours"),
        per_device_train_batch_size=ROWS,
        max_steps=3,
        learning_rate=LR,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        **settings,
    )
    CrossEncoderTrainer(model=model, args=args, train_dataset=_dataset(kind), loss=loss, callbacks=[Snapshot()]).train()
    return model.training_history[0]["loss"], snapshots


def _compare(
    ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], rtol: float, atol: float, zero_grad: tuple[str, ...]
) -> None:
    keys = [k for k in theirs if not k.endswith("position_ids")]
    assert set(keys) <= set(ours), sorted(set(keys) - set(ours))
    for key in keys:
        tolerance = max(atol, 6 * LR) if key.endswith(zero_grad) else atol
        np.testing.assert_allclose(ours[key], theirs[key], rtol=rtol, atol=tolerance, err_msg=key)


@pytest.mark.parametrize("case", CASES)
def test_trainer_steps_equal_sentence_transformers(case, tiny_dirs, tmp_path):
    _, kind, num_labels, make_ours, make_theirs = next(c for c in _cases() if c[0] == case)
    directory = tiny_dirs[num_labels]
    st_first_loss, (st_after_1, st_after_3) = _st_run(directory, kind, make_theirs, tmp_path)
    first_loss, (after_1, after_3) = _ours(directory, kind, make_ours(CrossEncoder(str(directory))), tmp_path)
    np.testing.assert_allclose(first_loss, st_first_loss, rtol=1e-5)
    zero_grad = (KEY_BIAS, "classifier.bias") if case in SHIFT_INVARIANT else (KEY_BIAS,)
    # Adam's first step moves every parameter by about lr = 1e-3: 1e-5 is 1% of one step.
    _compare(after_1, st_after_1, rtol=1e-5, atol=1e-5, zero_grad=zero_grad)
    _compare(after_3, st_after_3, rtol=1e-4, atol=5e-5, zero_grad=zero_grad)


@pytest.mark.parametrize(
    "settings",
    [
        {"optim": "adafactor", "lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr": 1e-4}},
        {"optim": "sgd", "optim_args": "momentum=0.9,nesterov=True", "lr_scheduler_type": "polynomial",
         "lr_scheduler_kwargs": {"power": 2.0}, "weight_decay": 0.1},
        {"optim": "rmsprop", "optim_args": "momentum=0.5", "lr_scheduler_type": "warmup_stable_decay",
         "lr_scheduler_kwargs": {"num_decay_steps": 2, "decay_type": "1-sqrt"}, "warmup_steps": 1},
    ],
    ids=["adafactor-cosine_with_min_lr", "sgd-polynomial", "rmsprop-wsd"],
)  # fmt: skip
def test_trainer_optimizers_and_schedules_equal_sentence_transformers(settings, tiny_dirs, tmp_path):
    """Hugging Face's other ``optim`` choices with ``optim_args`` and its other ``lr_scheduler_type`` values with
    ``lr_scheduler_kwargs``, through the whole trainer (scanned layers, transposed kernels, Hugging Face's
    weight-decay groups): the parameters after 1 and 3 steps equal sentence-transformers' trainer's."""
    _, kind, num_labels, make_ours, make_theirs = next(c for c in _cases() if c[0] == "bce")
    directory = tiny_dirs[num_labels]
    _, (st_after_1, st_after_3) = _st_run(directory, kind, make_theirs, tmp_path, **settings)
    _, (after_1, after_3) = _ours(directory, kind, make_ours(CrossEncoder(str(directory))), tmp_path, **settings)
    # RMSprop's first steps are 10 x lr (its average starts at 0.01 g^2): round-off in a near-zero gradient
    # moves a parameter 10 times as far as under Adam, so its tolerance after 3 steps is 10 times Adam's.
    scale = 10.0 if settings["optim"] == "rmsprop" else 1.0
    _compare(after_1, st_after_1, rtol=1e-5, atol=1e-5, zero_grad=(KEY_BIAS,))
    _compare(after_3, st_after_3, rtol=1e-4, atol=5e-5 * scale, zero_grad=(KEY_BIAS,))


def test_learning_rate_mapping_equals_sentence_transformers(tiny_dirs, tmp_path):
    """``learning_rate_mapping`` (parameter-name regex -> learning rate, searched in sentence-transformers' names,
    the last matching pattern winning) with weight decay and a warm-up: the head at 10x, scanned layer 1 frozen
    except its feed-forward output at a third, on both sides of the decay groups. The parameters after 1 and 3
    steps equal sentence-transformers' trainer's, and the frozen ones never move."""
    _, kind, num_labels, make_ours, make_theirs = next(c for c in _cases() if c[0] == "bce")
    directory = tiny_dirs[num_labels]
    settings = {
        "learning_rate_mapping": {r"classifier": 10 * LR, r"layer\.1\.": 0.0, r"layer\.1\.output\.dense": LR / 3},
        "weight_decay": 0.1,
        "warmup_steps": 1,
    }
    _, (st_after_1, st_after_3) = _st_run(directory, kind, make_theirs, tmp_path, **settings)
    model = CrossEncoder(str(directory))
    before = model.model.hf_state_dict()
    _, (after_1, after_3) = _ours(directory, kind, make_ours(model), tmp_path, **settings)
    _compare(after_1, st_after_1, rtol=1e-5, atol=1e-5, zero_grad=(KEY_BIAS,))
    _compare(after_3, st_after_3, rtol=1e-4, atol=5e-5, zero_grad=(KEY_BIAS,))
    frozen = [k for k in before if ".layer.1." in k and ".layer.1.output.dense." not in k]
    assert frozen and all(np.array_equal(after_3[k], before[k]) for k in frozen)
    for faster in ("classifier.weight", "bert.encoder.layer.1.output.dense.weight"):
        assert not np.array_equal(after_3[faster], before[faster])
    with pytest.raises(ValueError, match="No parameters found matching the pattern 'no_such_parameter'"):
        _ours(directory, kind, make_ours(CrossEncoder(str(directory))), tmp_path,
              learning_rate_mapping={"no_such_parameter": LR})  # fmt: skip


# ------------------------------------------------------------------------------------------ arguments
def test_training_argument_defaults_equal_hugging_face_trainer():
    from transformers import TrainingArguments

    ours, theirs = CrossEncoderTrainingArguments("out"), TrainingArguments("out")
    shared = [
        "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
        "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
        "warmup_steps", "gradient_accumulation_steps", "save_steps", "logging_steps", "seed",
        "dataloader_drop_last", "save_total_limit", "load_best_model_at_end", "bf16",
    ]  # fmt: skip
    for name in shared:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.lr_scheduler_type == getattr(theirs.lr_scheduler_type, "value", theirs.lr_scheduler_type)
    for steps, warmup in [(100, 0.1), (7, 0.5), (100, 3)]:
        expected = TrainingArguments("out", warmup_steps=warmup).get_warmup_steps(steps)
        assert CrossEncoderTrainingArguments("out", warmup_steps=warmup).get_warmup_steps(steps) == expected


def test_every_sentence_transformers_argument_is_accepted_at_its_default_and_reads_back():
    """A script may pass any of sentence-transformers 6.2's arguments at its default and read any of them back
    (callbacks read ``args.fp16``, ``args.report_to`` ...)."""
    from dataclasses import MISSING, fields

    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments as STArgs

    defaults = {
        f.name: f.default if f.default is not MISSING else f.default_factory()
        for f in fields(STArgs)
        if f.init and (f.default is not MISSING or f.default_factory is not MISSING)
    }
    skip = {"output_dir", "logging_dir", "report_to", "per_gpu_train_batch_size", "per_gpu_eval_batch_size"}
    given = {name: value for name, value in defaults.items() if name not in skip and not name.startswith("_")}
    ours = CrossEncoderTrainingArguments("out", **{k: v for k, v in given.items() if not hasattr(v, "value")})
    theirs = STArgs("out", **{k: v for k, v in given.items() if not hasattr(v, "value")})
    for name, value in given.items():
        assert hasattr(ours, name), name
        mine, read_back = getattr(ours, name), getattr(theirs, name)
        if name == "accelerator_config":  # Hugging Face's is an accelerate object
            assert mine is None
        elif not hasattr(value, "value") and name != "disable_tqdm":  # enums: own types; tqdm: the log level's
            assert mine == read_back, name
    # every argument in to_dict, as there (crossjax's also has transformers 4's removed ones)
    assert set(theirs.to_dict()) <= set(ours.to_dict())


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"fp16": True}, ValueError, r"fp16=True .*use bf16=True"),
        ({"bf16_full_eval": True}, ValueError, "bf16=True computes the eval loss in bfloat16; evaluators score in"),
        ({"deepspeed": "ds.json"}, ValueError, "deepspeed"),
        ({"dataloader_num_workers": 4, "fsdp": "full_shard"}, ValueError, "fsdp"),
        ({"optim": "adamw_bnb_8bit"}, ValueError, "optim='adamw_bnb_8bit'"),
        ({"lr_scheduler_type": "reduce_lr_on_plateau"}, ValueError, "evaluation metrics"),
        ({"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr": 0.1, "min_lr_rate": 0.1}},
         ValueError, "Only one"),
        ({"per_device_train_batch_size": 0}, ValueError, "per_device_train_batch_size"),
        ({"eval_strategy": "sometimes"}, ValueError, "eval_strategy"),
        ({"load_best_model_at_end": True}, ValueError, "eval_strategy"),
        ({"no_such_argument": 1}, TypeError, "no_such_argument"),
        ({"router_mapping": {"q": "query"}}, ValueError, "router_mapping"),
        ({"learning_rate_mapping": {"x": "fast"}}, ValueError, "must be a learning rate (a number >= 0): 'fast'"),
        ({"learning_rate_mapping": "classifier=1e-3"}, ValueError, "must be a dictionary mapping parameter name"),
        ({"learning_rate_mapping": {"layer.(": 1e-3}}, ValueError, "pattern 'layer.(' is not a regular expression"),
        ({"prompts": {"a": {"q": "x"}}}, ValueError, "per-column prompts"),
        ({"eval_accumulation_steps": 4}, ValueError, "eval_accumulation_steps=4"),
        ({"ignore_data_skip": True}, ValueError, "exact data position"),
        ({"tf32": True}, ValueError, "tf32=True"),
    ],
)
def test_training_arguments_without_jax_meaning_are_errors(kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        CrossEncoderTrainingArguments("out", **kwargs)


def test_sentence_transformers_6_2_spellings_and_trainer_methods(tiny_ce, tmp_path):
    """What sentence-transformers 6.2 scripts pass or call: its Router options left empty, the hashed
    NO_DUPLICATES sampler (the same batches), prompts as a JSON string (parsed, as it does), a callback class
    (made by the trainer, as Hugging Face does), and trainer.save_model()."""
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments as STArgs
    from transformers import TrainerCallback

    from crossjax.training_args import BatchSamplers

    spelled = dict(
        router_mapping={}, learning_rate_mapping={}, prompts='{"a": "x: "}', batch_sampler="no_duplicates_hashed"
    )
    theirs = STArgs(str(tmp_path / "st"), **spelled)
    ours = CrossEncoderTrainingArguments(str(tmp_path / "ours"), **spelled)
    assert ours.prompts == theirs.prompts == {"a": "x: "}
    assert ours.batch_sampler is BatchSamplers.NO_DUPLICATES_HASHED
    assert ours.batch_sampler.value == theirs.batch_sampler.value
    # arguments without effect read back as given (scripts read args.hub_model_id, args.run_name)
    assert CrossEncoderTrainingArguments("o", hub_model_id="me/x").hub_model_id == "me/x"
    assert CrossEncoderTrainingArguments("o").run_name is None
    assert CrossEncoderTrainingArguments("o", dataloader_num_workers=4).dataloader_num_workers == 4  # speed only
    # arguments not given read back as Hugging Face's do (scripts test args.report_to, args.do_eval ...)
    from crossjax.training_args import _NO_EFFECT, _TORCH_ONLY

    for kwargs in ({}, {"eval_strategy": "steps"}):
        ours, theirs = CrossEncoderTrainingArguments("o", **kwargs), STArgs("o", **kwargs)
        for name in [*_NO_EFFECT, *_TORCH_ONLY]:
            if not hasattr(theirs, name) or name == "accelerator_config":  # gone from transformers 5; torch-side
                continue
            expected = getattr(getattr(theirs, name), "value", getattr(theirs, name))  # Hugging Face's enums
            assert getattr(ours, name) == expected, (name, kwargs)
    # tf32=False asks for full-precision float32 matmuls: what crossjax's float32 compute does
    assert CrossEncoderTrainingArguments("o", tf32=False).tf32 is STArgs("o", tf32=False).tf32 is False

    class Counting(TrainerCallback):
        steps = inits = 0

        def on_init_end(self, args, state, control, **kwargs):
            type(self).inits += 1

        def on_step_end(self, args, state, control, **kwargs):
            type(self).steps += 1

    args = CrossEncoderTrainingArguments(
        str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2, batch_sampler="no_duplicates_hashed",
        disable_tqdm=True,
    )  # fmt: skip
    data = {"a": ["x y", "y z", "z w", "w v"], "b": ["p", "q", "r", "s"], "label": [1.0, 0.0, 1.0, 0.0]}
    trainer = CrossEncoderTrainer(model=tiny_ce, args=args, train_dataset=data, callbacks=[Counting])
    assert isinstance(trainer.callbacks[0], Counting)
    assert Counting.inits == 1  # Hugging Face calls on_init_end when the trainer is made
    # trainer.callback_handler as Hugging Face's: the same list, names and event objects
    from transformers.trainer_callback import (
        CallbackHandler,
        DefaultFlowCallback,
        PrinterCallback,
        TrainerControl,
        TrainerState,
    )

    from crossjax.trainer import CallbackHandler as OurHandler

    # Hugging Face's trainer adds its printer (disable_tqdm) after the user's callbacks
    theirs = CallbackHandler([DefaultFlowCallback, Counting, PrinterCallback], None, None, None, None)
    trainer.callback_handler.callbacks.insert(0, DefaultFlowCallback())
    expected = "DefaultFlowCallback\nCounting\nPrinterCallback"
    assert trainer.callback_handler.callback_list == theirs.callback_list == expected
    assert trainer.pop_callback(DefaultFlowCallback) is not None
    assert trainer.callback_handler.callbacks is trainer.callbacks
    assert trainer.callback_handler.processing_class is tiny_ce.tokenizer
    for event, flag in [("on_epoch_begin", "should_epoch_stop"), ("on_step_begin", "should_save"),
                        ("on_log", "should_log"), ("on_step_end", "should_save")]:  # fmt: skip
        cleared = []
        for handler in (OurHandler([], None, None), CallbackHandler([], None, None, None, None)):
            control = TrainerControl(**{flag: True})
            kwargs = {"logs": {}} if event == "on_log" else {}
            getattr(handler, event)(args, TrainerState(), control, **kwargs)
            cleared.append(not getattr(control, flag))
        assert cleared[0] == cleared[1] == (event != "on_step_end"), (event, cleared)
    with pytest.raises(ValueError, match="hyperparameter search"):  # Hugging Face's train(trial=...)
        trainer.train(trial={"learning_rate": 1e-4})
    assert Counting.steps == 0
    trainer.train(ignore_keys_for_eval=["hidden_states"])  # Hugging Face's signature: nothing to ignore here
    assert Counting.steps == 2
    assert isinstance(trainer.pop_callback(Counting), Counting)
    assert trainer.remove_callback(PrinterCallback) is None and trainer.callbacks == []  # Hugging Face's class
    trainer.save_model()
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "run" / "config.json").is_file()
    trainer.save_model(str(tmp_path / "elsewhere"))
    assert CrossEncoder(str(tmp_path / "elsewhere")).num_labels == tiny_ce.num_labels


def test_trainer_takes_a_loss_factory_and_hugging_face_arguments_at_their_defaults(tiny_ce, tmp_path):
    """sentence-transformers calls a loss given as a class (or factory) with the model; Hugging Face's
    arguments crossjax has no use for are taken at their defaults and refused otherwise, saying why."""
    args = CrossEncoderTrainingArguments(str(tmp_path), max_steps=1, per_device_train_batch_size=2, disable_tqdm=True)
    data = {"a": ["x y", "y z"], "b": ["p", "q"], "label": [1.0, 0.0]}
    trainer = CrossEncoderTrainer(
        model=tiny_ce, args=args, train_dataset=data, loss=losses.BinaryCrossEntropyLoss,
        processing_class=tiny_ce.tokenizer, optimizers=(None, None),
    )  # fmt: skip
    assert isinstance(trainer.loss, losses.BinaryCrossEntropyLoss) and trainer.loss.model is tiny_ce
    assert trainer.processing_class is tiny_ce.tokenizer and trainer.is_local_process_zero()
    assert trainer.train().global_step == 1
    with pytest.raises(ValueError, match="compute_metrics= .*evaluator="):
        CrossEncoderTrainer(model=tiny_ce, args=args, train_dataset=data, compute_metrics=lambda p: {})
    with pytest.raises(ValueError, match="processing_class= is the model's tokenizer"):
        CrossEncoderTrainer(model=tiny_ce, args=args, train_dataset=data, processing_class=object())


def test_trainer_parameters_come_in_sentence_transformers_order(tiny_ce, tmp_path):
    """A script passing the trainer's arguments by position (callbacks 11th) means the same here; a collator in
    the 7th place is refused by its name, not taken as callbacks."""
    import inspect

    st_trainer = pytest.importorskip("sentence_transformers.cross_encoder").CrossEncoderTrainer
    theirs = [p for p in inspect.signature(st_trainer.__init__).parameters if p != "self"]
    ours = [p for p in inspect.signature(CrossEncoderTrainer.__init__).parameters if p not in ("self", "kwargs")]
    assert ours == theirs
    args = CrossEncoderTrainingArguments(str(tmp_path), max_steps=1, per_device_train_batch_size=2, disable_tqdm=True)
    data = {"a": ["x y", "y z"], "b": ["p", "q"], "label": [1.0, 0.0]}
    seen = []

    class Begin:
        def on_train_begin(self, args, state, control, **kwargs):
            seen.append(state.max_steps)

    trainer = CrossEncoderTrainer(tiny_ce, args, data, None, None, None, None, tiny_ce.tokenizer, None, None, [Begin()])
    assert trainer.train().global_step == 1 and seen == [1]
    with pytest.raises(ValueError, match="data_collator="):
        CrossEncoderTrainer(tiny_ce, args, data, None, None, None, [Begin()])


def test_metric_for_best_model_direction_follows_hugging_face():
    assert CrossEncoderTrainingArguments("o", metric_for_best_model="eval_ndcg@10").greater_is_better is True
    assert CrossEncoderTrainingArguments("o", metric_for_best_model="loss").greater_is_better is False


# ------------------------------------------------------------------------------------------ behaviour
@pytest.fixture(scope="module")
def tiny_ce(tiny_dirs) -> CrossEncoder:
    return CrossEncoder(str(tiny_dirs[1]))


@pytest.mark.parametrize(
    "dataset, message",
    [
        ({"q": ["a", "b"], "docs": [["x", "y"], ["z"]], "labels": [[1.0, 0.0], [1.0, 0.0]]}, "row 1"),
        ({"q": ["a", "b"], "docs": [["x", "y"], []], "labels": [[1.0, 0.0], []]}, "row 1"),
        ({"q": ["a", "b"], "docs": [["x", "y"], ["z"]], "labels": [[1.0, float("nan")], [1.0]]}, "row 0"),
    ],
)
def test_bad_list_rows_are_named_before_tokenizing_or_compiling(dataset, message, tiny_ce, spies, tmp_path):
    args = CrossEncoderTrainingArguments(str(tmp_path), max_steps=1, save_strategy="no", disable_tqdm=True)
    trainer = CrossEncoderTrainer(model=tiny_ce, args=args, train_dataset=dataset, loss=losses.ListNetLoss(tiny_ce))
    with pytest.raises(ValueError, match=message):
        trainer.train()
    assert spies == []


def test_ranking_loss_needs_one_label(tiny_dirs):
    with pytest.raises(ValueError, match="1 output label"):
        losses.LambdaLoss(CrossEncoder(str(tiny_dirs[3])))


def _params(model: CrossEncoder) -> dict[str, np.ndarray]:
    return model.model.hf_state_dict()


@pytest.mark.parametrize(
    "optimizer",
    [{}, {"optim": "adafactor", "lr_scheduler_type": "warmup_stable_decay", "lr_scheduler_kwargs": {"num_decay_steps": 2}}],  # noqa: E501
    ids=["adamw", "adafactor-wsd"],
)
def test_resumed_run_equals_uninterrupted_run_exactly(optimizer, tiny_dirs, tmp_path):
    """In-batch negatives sampled with the step's generator: a run stopped after step 2 and resumed from its
    checkpoint ends bit-identical to a run that never stopped (Adafactor's factored state restored too)."""
    data = _dataset("triplets")

    def run(output: Path, stop_at: int | None, resume: bool) -> CrossEncoder:
        model = CrossEncoder(str(tiny_dirs[1]))

        class Stop:
            def on_step_end(self, args, state, control, **kwargs):
                control.should_training_stop = stop_at is not None and state.global_step == stop_at

        args = CrossEncoderTrainingArguments(
            str(output), per_device_train_batch_size=3, max_steps=5, save_steps=2, learning_rate=LR,
            disable_tqdm=True, resume_from_checkpoint=resume or None, **optimizer,
        )  # fmt: skip
        loss = losses.MultipleNegativesRankingLoss(model, num_negatives=1)
        CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=loss, callbacks=[Stop()]).train()
        return model

    whole = _params(run(tmp_path / "whole", None, False))
    run(tmp_path / "split", 2, False)
    with pytest.raises(FileExistsError, match="resume_from_checkpoint=True"):
        run(tmp_path / "split", None, False)  # never silently restarts over an earlier run's checkpoints
    resumed = _params(run(tmp_path / "split", None, True))
    for key, value in whole.items():
        np.testing.assert_array_equal(resumed[key], value, err_msg=key)


def test_save_only_model_checkpoints_hold_the_model_and_refuse_a_resume(tiny_dirs, tmp_path, caplog):
    """Hugging Face's save_only_model: each step's folder holds the model that step had, no optimizer state (so
    no resume from it, said by name, as Hugging Face says of it)."""
    pairs = [("a man plays a guitar", "someone makes music"), ("the cat sleeps", "a dog runs in a field")]
    seen: dict[int, np.ndarray] = {}

    class Keep:
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen[state.global_step] = model.predict(pairs)

    def run(resume: bool) -> CrossEncoder:
        model = CrossEncoder(str(tiny_dirs[1]))
        args = CrossEncoderTrainingArguments(
            str(tmp_path), per_device_train_batch_size=2, max_steps=4, save_steps=2, save_only_model=True,
            learning_rate=LR, disable_tqdm=True, resume_from_checkpoint=resume or None,
        )  # fmt: skip
        CrossEncoderTrainer(model=model, args=args, train_dataset=_dataset("pairs"), callbacks=[Keep()]).train()
        return model

    with caplog.at_level("INFO"):
        run(False)
    # orbax's own INFO lines (~50 a checkpoint) stay out of a script's INFO logging; a script's own lines stay
    assert not [r for r in caplog.records if "orbax" in r.pathname and r.levelno < logging.WARNING]
    steps = tmp_path / "checkpoints"
    assert sorted(int(p.name) for p in steps.iterdir() if p.name.isdigit()) == [2, 4]
    for step in (2, 4):
        assert not (steps / str(step) / "state").exists()
        np.testing.assert_allclose(CrossEncoder(str(steps / str(step))).predict(pairs), seen[step], atol=1e-6)
    assert not np.allclose(seen[2], seen[4], atol=1e-6)
    with pytest.raises(CheckpointMismatchError, match="save_only_model=True"):
        run(True)


def test_load_best_model_at_end_restores_the_best_evaluation(tiny_ce, tiny_dirs, tmp_path):
    scores = iter([0.2, 0.9, 0.4])
    seen: dict[int, dict[str, np.ndarray]] = {}

    class Scripted:  # reports to the card, as sentence-transformers' evaluators do
        primary_metric = "made_up"

        def __call__(self, model, **kwargs):
            metrics = {"made_up": next(scores)}
            model.model_card_data.set_evaluation_metrics(self, metrics)
            return metrics

    evaluator = Scripted()

    class Keep:
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen[state.global_step] = _params(model)

    model = CrossEncoder(str(tiny_dirs[1]))
    args = CrossEncoderTrainingArguments(
        str(tmp_path), per_device_train_batch_size=2, max_steps=3, eval_strategy="steps", eval_steps=1,
        save_strategy="no", load_best_model_at_end=True, metric_for_best_model="made_up", learning_rate=LR,
        disable_tqdm=True,
    )  # fmt: skip
    trainer = CrossEncoderTrainer(
        model=model, args=args, train_dataset=_dataset("pairs"), evaluator=evaluator, callbacks=[Keep()]
    )
    trainer.train()
    assert trainer.state.best_global_step == 2 and trainer.state.best_metric == 0.9
    evals = [h for h in trainer.state.log_history if "eval_made_up" in h]
    assert [h["step"] for h in evals] == [1, 2, 3]
    for key, value in seen[2].items():
        np.testing.assert_array_equal(_params(model)[key], value, err_msg=key)
    assert not np.array_equal(seen[3]["classifier.weight"], seen[2]["classifier.weight"])
    # the saved model's card shows that model's evaluation (0.9, not the last one's 0.4) and marks its step
    trainer.save_model(str(tmp_path / "best"))
    text = (tmp_path / "best" / "README.md").read_text()
    assert "value: 0.9" in text and "value: 0.4" not in text
    assert "| **0.6667** | **2** | **-**         | **0.9** |" in text


def test_cached_mnrl_equals_uncached_in_chunks(tiny_dirs, tmp_path):
    """Gradient caching: a batch of 32 triplets (32 queries x 64 candidates = 2,048 pairs) trained in chunks of
    whole queries (mini_batch_size 4 pairs -> one query of 64 pairs a chunk) equals the one-pass loss and step
    to float32 round-off. Peak memory: benchmarks/cached_mnrl_memory.py."""
    rng = np.random.default_rng(5)
    data = {k: [_text(rng, int(rng.integers(2, 5))) for _ in range(32)] for k in ("q", "pos", "neg")}
    results = {}
    for name, make in (
        ("plain", lambda m: losses.MultipleNegativesRankingLoss(m, num_negatives=None)),
        ("cached", lambda m: losses.CachedMultipleNegativesRankingLoss(m, num_negatives=None, mini_batch_size=4)),
    ):
        model = CrossEncoder(str(tiny_dirs[1]))
        args = CrossEncoderTrainingArguments(
            str(tmp_path / name), per_device_train_batch_size=32, max_steps=1, save_strategy="no",
            learning_rate=LR, disable_tqdm=True,
        )  # fmt: skip
        output = CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=make(model)).train()
        results[name] = (output, model.training_history[0]["loss"], _params(model))
    (plain, plain_loss, plain_params), (cached, cached_loss, cached_params) = results["plain"], results["cached"]
    assert plain.metrics["loss_chunks"] == 1 and cached.metrics["loss_chunks"] == 32
    np.testing.assert_allclose(cached_loss, plain_loss, rtol=2e-6)
    for key, value in plain_params.items():
        tolerance = 6 * LR if key.endswith(KEY_BIAS) else 2e-6
        np.testing.assert_allclose(cached_params[key], value, rtol=1e-5, atol=tolerance, err_msg=key)


@pytest.mark.parametrize("case", ["bce", "listnet"])
def test_eval_loss_equals_sentence_transformers(case, tiny_dirs, tmp_path):
    """``evaluate()``'s ``eval_loss`` (dropout off, batches of 4 rows) equals sentence-transformers' trainer's."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder as STCrossEncoder
    from sentence_transformers.cross_encoder import CrossEncoderTrainer as STTrainer
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments as STArgs

    _, kind, num_labels, make_ours, make_theirs = next(c for c in _cases() if c[0] == case)
    directory, data = tiny_dirs[num_labels], _dataset(kind)
    st_model = STCrossEncoder(str(directory), device="cpu")
    st_args = STArgs(str(tmp_path / "st"), per_device_eval_batch_size=4, report_to="none", use_cpu=True)
    with torch.no_grad():
        expected = STTrainer(
            model=st_model, args=st_args, eval_dataset=Dataset.from_dict(data), loss=make_theirs(st_model)
        ).evaluate()["eval_loss"]
    model = CrossEncoder(str(directory))
    args = CrossEncoderTrainingArguments(str(tmp_path / "ours"), per_device_eval_batch_size=4)
    ours = CrossEncoderTrainer(model=model, args=args, eval_dataset=data, loss=make_ours(model)).evaluate()
    np.testing.assert_allclose(ours["eval_loss"], expected, rtol=1e-5)


def test_several_datasets_with_their_own_losses_equal_sentence_transformers(tiny_dirs, tmp_path):
    """A dict of datasets and a dict of losses, round-robin: each step is one full batch of one dataset, in
    dataset order, exactly as sentence-transformers' ROUND_ROBIN sampler; both runs end with equal parameters."""
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder as STCrossEncoder
    from sentence_transformers.cross_encoder import CrossEncoderTrainer as STTrainer
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments as STArgs
    from sentence_transformers.cross_encoder import losses as st

    directory = tiny_dirs[1]
    data = {"pairs": _dataset("pairs"), "lists": _dataset("lists")}
    common = dict(per_device_train_batch_size=ROWS, max_steps=4, learning_rate=LR, save_strategy="no", seed=0,
                  multi_dataset_batch_sampler="round_robin", disable_tqdm=True)  # fmt: skip
    st_model = STCrossEncoder(str(directory), device="cpu")
    STTrainer(
        model=st_model,
        args=STArgs(str(tmp_path / "st"), report_to="none", use_cpu=True, **common),
        train_dataset={name: Dataset.from_dict(d) for name, d in data.items()},
        loss={"pairs": st.BinaryCrossEntropyLoss(st_model), "lists": st.ListNetLoss(st_model)},
    ).train()
    model = CrossEncoder(str(directory))
    output = CrossEncoderTrainer(
        model=model,
        args=CrossEncoderTrainingArguments(str(tmp_path / "ours"), **common),
        train_dataset=data,
        loss={"pairs": losses.BinaryCrossEntropyLoss(model), "lists": losses.ListNetLoss(model)},
    ).train()
    assert output.global_step == 4 and output.metrics["steps_per_epoch"] == 2
    theirs = {k: v.numpy() for k, v in st_model.model.state_dict().items()}
    _compare(_params(model), theirs, rtol=1e-4, atol=5e-5, zero_grad=(KEY_BIAS,))
    with pytest.raises(ValueError, match=r"no entry for the train_dataset dataset\(s\) \['lists'\]"):
        CrossEncoderTrainer(model=model, train_dataset=data, loss={"pairs": losses.BinaryCrossEntropyLoss(model)})


def test_several_datasets_follow_data_seed_in_their_order_too(tiny_dirs, tmp_path):
    """Hugging Face's data_seed seeds the data sampling: with several datasets that includes which dataset each
    step draws from (proportional). It followed seed (a probe found it), so fixing data_seed did not fix the data.
    Dropout is off: seed changes nothing else, and the step losses show the data."""
    data = {"pairs": _dataset("pairs"), "triplets": _dataset("triplets"), "lists": _dataset("lists")}

    def step_losses(seed: int, data_seed: int | None) -> list[float]:
        model = CrossEncoder(str(tiny_dirs[1]))
        args = CrossEncoderTrainingArguments(
            str(tmp_path / f"run{seed}_{data_seed}"), per_device_train_batch_size=ROWS, num_train_epochs=2,
            learning_rate=LR, save_strategy="no", seed=seed, data_seed=data_seed, logging_steps=1,
            disable_tqdm=True, report_to=[],
        )  # fmt: skip
        loss = {
            "pairs": losses.BinaryCrossEntropyLoss(model),
            "triplets": losses.MultipleNegativesRankingLoss(model, num_negatives=1),
            "lists": losses.ListNetLoss(model),
        }
        trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=loss)
        trainer.train()
        return [round(h["loss"], 6) for h in trainer.state.log_history if "loss" in h]

    fixed = [step_losses(seed, 5) for seed in (0, 1, 2)]
    assert fixed[0] == fixed[1] == fixed[2] and len(fixed[0]) == 6
    assert len({tuple(step_losses(seed, None)) for seed in (0, 1, 2)}) > 1  # seed alone does move the data


def test_fit_with_a_token_budget_compiles_once_and_averages_each_steps_pairs(tiny_dirs):
    """fit(max_tokens_per_step=...): one packed shape for the whole run, each epoch's pairs once, and the
    first step's loss equals PyTorch's BCE over exactly that step's pairs (dropout off)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from crossjax import DataLoader, InputExample, data, packing

    rng = np.random.default_rng(11)
    examples = [
        InputExample(texts=[_text(rng, int(rng.integers(2, 12))), _text(rng, int(rng.integers(2, 12)))],
                     label=float(rng.uniform()))
        for _ in range(60)
    ]  # fmt: skip
    model = CrossEncoder(str(tiny_dirs[1]))
    summary = model.fit(
        DataLoader(examples, shuffle=True, batch_size=16, seed=3), epochs=2, warmup_steps=0, max_tokens_per_step=256,
        show_progress_bar=False,
        optimizer_params={"lr": LR}, logging_steps=1,
    )  # fmt: skip
    assert summary["compilations"] == 1 and len(summary["compiled_shapes"]) == 1
    steps = summary["global_step"]
    assert len(model.training_history) == steps and steps > 60 * 2 * 10 // 256  # more steps than whole batches
    # The first step's pairs, as the plan drew them, scored by PyTorch from the same initial weights.
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dirs[1]))
    tokenized = data.tokenize_pairs(tokenizer, [e.texts[0] for e in examples], [e.texts[1] for e in examples], 128)
    rows, row_length = packing.token_budget_shape(tokenized.lengths, 1, 256)
    order = np.random.default_rng((3, 0)).permutation(len(examples))
    first = np.concatenate(packing.token_budget_steps(order, tokenized.lengths, 1, rows, row_length)[0])
    torch_model = AutoModelForSequenceClassification.from_pretrained(str(tiny_dirs[1])).eval()
    batch = tokenizer([examples[i].texts[0] for i in first], [examples[i].texts[1] for i in first],
                      padding=True, truncation=True, max_length=128, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        logits = torch_model(**batch).logits[:, 0]
    labels = torch.tensor([examples[i].label for i in first], dtype=torch.float32)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).item()
    np.testing.assert_allclose(model.training_history[0]["loss"], expected, rtol=1e-5)


def test_trainer_writes_logs_and_the_card_names_its_loss_and_arguments(tiny_dirs, tmp_path):
    import json

    from huggingface_hub import ModelCard

    model = CrossEncoder(str(tiny_dirs[1]))
    args = CrossEncoderTrainingArguments(
        str(tmp_path / "run"), per_device_train_batch_size=3, max_steps=4, logging_steps=1, eval_strategy="steps",
        eval_steps=2, save_strategy="no", learning_rate=LR, disable_tqdm=True,
    )  # fmt: skip
    trainer = CrossEncoderTrainer(
        model=model, args=args, train_dataset=_dataset("lists"), eval_dataset=_dataset("lists"),
        loss=losses.ListNetLoss(model),
    )  # fmt: skip
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r and "eval_loss" not in r]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and [r["step"] for r in evals] == [2, 4]
    logged = {h["step"]: h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h}
    assert {r["step"]: r["eval_loss"] for r in evals} == pytest.approx(logged)
    model.save(str(tmp_path / "model"))
    card = ModelCard.load(tmp_path / "model" / "README.md")
    assert "loss:ListNetLoss" in card.data.tags
    assert "ListNetLoss" in card.text and "per_device_train_batch_size" in card.text
    # The loss's BibTeX entry after Sentence-BERT's, as sentence-transformers' card cites it (a probe found none)
    from sentence_transformers.cross_encoder.losses import ListNetLoss as STListNet

    citation = card.text.split("### BibTeX", 1)[1]
    assert citation.index("#### Sentence Transformers") < citation.index("#### ListNetLoss")
    assert f"#### ListNetLoss\n```bibtex\n{STListNet.citation.fget(None).strip()}\n```" in citation
    # A loss whose citation cannot be read trains, and its card leaves the entry out (sentence-transformers too)
    class Uncited(losses.BinaryCrossEntropyLoss):
        @property
        def citation(self) -> str:
            raise NotImplementedError

    pairs = _dataset("pairs")
    CrossEncoderTrainer(
        model=model, args=dataclasses.replace(args, max_steps=1, eval_strategy="no"), train_dataset=pairs,
        loss=Uncited(model),
    ).train()  # fmt: skip
    assert "#### Uncited" not in ModelCard.load(model.save(str(tmp_path / "uncited")) / "README.md").text
    # A dict of columns is described as a Dataset is: its columns and first rows (a probe found only its size)
    assert "* Columns: <code>q</code>, <code>docs</code> and <code>labels</code>" in card.text
    assert "* Samples:" in card.text and _dataset("lists")["q"][0] in card.text.split("* Samples:", 1)[1]
    # numpy columns read as a Dataset's rows: lists and numbers, not numpy's printed form
    columns = {"q": np.array(data_q := _dataset("pairs")["q"]), "d": _dataset("pairs")["d"]}
    columns["label"] = np.array(_dataset("pairs")["label"], dtype=np.float32)
    CrossEncoderTrainer(
        model=model, args=dataclasses.replace(args, max_steps=1, eval_strategy="no"), train_dataset=columns,
        loss=losses.BinaryCrossEntropyLoss(model),
    ).train()  # fmt: skip
    samples = model.model_card_data.training.datasets[0].samples
    assert samples[0]["q"] == data_q[0] and type(samples[0]["q"]) is str and type(samples[0]["label"]) is float
    # Let go, the model is freed: the process's cached train and eval-loss steps held it through the loss (a
    # probe: 91 MB of MiniLM arrays a model, up to 16 models); they keep a copy of the loss without its model
    import gc
    import weakref

    gone = weakref.ref(model)
    del model, trainer
    gc.collect()
    assert gone() is None


def test_loss_settings_that_could_not_train_as_asked_are_refused(tiny_ce, tiny_dirs):
    """A row-normalising activation over one logit a pair trains nothing (torch would normalise the whole
    batch's scores); an ignore_index beyond int32 could not travel with the labels."""
    import torch

    for activation in (torch.nn.functional.log_softmax, torch.nn.functional.softmin, "softmax"):
        with pytest.raises(ValueError, match="would normalise across the batch's documents"):
            losses.BinaryCrossEntropyLoss(tiny_ce, activation_fn=activation)
    with pytest.raises(ValueError, match="must fit in int32"):
        losses.CrossEntropyLoss(CrossEncoder(str(tiny_dirs[3])), ignore_index=2**40)


class _FixedScore:
    """An evaluator returning a plain number, as sentence-transformers' trainer takes any callable."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, model, output_path=None, epoch=-1, steps=-1) -> float:
        return self.value


def test_dataset_forms_evaluator_lists_and_epochs_as_sentence_transformers_reads_them(tiny_dirs, tmp_path):
    """Oracle: sentence-transformers 6.2's trainer on the same data and arguments."""
    import torch
    from datasets import Dataset, IterableDataset
    from sentence_transformers.cross_encoder import CrossEncoder as STCrossEncoder
    from sentence_transformers.cross_encoder import CrossEncoderTrainer as STTrainer
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments as STArgs

    from crossjax.model_card import training_log_table
    from crossjax.trainer import dataset_columns

    rng = np.random.default_rng(5)
    data = {"q": [_text(rng, 3) for _ in range(10)], "d": [_text(rng, 4) for _ in range(10)]}
    data["label"] = [float(x) for x in rng.uniform(0, 1, 10)]
    st_model = STCrossEncoder(str(tiny_dirs[1]), device="cpu")
    model = CrossEncoder(str(tiny_dirs[1]))
    common = dict(per_device_train_batch_size=3, gradient_accumulation_steps=3, num_train_epochs=2, logging_steps=1)
    common |= dict(per_device_eval_batch_size=4, save_strategy="no")
    st_args = STArgs(str(tmp_path / "st"), report_to="none", use_cpu=True, **common)
    args = CrossEncoderTrainingArguments(str(tmp_path / "ours"), disable_tqdm=True, **common)
    evaluators = [_FixedScore(0.25), _FixedScore(0.75)]
    evals = {"a": Dataset.from_dict(data), "b": Dataset.from_dict(data).select(range(6))}
    theirs = STTrainer(
        model=st_model, args=st_args, train_dataset=Dataset.from_dict(data), eval_dataset=evals, evaluator=evaluators
    )
    ours = CrossEncoderTrainer(model=model, args=args, train_dataset=data, eval_dataset=evals, evaluator=evaluators)

    def metric_keys(metrics: dict) -> list[str]:
        return sorted(k for k in metrics if not k.endswith(("_runtime", "_per_second", "_model_preparation_time")))

    with torch.no_grad():
        expected_b = theirs.evaluate(eval_dataset="b")
    got_b = ours.evaluate(eval_dataset="b")  # a name of the trainer's eval datasets, as Hugging Face takes it
    assert metric_keys(got_b) == metric_keys(expected_b)
    assert got_b["eval_sequential_score"] == expected_b["eval_sequential_score"] == 0.75  # a list: sequential
    assert got_b["eval_evaluator_0"] == 0.25
    np.testing.assert_allclose(got_b["eval_loss"], expected_b["eval_loss"], rtol=1e-5)

    # the logged epoch counts batches (4 an epoch, 3 a step): 0.75, 1.0, 1.75, 2.0
    theirs.train()
    ours.train()
    epochs = [[h["epoch"] for h in t.state.log_history if "loss" in h] for t in (theirs, ours)]
    assert epochs[1] == epochs[0] == [0.75, 1.0, 1.75, 2.0]
    table = training_log_table(model.model_card_data.training, {})
    assert [row.split("|")[1].strip() for row in table.splitlines()[2:]] == ["0.75", "1.0", "1.75", "2.0"]

    # a dataset formatted to some of its columns gives those; a stream is read once; reserved names are refused
    formatted = Dataset.from_dict({**data, "id": list(range(10))})
    formatted.set_format(type=None, columns=["q", "d", "label"])
    assert dataset_columns(formatted, "train_dataset")[0] == ["q", "d"]
    shuffled = formatted.shuffle(seed=0)  # datasets sorts a format's columns here: ['d', 'label', 'q']
    row_keys = [k for k in shuffled[0] if k != "label"]  # what sentence-transformers' collator reads
    assert dataset_columns(shuffled, "train_dataset")[0] == row_keys == ["q", "d"]
    reads = []

    def rows():
        reads.append(1)
        yield from ({"q": q, "d": d, "label": y} for q, d, y in zip(data["q"], data["d"], data["label"], strict=True))

    names, columns, labels = dataset_columns(IterableDataset.from_generator(rows), "train_dataset")
    assert (names, columns, labels, len(reads)) == (["q", "d"], [data["q"], data["d"]], data["label"], 1)
    reserved = Dataset.from_dict({**data, "dataset_name": ["x"] * 10})
    with pytest.raises(ValueError, match=r"\['dataset_name'\]"):
        STTrainer(model=st_model, args=st_args, train_dataset=reserved)
    with pytest.raises(ValueError, match=r"\['dataset_name'\]"):
        CrossEncoderTrainer(model=model, args=args, train_dataset=reserved).train()

    # columns as numpy arrays and pandas Series; a torch-formatted dataset's 0-d tensors as labels (both
    # sentence-transformers' collator reads); a stream with known columns but no rows is named empty
    import pandas as pd

    from crossjax.losses.base import label_rows

    arrays = {"q": np.array(data["q"]), "d": pd.Series(data["d"]), "label": np.array(data["label"])}
    assert dataset_columns(arrays, "train_dataset") == (["q", "d"], [data["q"], data["d"]], data["label"])
    _, columns, labels = dataset_columns(Dataset.from_dict(data).with_format("torch"), "train_dataset")
    assert label_rows(labels, 10, "loss") == pytest.approx(data["label"], abs=1e-7)
    losses.BinaryCrossEntropyLoss(model).validate(columns, labels)
    empty = Dataset.from_dict(data).to_iterable_dataset().filter(lambda row: False)
    with pytest.raises(ValueError, match="train_dataset is empty"):
        CrossEncoderTrainer(model=model, args=args, train_dataset=empty).train()
    # a bad eval row stops the run before its first step (sentence-transformers: at the first evaluation)
    bad_eval = {**data, "label": ["x"] * 10}
    evaluating = dataclasses.replace(args, eval_strategy="steps", eval_steps=1)
    steps = []

    class Steps:
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    with pytest.raises(ValueError, match=r"eval_dataset: BinaryCrossEntropyLoss: row 0: label 'x'"):
        CrossEncoderTrainer(
            model=model, args=evaluating, train_dataset=data, eval_dataset=bad_eval, callbacks=[Steps()]
        ).train()
    assert steps == []
    by_name = CrossEncoderTrainer(
        model=model, args=args, train_dataset={"a": data}, loss={"a": losses.BinaryCrossEntropyLoss(model)}
    )
    with pytest.raises(ValueError, match=r"evaluate\(\)'s eval_dataset must be a dict of datasets"):
        by_name.evaluate(eval_dataset=Dataset.from_dict(data))


def test_cross_entropy_takes_class_probabilities_as_torch_does(tiny_dirs, tmp_path):
    """Soft targets (a teacher's class probabilities): the first step's loss is torch's cross-entropy of the
    model's logits (sentence-transformers' own model, identity activation) against them, weighted and smoothed."""
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder as STCrossEncoder

    rng = np.random.default_rng(11)
    data = {"q": [_text(rng, 3) for _ in range(8)], "d": [_text(rng, 5) for _ in range(8)]}
    data["label"] = rng.dirichlet(np.ones(3), 8).tolist()
    model = CrossEncoder(str(tiny_dirs[3]))
    args = CrossEncoderTrainingArguments(
        str(tmp_path), max_steps=1, per_device_train_batch_size=8, logging_steps=1, save_strategy="no",
        disable_tqdm=True,
    )  # fmt: skip
    weight, smoothing = [1.0, 2.0, 0.5], 0.1
    loss = losses.CrossEntropyLoss(model, weight=np.array(weight), label_smoothing=smoothing)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=loss)
    trainer.train()
    logits = STCrossEncoder(str(tiny_dirs[3]), device="cpu").predict(
        list(zip(data["q"], data["d"], strict=True)), activation_fn=torch.nn.Identity(), convert_to_tensor=True
    )
    expected = torch.nn.CrossEntropyLoss(weight=torch.tensor(weight), label_smoothing=smoothing)(
        logits.float(), torch.tensor(data["label"], dtype=torch.float32)
    )
    first = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    np.testing.assert_allclose(first, float(expected), rtol=1e-4)
    with pytest.raises(ValueError, match="row 1: label .* is not a list of 3 class probabilities"):
        loss.validate([data["q"][:2], data["d"][:2]], [data["label"][0], [0.5, 0.5]])
    from crossjax.list_batches import group_by_label_batches

    with pytest.raises(ValueError, match="GROUP_BY_LABEL groups rows by one label each; row 0"):
        group_by_label_batches(data["label"], 4, rng, False)
    # of several datasets, the one without labels is named (a probe found the message named none)
    triplets = {"q": data["q"], "pos": data["d"], "neg": list(reversed(data["d"]))}
    args = dataclasses.replace(args, batch_sampler="group_by_label", per_device_train_batch_size=4)
    one = CrossEncoder(str(tiny_dirs[1]))
    loss = {"scored": losses.BinaryCrossEntropyLoss(one), "triplets": losses.MultipleNegativesRankingLoss(one)}
    scored = {**data, "label": [float(i % 2) for i in range(8)]}
    with pytest.raises(ValueError, match=r"needs a label column .*; train_dataset\['triplets'\] has none"):
        CrossEncoderTrainer(
            model=one, args=args, train_dataset={"scored": scored, "triplets": triplets}, loss=loss
        ).train()

