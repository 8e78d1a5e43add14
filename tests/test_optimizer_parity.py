"""AdamW as sentence-transformers builds it, checked against PyTorch and sentence-transformers (the oracles).

1. The weight-decay mask equals sentence-transformers' rule (no decay where the Hugging Face name contains
   "bias", "LayerNorm.bias" or "LayerNorm.weight") applied to ``named_parameters()`` of the PyTorch model.
2. A few steps with a large weight decay and non-default betas end with the same parameters as
   sentence-transformers' ``CrossEncoder.old_fit`` (torch.optim.AdamW), for MiniLM and a tiny RoBERTa.
3. ``optimizer_class`` / ``optimizer_params`` that crossjax cannot honour are refused before compiling.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import optax
import pytest
import torch
from conftest import read_stsb
from flax import nnx
from test_models_parity import FAMILIES
from transformers import AutoModelForSequenceClassification

from crossjax import CrossEncoder, DataLoader, InputExample, training
from crossjax.models import FlaxAutoModelForSequenceClassification
from crossjax.models.params import hf_slots_of

# sentence-transformers' CrossEncoder.old_fit, verbatim: the names of the parameters it does not decay.
ST_NO_DECAY = ["bias", "LayerNorm.bias", "LayerNorm.weight"]
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0}


def st_rule(name: str) -> bool:
    """True where sentence-transformers' old_fit puts the parameter in the weight-decay group."""
    return not any(nd in name for nd in ST_NO_DECAY)


def mask_by_hf_name(model, mask) -> dict[str, bool]:
    """The mask per Hugging Face tensor name (a stacked, scanned-layers leaf covers one name per layer)."""
    table = model.param_table(model.config)
    shapes = {".".join(map(str, p)): v[...].shape for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    out = {}
    for path, leaf in nnx.to_flat_state(mask):
        dotted = ".".join(map(str, path))
        slots = hf_slots_of(table, dotted, shapes[dotted][0] if shapes[dotted] else 0)
        assert slots, f"no Hugging Face name for {dotted}"
        (value,) = jax.tree.leaves(leaf)  # a Python bool, inside the nnx.Param wrapper
        out.update({name: bool(value) for name, _, _ in slots})
    return out


# ------------------------------------------------------------------------------ 1. the decay mask
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_decay_mask_equals_sentence_transformers_rule_on_pytorch_names(family, tmp_path):
    torch.manual_seed(0)
    pt = AutoModelForSequenceClassification.from_config(FAMILIES[family](3))
    pt.save_pretrained(tmp_path)
    model = FlaxAutoModelForSequenceClassification.from_pretrained(tmp_path)
    mask = training.decay_mask(model, nnx.state(model, nnx.Param))
    ours = mask_by_hf_name(model, mask)
    expected = {name: st_rule(name) for name, _ in pt.named_parameters()}
    assert set(ours) == set(expected)
    wrong = sorted(name for name in expected if ours[name] != expected[name])
    assert not wrong, f"decay mask differs from sentence-transformers' rule on {wrong}"
    # Both groups are non-empty, so the comparison means something.
    assert any(expected.values()) and not all(expected.values())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_trainer_decay_mask_equals_hugging_face_trainer_on_pytorch_names(family, tmp_path):
    """CrossEncoderTrainer's rule is Hugging Face Trainer's (sentence-transformers' trainers use it): no norm
    decays, DistilBERT's and ModernBERT's ``*_norm`` included, where the legacy fit's rule decays them."""
    from transformers import Trainer

    torch.manual_seed(0)
    pt = AutoModelForSequenceClassification.from_config(FAMILIES[family](3))
    pt.save_pretrained(tmp_path)
    model = FlaxAutoModelForSequenceClassification.from_pretrained(tmp_path)
    ours = mask_by_hf_name(model, training.decay_mask(model, nnx.state(model, nnx.Param), "trainer"))
    decayed = set(Trainer.get_decay_parameter_names(None, pt))  # its self is unused
    expected = {name: name in decayed for name, _ in pt.named_parameters()}
    assert ours == expected, sorted(name for name in expected if ours.get(name) != expected[name])
    assert any(expected.values()) and not all(expected.values())


def test_decay_mask_on_minilm_spares_every_layernorm(minilm_dir):
    model = FlaxAutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=1)
    ours = mask_by_hf_name(model, training.decay_mask(model, nnx.state(model, nnx.Param)))
    norms = [name for name in ours if "LayerNorm" in name]
    assert len(norms) == 2 * (1 + 2 * model.config.num_hidden_layers)
    assert not any(ours[name] for name in norms)
    assert ours == {name: st_rule(name) for name in ours}


def test_parameter_without_hf_name_is_an_error(tmp_path):
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(FAMILIES["bert"](1)).save_pretrained(tmp_path)
    model = FlaxAutoModelForSequenceClassification.from_pretrained(tmp_path)
    table = [r for r in model.param_table(model.config) if not r.ours.endswith("ffn_norm.scale")]
    model.param_table = lambda config: table
    with pytest.raises(RuntimeError, match=r"encoder\.layers\.ffn_norm\.scale"):
        training.decay_mask(model, nnx.state(model, nnx.Param))


# ------------------------------------------------------------------- 2. parity with old_fit, wd = 1.0
SETTINGS = dict(
    epochs=1,
    scheduler="WarmupLinear",
    warmup_steps=2,
    optimizer_params={"lr": 2e-4, "betas": (0.8, 0.99)},
    weight_decay=1.0,
    max_grad_norm=1.0,
    show_progress_bar=False,
)


def _tiny_roberta(directory: Path, minilm_dir: Path) -> Path:
    from transformers import AutoTokenizer, RobertaConfig

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)  # BERT WordPiece: pad 0, two token types
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=130,  # positions start at pad_token_id + 1: max_length 128 needs 130
        type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,
        num_labels=1,
    )
    AutoModelForSequenceClassification.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module", params=["minilm", "roberta"])
def wd_runs(request, minilm_dir, tmp_path_factory):
    from sentence_transformers import CrossEncoder as TorchCrossEncoder
    from sentence_transformers import InputExample as TorchInputExample

    source = minilm_dir
    if request.param == "roberta":
        source = _tiny_roberta(tmp_path_factory.mktemp("roberta"), minilm_dir)
    start = tmp_path_factory.mktemp(f"start-{request.param}")
    # Same initial weights on both sides: crossjax initialises the head and exports the whole model.
    CrossEncoder(source, num_labels=1, seed=3, max_length=128).save(start)

    rows = read_stsb("train", limit=32)  # batch 8: 4 steps
    ours = CrossEncoder(start, config_kwargs=NO_DROPOUT)
    examples = [InputExample(texts=[a, b], label=s / 5.0) for a, b, s in rows]
    ours.fit(DataLoader(examples, batch_size=8, shuffle=False), **SETTINGS)

    torch.manual_seed(0)
    theirs = TorchCrossEncoder(str(start), device="cpu", config_kwargs=NO_DROPOUT)
    torch_examples = [TorchInputExample(texts=[a, b], label=s / 5.0) for a, b, s in rows]
    loader = torch.utils.data.DataLoader(torch_examples, batch_size=8, shuffle=False)
    theirs.old_fit(loader, **SETTINGS)
    initial = AutoModelForSequenceClassification.from_pretrained(start).state_dict()
    return request.param, ours, theirs, initial


def test_weight_decay_and_betas_match_old_fit_parameter_by_parameter(wd_runs):
    name, ours, theirs, initial = wd_runs
    mine = ours.model.hf_state_dict()
    reference = {k: v.detach().numpy() for k, v in theirs.model.state_dict().items()}
    reference = {k: v for k, v in reference.items() if not k.endswith(("position_ids", "token_type_ids"))}
    assert set(mine) == set(reference)
    diffs = {k: float(np.max(np.abs(mine[k] - reference[k]))) for k in reference}
    worst = max(diffs, key=diffs.get)
    print(f"{name}: max |ours - sentence-transformers| = {diffs[worst]:.3e} ({worst})")
    assert diffs[worst] <= 1e-4, f"{name}: {worst} differs by {diffs[worst]:.3e}"
    # Attention key biases have an exactly-zero true gradient (softmax ignores a per-query constant), and
    # Adam turns the float32 round-off in it (different in torch and XLA) into steps up to lr-sized; every
    # other parameter agrees much more closely (measured: <= 2.4e-6 for MiniLM, 1.2e-7 for the RoBERTa).
    rest = {k: v for k, v in diffs.items() if not k.endswith("attention.self.key.bias")}
    assert max(rest.values()) <= 1e-5, max(rest, key=rest.get)
    # The run really moved the LayerNorm weights (decay would pull them by ~lr * wd * steps), so the
    # comparison would catch decaying them.
    moved = max(float(np.max(np.abs(mine[k] - initial[k].numpy()))) for k in mine if "LayerNorm.weight" in k)
    assert moved > 1e-4


# ------------------------------------------------------------ the optax chain against torch.optim.AdamW
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adamw", "amsgrad"])
def test_optimizer_matches_torch_adamw_step_by_step(amsgrad):
    """make_optimizer (betas, eps, decoupled decay on masked leaves, amsgrad) against torch.optim.AdamW with
    sentence-transformers' two parameter groups, on gradients whose scale changes (so amsgrad's max matters)."""
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    shapes = {"w": (5, 3), "b": (3,), "scale": (4,)}
    decay = {"w": True, "b": False, "scale": False}
    init = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    lr, wd, betas, eps = 1e-2, 0.3, (0.8, 0.95), 1e-6
    tx = training.make_optimizer(lambda step: lr, wd, decay, None, eps, adam_betas=betas, amsgrad=amsgrad)
    params = {k: jnp.asarray(v) for k, v in init.items()}
    state = tx.init(params)
    torch_params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
    groups = [
        {"params": [p for k, p in torch_params.items() if decay[k]], "weight_decay": wd},
        {"params": [p for k, p in torch_params.items() if not decay[k]], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, amsgrad=amsgrad)
    for step in range(8):
        grads = {k: (rng.normal(size=s) * (10.0 if step == 1 else 0.1)).astype(np.float32) for k, s in shapes.items()}
        updates, state = tx.update({k: jnp.asarray(g) for k, g in grads.items()}, state, params)
        params = optax.apply_updates(params, updates)
        for k, p in torch_params.items():
            p.grad = torch.tensor(grads[k])
        opt.step()
        for k in shapes:
            np.testing.assert_allclose(np.asarray(params[k]), torch_params[k].detach().numpy(), rtol=0, atol=2e-6)


# -------------------------------------------------------------------- 3. arguments, before compiling
@pytest.fixture(scope="module")
def tiny_ce(minilm_dir, tmp_path_factory) -> CrossEncoder:
    return CrossEncoder(_tiny_roberta(tmp_path_factory.mktemp("tiny-args"), minilm_dir))




class AdamW8bit(torch.optim.AdamW):  # named like AdamW, but another algorithm
    pass


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"optimizer_class": torch.optim.Adam}, "optimizer_class"),
        ({"optimizer_class": AdamW8bit}, "AdamW8bit"),
        ({"optimizer_class": torch.optim.SGD, "optimizer_params": {"lr": 0.1, "nesterov": True}}, "Nesterov"),
        ({"optimizer_class": torch.optim.RMSprop, "optimizer_params": {"lr": 0.1, "betas": (0.9, 0.9)}}, "betas"),
        ({"optimizer_params": {"lr": 1e-3, "momentum": 0.9}}, "momentum"),
        ({"optimizer_params": {"lr": 1e-3, "maximize": True}}, "maximize"),
        ({"optimizer_params": {"lr": 1e-3, "betas": (0.9, 1.0)}}, "betas"),
        ({"optimizer_params": {"lr": 1e-3, "betas": (-0.1, 0.999)}}, "betas"),
        ({"optimizer_params": {"lr": 1e-3, "betas": 0.9}}, "betas"),
        ({"optimizer_params": {"lr": 1e-3, "eps": -1.0}}, "eps"),
        ({"optimizer_params": {"lr": 1e-3, "amsgrad": "yes"}}, "amsgrad"),
        ({"optimizer_params": {"lr": 1e-3, "weight_decay": -1.0}}, "weight_decay"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_unsupported_optimizer_arguments_rejected_before_compilation(kwargs, message, tiny_ce, spies):
    examples = [InputExample(texts=["a b", "c"], label=1.0)] * 4
    with pytest.raises(ValueError, match=message):
        tiny_ce.fit(DataLoader(examples, batch_size=4), show_progress_bar=False, **kwargs)
    assert spies == []
    assert tiny_ce.compilations["train"] == 0


def test_accepted_optimizer_arguments():
    """What fit accepts, and what it means, stated as torch.optim.AdamW's own parameters."""
    from crossjax.fit_loop import adamw_settings

    settings = adamw_settings(
        torch.optim.AdamW,
        {
            **{"lr": 3e-5, "betas": (0.85, 0.995), "eps": 1e-7, "amsgrad": True, "weight_decay": 0.5},
            **{"foreach": False, "fused": None, "capturable": False, "differentiable": False, "maximize": False},
        },
    )
    assert settings == {"learning_rate": 3e-5, "adam_betas": (0.85, 0.995), "adam_eps": 1e-7, "amsgrad": True}
    # torch.optim.AdamW's defaults where a key is missing, as torch applies them.
    default = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]).defaults
    assert adamw_settings(None, {}) == {
        "learning_rate": default["lr"],
        "adam_betas": default["betas"],
        "adam_eps": default["eps"],
        "amsgrad": default["amsgrad"],
    }


@pytest.mark.parametrize(
    "optimizer_class,optimizer_params",
    [
        ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.1}),
        ("Adafactor", {"lr": 1e-3, "relative_step": False, "scale_parameter": False, "clip_threshold": 0.8}),
    ],
)
def test_fit_with_other_torch_optimizers_equals_old_fit(optimizer_class, optimizer_params, minilm_dir, tmp_path):
    """``fit(optimizer_class=torch.optim.SGD / transformers' Adafactor, optimizer_params=...)`` trains as
    sentence-transformers' ``old_fit`` with the same class: parameter by parameter after 4 steps."""
    from sentence_transformers import CrossEncoder as TorchCrossEncoder
    from sentence_transformers import InputExample as TorchInputExample
    from transformers.optimization import Adafactor

    torch_class = Adafactor if optimizer_class == "Adafactor" else getattr(torch.optim, optimizer_class)
    start = tmp_path / "start"
    CrossEncoder(_tiny_roberta(tmp_path / "roberta", minilm_dir), num_labels=1, seed=3).save(start)
    settings = {**SETTINGS, "optimizer_class": torch_class, "optimizer_params": optimizer_params, "weight_decay": 0.1}
    rows = read_stsb("train", limit=32)
    ours = CrossEncoder(start, config_kwargs=NO_DROPOUT)
    ours.fit(DataLoader([InputExample(texts=[a, b], label=s / 5.0) for a, b, s in rows], batch_size=8), **settings)
    torch.manual_seed(0)
    theirs = TorchCrossEncoder(str(start), device="cpu", config_kwargs=NO_DROPOUT)
    examples = [TorchInputExample(texts=[a, b], label=s / 5.0) for a, b, s in rows]
    theirs.old_fit(torch.utils.data.DataLoader(examples, batch_size=8, shuffle=False), **settings)
    mine = ours.model.hf_state_dict()
    initial = AutoModelForSequenceClassification.from_pretrained(start).state_dict()
    for key, value in theirs.model.state_dict().items():
        if key.endswith(("position_ids", "token_type_ids")):
            continue
        # attention key biases: a zero true gradient, whose round-off Adafactor normalises into lr-sized steps
        atol = 6 * optimizer_params["lr"] if key.endswith("attention.self.key.bias") else 2e-5
        np.testing.assert_allclose(mine[key], value.numpy(), rtol=1e-4, atol=atol, err_msg=key)
    assert max(float(np.abs(mine[k] - initial[k].numpy()).max()) for k in mine) > 1e-3  # it trained


# ------------------------------------------- Hugging Face's other optim choices against torch, step by step
def _torch_optimizer(name: str, options: dict, groups: list[dict], lr: float):
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False, **options)
    torch_class = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop}[name]
    return torch_class(groups, lr=lr, **options)


@pytest.mark.parametrize(
    "name,options",
    [
        ("sgd", {}),
        ("sgd", {"momentum": 0.9}),
        ("sgd", {"momentum": 0.8, "dampening": 0.3}),
        ("sgd", {"momentum": 0.9, "nesterov": True}),
        ("adagrad", {}),
        ("adagrad", {"lr_decay": 0.1, "eps": 1e-6, "initial_accumulator_value": 0.5}),
        ("rmsprop", {}),
        ("rmsprop", {"alpha": 0.9, "momentum": 0.5, "centered": True}),
        ("adafactor", {}),
        ("adafactor", {"clip_threshold": 0.5, "decay_rate": -0.6}),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()) or "defaults",
)
def test_other_optimizers_match_torch_step_by_step(name, options):
    """crossjax.optimizers' transforms in the chain the step builds (clipping, weight decay where the mask says,
    the scheduled learning rate) against torch's SGD/Adagrad/RMSprop and transformers' Adafactor with Hugging
    Face Trainer's two parameter groups. The parameters are laid out as crossjax holds them: a kernel transposed
    against torch's (out, in) weight, and a stack of two layers' weights and biases on a leading axis (the
    scanned layers), which torch holds as separate tensors."""
    import jax.numpy as jnp

    from crossjax import optimizers

    rng = np.random.default_rng(1)
    # ours: name -> (shape, layers stacked on axis 0, transposed against torch); "conv" is DeBERTa-v2's Conv1d
    # weight, (k, in, out) here and (out, in, k) in torch, whose last two axes Adafactor factors
    layout = {"kernel": ((3, 5), 0, True), "stack": ((2, 4, 3), 1, True), "stack_bias": ((2, 3), 1, False),
              "bias": ((5,), 0, False), "embedding": ((6, 4), 0, False), "conv": ((3, 4, 5), 0, True),
              "stack_conv": ((2, 3, 4, 5), 1, True)}  # fmt: skip
    decay = {k: not k.endswith("bias") for k in layout}
    init = {k: rng.normal(size=shape).astype(np.float32) for k, (shape, _, _) in layout.items()}
    lr, wd, clip = 5e-2, 0.1, 1.0
    spec = training.OptimizerSpec.create(
        "warmuplinear", clip, optimizer=name, optimizer_options=optimizers.optimizer_options(name, options)
    )
    hparams = training.optimizer_hparams(lr, 2, 10, wd, max_grad_norm=clip)
    layouts = {k: stacked * optimizers.STACKED + transposed * optimizers.TRANSPOSED
               for k, (_, stacked, transposed) in layout.items()}  # fmt: skip
    tx = training.optimizer_for(spec, decay, hparams, layouts)
    params = {k: jnp.asarray(v) for k, v in init.items()}
    state = tx.init(params)

    def torch_tensors(key, array):  # our leaf -> torch's tensors (one per stacked layer, (out, in) weights)
        _, axes, transposed = layout[key]
        slices = list(array) if axes else [array]
        return [s.T if transposed else s for s in slices]

    torch_params = {k: [torch.nn.Parameter(torch.tensor(np.ascontiguousarray(t))) for t in torch_tensors(k, v)]
                    for k, v in init.items()}  # fmt: skip
    groups = [
        {"params": [p for k, ps in torch_params.items() if decay[k] for p in ps], "weight_decay": wd},
        {"params": [p for k, ps in torch_params.items() if not decay[k] for p in ps], "weight_decay": 0.0},
    ]
    opt = _torch_optimizer(name, options, groups, lr)
    import transformers

    sched = transformers.get_linear_schedule_with_warmup(opt, 2, 10)
    everything = [p for ps in torch_params.values() for p in ps]
    for step in range(6):
        scale = 5.0 if step == 2 else 0.3
        grads = {k: (rng.normal(size=s) * scale).astype(np.float32) for k, (s, _, _) in layout.items()}
        updates, state = tx.update({k: jnp.asarray(g) for k, g in grads.items()}, state, params)
        params = optax.apply_updates(params, updates)
        for k, ps in torch_params.items():
            for p, g in zip(ps, torch_tensors(k, grads[k]), strict=True):
                p.grad = torch.tensor(np.ascontiguousarray(g))
        torch.nn.utils.clip_grad_norm_(everything, clip)
        opt.step()
        sched.step()
        for k, ps in torch_params.items():
            theirs = [p.detach().numpy() for p in ps]
            np.testing.assert_allclose(
                torch_tensors(k, np.asarray(params[k])), theirs, rtol=2e-5, atol=2e-6, err_msg=f"{k}, step {step}"
            )


@pytest.mark.parametrize(
    "optim,optim_args,error,match",
    [
        ("sgd", "momentum=0.9,betas=3", ValueError, "betas"),
        ("adamw_torch", "beta1=0.8", ValueError, "no effect"),
        ("sgd", "nesterov=True", ValueError, "Nesterov"),
        ("rmsprop", "alpha=fast", ValueError, "alpha"),
        ("adamw_8bit", None, ValueError, "adamw_8bit"),
        ("sgd", "momentum", ValueError, "key=value"),
    ],
)
def test_optim_and_optim_args_are_checked_before_training(optim, optim_args, error, match):
    from crossjax.training_args import CrossEncoderTrainingArguments

    with pytest.raises(error, match=match):
        CrossEncoderTrainingArguments("out", optim=optim, optim_args=optim_args)


def test_optim_args_read_as_hugging_face_reads_them():
    from crossjax.training_args import CrossEncoderTrainingArguments

    args = CrossEncoderTrainingArguments("out", optim="sgd", optim_args="momentum=0.9, nesterov=true")
    settings = args.optimizer_settings
    assert settings["optimizer"] == "sgd"
    assert dict(settings["optimizer_options"]) == {"momentum": 0.9, "dampening": 0.0, "nesterov": True}
