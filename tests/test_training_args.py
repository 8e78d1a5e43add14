"""``CrossEncoderTrainingArguments`` used the ways Hugging Face and sentence-transformers scripts use training
arguments, against sentence-transformers 6.2's ``CrossEncoderTrainingArguments`` (a transformers 5
``TrainingArguments``) as the oracle: ``HfArgumentParser``, ``dataclasses.replace``, JSON dumps, the ``set_*``
helpers and the process facts callbacks read."""

from __future__ import annotations

import dataclasses
import json

import pytest

from crossjax import CrossEncoderTrainingArguments as Ours

transformers = pytest.importorskip("transformers")
st_cross_encoder = pytest.importorskip("sentence_transformers.cross_encoder")
Theirs = st_cross_encoder.CrossEncoderTrainingArguments

COMMAND_LINE = [
    "--output_dir", "runs/x", "--learning_rate", "1e-5", "--bf16", "--eval_strategy", "steps", "--report_to", "none",
    "--run_name", "nightly", "--lr_scheduler_type", "cosine", "--lr_scheduler_kwargs", '{"num_cycles": 2}',
    "--per_device_train_batch_size", "32", "--warmup_steps", "0.1", "--batch_sampler", "no_duplicates",
    "--save_total_limit", "2", "--logging_steps", "50", "--seed", "7", "--dataloader_num_workers", "4",
]  # fmt: skip
COMPARED = [
    "output_dir", "learning_rate", "bf16", "eval_strategy", "eval_steps", "report_to", "run_name", "lr_scheduler_type",
    "lr_scheduler_kwargs", "per_device_train_batch_size", "warmup_steps", "batch_sampler", "save_total_limit",
    "logging_steps", "seed", "dataloader_num_workers", "do_eval", "prediction_loss_only", "optim",
]  # fmt: skip


def _value(args, name):
    value = getattr(args, name)
    return getattr(value, "value", value)  # enums (Hugging Face's IntervalStrategy ...) by their value


@dataclasses.dataclass
class ScriptArguments:
    model_name: str = "cross-encoder/ms-marco-MiniLM-L6-v2"
    max_length: int = 128


def test_hf_argument_parser_reads_a_command_line_as_sentence_transformers_does(tmp_path):
    parsed = {}
    for cls in (Ours, Theirs):
        # Hugging Face refuses bf16 on a CPU without --use_cpu: a CPU script's command line has it, for both
        script, args = transformers.HfArgumentParser((ScriptArguments, cls)).parse_args_into_dataclasses(
            COMMAND_LINE + ["--max_length", "256", "--use_cpu"]
        )
        assert script.max_length == 256
        parsed[cls] = args
    for name in COMPARED:
        assert _value(parsed[Ours], name) == _value(parsed[Theirs], name), name
    assert parsed[Ours].use_cpu is parsed[Theirs].use_cpu is True
    # the same settings from a JSON file and a dict
    settings = {"output_dir": "runs/y", "num_train_epochs": 2, "eval_strategy": "epoch", "fp16": False}
    (tmp_path / "args.json").write_text(json.dumps(settings))
    (from_file,) = transformers.HfArgumentParser(Ours).parse_json_file(str(tmp_path / "args.json"))
    (from_dict,) = transformers.HfArgumentParser(Ours).parse_dict(settings)
    assert from_file == from_dict and from_dict.num_train_epochs == 2 and from_dict.do_eval is True


def test_copies_and_dumps_keep_every_argument():
    args = Ours("out", learning_rate=3e-5, run_name="r", report_to="none", dataloader_num_workers=2)
    changed = dataclasses.replace(args, learning_rate=1e-5)
    assert changed.run_name == "r" and changed.learning_rate == 1e-5 and changed.dataloader_num_workers == 2
    assert Ours(**dataclasses.asdict(args)) == args
    assert Ours(**{**json.loads(args.to_json_string()), "hub_token": None}) == args  # the dump hides the token
    # sentence-transformers' own dump loads (its default accelerator_config included), and dumps the same keys
    theirs = Theirs("out", report_to="none")
    ours = Ours(**json.loads(theirs.to_json_string()))
    assert set(theirs.to_dict()) <= set(ours.to_dict())
    assert {k: ours.to_dict()[k] for k in COMPARED} == {k: theirs.to_dict()[k] for k in COMPARED}


def test_tokens_are_hidden_as_hugging_face_hides_them():
    for cls in (Ours, Theirs):
        args = cls("out", hub_token="hf_secret", report_to="none")
        assert args.to_dict()["hub_token"] == "<HUB_TOKEN>"
        assert "hf_secret" not in args.to_json_string() and "hf_secret" not in str(args.to_sanitized_dict())
        assert args.hub_token == "hf_secret"


@pytest.mark.parametrize(
    "method,kwargs",
    [
        ("set_training", {"learning_rate": 1e-4, "batch_size": 16, "weight_decay": 0.01, "num_epochs": 2, "seed": 3}),
        ("set_evaluate", {"strategy": "steps", "steps": 100, "batch_size": 32}),
        ("set_testing", {"batch_size": 64}),
        ("set_save", {"strategy": "epoch", "total_limit": 3}),
        ("set_logging", {"strategy": "steps", "steps": 25, "first_step": True, "level": "info"}),
        ("set_push_to_hub", {"model_id": "me/model", "private_repo": True, "token": "hf_x"}),
        ("set_optimizer", {"name": "adamw_torch", "learning_rate": 2e-5, "beta1": 0.8, "epsilon": 1e-6}),
        ("set_lr_scheduler", {"name": "cosine", "num_epochs": 5, "warmup_steps": 0.05}),
        ("set_dataloader", {"train_batch_size": 4, "eval_batch_size": 12, "drop_last": True, "sampler_seed": 9}),
    ],
)
def test_set_helpers_set_what_hugging_face_s_do(method, kwargs):
    ours, theirs = Ours("out", report_to="none"), Theirs("out", report_to="none")
    assert getattr(ours, method)(**kwargs) is ours
    getattr(theirs, method)(**kwargs)
    mine, expected = ours.to_dict(), theirs.to_dict()
    differing = {k: (mine[k], expected[k]) for k in expected if k in mine and mine[k] != expected[k]}
    differing.pop("accelerator_config", None)  # Hugging Face's is an accelerate object's dict, crossjax's None
    differing.pop("disable_tqdm", None)  # Hugging Face's follows the log level
    # Hugging Face's setters store some values raw, which its own __post_init__ reads as crossjax's:
    # report_to "none" is [], eval_delay None is 0; sentence-transformers forces prediction_loss_only to True
    # at construction, which set_evaluate/set_testing turn off in its arguments (its evaluators ignore it).
    for name, raw, read in (("report_to", "none", []), ("eval_delay", None, 0), ("prediction_loss_only", False, True)):
        if differing.get(name) == (read, raw):
            differing.pop(name)
    assert differing == {}, differing


def test_set_helpers_check_what_they_set():
    args = Ours("out")
    with pytest.raises(ValueError, match="optim"):
        args.set_optimizer(name="adamw_bnb_8bit")
    assert args.optim == "adamw_torch_fused"  # unchanged by the refused call


def test_process_facts_equal_hugging_face_s_in_one_cpu_process():
    ours, theirs = Ours("out", per_device_train_batch_size=4, report_to="none"), Theirs(
        "out", per_device_train_batch_size=4, report_to="none", use_cpu=True
    )
    for name in ("train_batch_size", "eval_batch_size", "world_size", "process_index", "local_process_index",
                 "should_log", "should_save", "n_gpu", "ddp_timeout_delta"):  # fmt: skip
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.parallel_mode.value == theirs.parallel_mode.value
    assert ours.get_process_log_level() == theirs.get_process_log_level()
    with ours.main_process_first(desc="tokenize"):
        pass


def test_numbers_given_as_strings_are_read_or_named():
    """PyYAML reads ``1e-5`` as a string: it is read as the number (sentence-transformers keeps the string and
    fails in the first comparison); a string that is no number names its argument."""
    args = Ours("out", learning_rate="1e-5", num_train_epochs="2", max_steps="-1", bf16="true")
    assert (args.learning_rate, args.num_train_epochs, args.max_steps, args.bf16) == (1e-5, 2.0, -1, True)
    with pytest.raises(ValueError, match="learning_rate"):
        Ours("out", learning_rate="fast")


def test_schedule_set_before_its_options_as_hugging_face_scripts_do(minilm_dir, tmp_path):
    """``set_lr_scheduler`` has no options parameter: Hugging Face's scripts assign ``lr_scheduler_kwargs`` after
    it. A schedule still missing a required option is named when training starts, before any data is read."""
    from crossjax import CrossEncoder, CrossEncoderTrainer

    args = Ours(str(tmp_path)).set_lr_scheduler(name="cosine_with_min_lr")
    with pytest.raises(ValueError, match="min_lr"):
        CrossEncoderTrainer(model=CrossEncoder(minilm_dir), args=args, train_dataset=object()).train()
    args.lr_scheduler_kwargs = {"min_lr": 1e-6}
    assert args.scheduler_kwargs == {"min_lr": 1e-6}


def test_reading_the_process_index_joins_an_asked_multi_process_run_first(monkeypatch):
    """Scripts read ``get_process_log_level()`` / ``should_log`` right after parsing their arguments, before the
    model's mesh would join a ``CROSSJAX_DISTRIBUTED=1`` run: reading them joins it first (JAX refuses to join
    once its backends have started)."""
    import jax

    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(k))
    monkeypatch.delenv("CROSSJAX_DISTRIBUTED", raising=False)
    args = Ours("out")
    assert args.should_log and calls == []
    monkeypatch.setenv("CROSSJAX_DISTRIBUTED", "1")
    assert args.device is not None and len(calls) == 1  # Hugging Face's scripts log args.device first
    assert args.get_process_log_level() == 30 and len(calls) == 2


def test_save_strategy_best_is_taken_with_what_it_needs(tmp_path):
    """``save_strategy="best"`` as Hugging Face takes it (its parser too); without ``metric_for_best_model``
    Hugging Face's Trainer refuses it, and crossjax's arguments already do; with no evaluation it could never
    save, which crossjax refuses too (Hugging Face runs and never saves)."""
    from transformers import HfArgumentParser

    line = ["--output_dir", str(tmp_path), "--save_strategy", "best", "--eval_strategy", "steps"]
    line += ["--metric_for_best_model", "score"]
    ours, theirs = (HfArgumentParser(cls).parse_args_into_dataclasses(line)[0] for cls in (Ours, Theirs))
    assert ours.save_strategy == _value(theirs, "save_strategy") == "best"
    assert ours.greater_is_better is theirs.greater_is_better is True
    with pytest.raises(ValueError, match="metric_for_best_model"):
        Ours(str(tmp_path), save_strategy="best", eval_strategy="steps")
    with pytest.raises(ValueError, match="eval_strategy"):
        Ours(str(tmp_path), save_strategy="best", metric_for_best_model="score")
    with pytest.raises(ValueError, match=r"save_strategy must be one of \('no', 'steps', 'epoch', 'best'\)"):
        Ours(str(tmp_path), save_strategy="always")


def test_dict_options_read_numbers_and_leave_other_strings():
    """A JSON dict option's number and boolean strings are read as such (transformers' ``_convert_str_dict``
    reads "3" and "0.5" but leaves "1e-6" and "-2", which its schedules then fail on); any other string stays
    (``--5``; ``\u00b2``, which ``str.isdigit`` calls a digit and transformers fails to read)."""
    from crossjax.training_args import _typed_values

    options = {"a": "1e-6", "b": "3", "c": "true", "d": "--5", "e": "\u00b2", "f": "-2", "g": "x", "h": 4, "i": "0.5"}
    assert _typed_values(options) == {
        "a": 1e-6, "b": 3, "c": True, "d": "--5", "e": "\u00b2", "f": -2, "g": "x", "h": 4, "i": 0.5
    }  # fmt: skip


def test_a_save_total_limit_of_zero_or_less_keeps_every_checkpoint_as_there():
    """Hugging Face's rotation deletes nothing for a limit <= 0 (sentence-transformers 6.2 accepts 0); the
    checkpointer keeps every step then (tests/test_fit_inputs.py)."""
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments as STArgs

    for limit in (0, -1):
        assert STArgs("out", save_total_limit=limit).save_total_limit == limit
        assert Ours("out", save_total_limit=limit).save_total_limit == limit


@pytest.mark.parametrize(
    "settings",
    [
        dict(eval_strategy="steps", eval_steps=2, save_steps=4),
        dict(eval_strategy="steps", eval_steps=3, save_steps=4),
        dict(eval_strategy="steps", eval_steps=0.1, save_steps=0.2),
        dict(eval_strategy="steps", eval_steps=0.1, save_steps=0.25),
        dict(eval_strategy="steps", eval_steps=0.1, save_steps=4),
        dict(eval_strategy="steps", save_strategy="epoch"),
        dict(eval_strategy="epoch", save_strategy="epoch"),
        dict(eval_strategy="steps", logging_steps=5, save_steps=10),
        dict(eval_strategy="steps", eval_steps=3, save_strategy="best", metric_for_best_model="loss"),
    ],
    ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()),
)
def test_load_best_model_at_end_needs_what_hugging_face_needs(settings, tmp_path):
    """Every evaluation on a save, or the best model is no checkpoint: the model loaded at the end was one
    state.best_model_checkpoint does not hold. Oracle: transformers' own TrainingArguments accepts or refuses.
    (crossjax's one extension: save_strategy="no" keeps the best model in memory, where Hugging Face refuses.)"""
    from transformers import TrainingArguments

    try:
        TrainingArguments(str(tmp_path), load_best_model_at_end=True, **settings)
        refused = None
    except ValueError as e:
        refused = str(e)
    if refused is None:
        Ours(str(tmp_path), load_best_model_at_end=True, **settings)
    else:
        with pytest.raises(ValueError, match="load_best_model_at_end requires"):
            Ours(str(tmp_path), load_best_model_at_end=True, **settings)


def test_load_best_model_at_end_without_checkpoints_keeps_the_best_in_memory(tmp_path):
    args = Ours(str(tmp_path), load_best_model_at_end=True, eval_strategy="steps", eval_steps=3, save_strategy="no")
    assert args.load_best_model_at_end and args.metric_for_best_model == "loss"


@pytest.mark.parametrize("warmup", [0, 0.1, 0.5, 0.999, 1, 1.0, 1.5, 7.9, 40])
def test_warmup_steps_become_the_step_counts_hugging_face_s_become(warmup, caplog):
    """A count, a fraction of the run below 1, and a fractional count above 1 that transformers truncates
    (crossjax says so in a warning)."""
    ours = Ours("out", warmup_steps=warmup, report_to="none")
    theirs = Theirs("out", warmup_steps=warmup, report_to="none", use_cpu=True)
    for total in (1, 37, 1000):
        assert ours.get_warmup_steps(total) == theirs.get_warmup_steps(total), total
    assert ("read as" in caplog.text) == (warmup > 1 and warmup != int(warmup))


def test_positional_arguments_mean_what_they_mean_there():
    """Hugging Face's leading fields keep their positions (a script's ``Args("out", 32)`` is a batch size of 32,
    not 32 epochs); past them, where Hugging Face's next field is one crossjax only reads, a positional argument
    is a TypeError rather than another setting."""
    import inspect

    values = ["out", 32, 2.0, 7, 3e-5, "cosine", {"num_cycles": 2}, 0.1, "sgd", "momentum=0.9", 0.01, 0.8,
              0.98, 1e-6]  # fmt: skip
    ours, theirs = Ours(*values, report_to="none"), Theirs(*values, report_to="none", use_cpu=True)
    names = list(inspect.signature(Theirs).parameters)[: len(values)]
    for name in names:
        assert _value(ours, name) == _value(theirs, name), name
    with pytest.raises(TypeError):
        Ours(*values, None)


@pytest.mark.parametrize("value", [True, False, "all", "non_padding", "no"])
def test_include_num_input_tokens_seen_reads_as_hugging_face_s(value):
    ours = Ours("out", include_num_input_tokens_seen=value, report_to="none")
    theirs = Theirs("out", include_num_input_tokens_seen=value, report_to="none", use_cpu=True)
    assert ours.include_num_input_tokens_seen == theirs.include_num_input_tokens_seen
