"""Health warnings from real training: every code from a small real case, and healthy runs that stay quiet.

Each case trains a tiny model for real through ``Trainer(...).start(...)``
and reads ``run.warnings``, the way a user (or the held-out scenario suite)
does. The healthy controls cover every optimizer, with and without weight
decay, dropout and L1, on classification, binary and regression: none may
raise anything.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

import nb_trainer as nbt


def train(model, data, val=None, **config):
    t = nbt.Trainer(model, data, val, store=None)
    run = t.start(**config)
    t.wait(timeout=120)
    assert run.done, "the run did not end"
    return t, run


def mlp(n_in, n_out, hidden=(32,), act=nn.ReLU, dropout=None, seed=0, gain=1.0):
    torch.manual_seed(seed)
    layers, prev = [], n_in
    for h in hidden:
        layers += [nn.Linear(prev, h), act()]
        if dropout is not None:
            layers.append(nn.Dropout(dropout))
        prev = h
    layers.append(nn.Linear(prev, n_out))
    model = nn.Sequential(*layers)
    if gain != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(gain)
    return model


def _std(x):
    return ((x - x.mean(0)) / x.std(0)).astype(np.float32)


def _split(x, y, n_val):
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    return (x[:-n_val], y[:-n_val]), (x[-n_val:], y[-n_val:])


@pytest.fixture(scope="module")
def blobs():
    """4 well-separated classes in 20 features (600 examples)."""
    from sklearn.datasets import make_classification
    x, y = make_classification(600, 20, n_informative=8, n_classes=4, n_clusters_per_class=1, class_sep=1.5,
                               random_state=0)
    return _split(_std(x), y.astype(np.int64), 150)


@pytest.fixture(scope="module")
def circles():
    from sklearn.datasets import make_circles
    x, y = make_circles(600, noise=0.1, factor=0.5, random_state=0)
    return _split(_std(x), y.astype(np.int64), 150)


@pytest.fixture(scope="module")
def reg():
    """make_regression, 10 features, standardized targets of shape (N, 1)."""
    from sklearn.datasets import make_regression
    x, y = make_regression(600, 10, n_informative=6, noise=10, random_state=0)
    return _split(_std(x), ((y - y.mean()) / y.std()).astype(np.float32)[:, None], 150)


# -- every code from a small real case -------------------------------------------------

def test_nan_loss_and_exploding_gradients_on_unscaled_targets(reg):
    (x, y), val = reg
    _, run = train(mlp(10, 1, (64, 64)), (x, y * 1000), (val[0], val[1] * 1000), optimizer="sgd", lr=0.01, epochs=5)
    assert run.status == "diverged"
    assert {"nan_loss", "exploding_gradients"} <= set(run.codes)
    w = run.warning("exploding_gradients")
    assert "gradient norm grew" in w.message and w.fix["grad_clip"] > 0 and w.fix["lr"] == 0.001


def test_vanishing_gradients_in_a_deep_sigmoid_net(blobs):
    _, run = train(mlp(20, 4, (32,) * 10, act=nn.Sigmoid), *blobs, optimizer="sgd", lr=0.1, epochs=6)
    assert run.codes[0] == "vanishing_gradients" and set(run.codes) <= {"vanishing_gradients", "loss_plateau"}
    assert "first-layer gradient norm" in run.warnings[0].message
    if "loss_plateau" in run.codes:  # the flat loss is shown as the cause's symptom, with its fix
        plateau = run.warning("loss_plateau")
        assert plateau.suggestion.startswith("the likely cause is vanishing gradients") and plateau.fix == {}


def test_dead_relu_from_negative_biases(blobs):
    model = mlp(20, 4, (64, 64))
    with torch.no_grad():
        model[0].bias.fill_(-8.0)
    _, run = train(model, *blobs, optimizer="adam", lr=1e-3, epochs=5)
    assert run.codes == ["dead_relu"]
    assert run.warnings[0].fix == {} and "bias" in run.warnings[0].suggestion


def test_dead_relu_and_lr_too_high_from_a_huge_adam_step(reg):
    t, run = train(mlp(10, 1, (64, 64)), *reg, optimizer="adam", lr=0.3, epochs=8)
    assert {"lr_too_high", "dead_relu"} <= set(run.codes)
    # the units died during training: the lr did it, and an overshoot that kills units takes lr ÷ 100
    assert run.warning("lr_too_high").fix == {"lr": 0.003}
    assert run.warning("dead_relu").fix == {"lr": 0.003}
    fixed = t.start(**run.verdicts[0].fix)
    t.wait(timeout=60)
    assert fixed.warnings == []


def test_lr_too_high_without_divergence(blobs):
    _, run = train(mlp(20, 4), *blobs, optimizer="adam", lr=1.0, epochs=5)
    assert run.status == "finished" and "lr_too_high" in run.codes
    assert run.warning("lr_too_high").fix == {"lr": 0.1}


def test_lr_too_low(blobs):
    _, run = train(mlp(20, 4), *blobs, optimizer="sgd", lr=1e-5, epochs=5)
    assert run.codes == ["lr_too_low"]
    assert run.warnings[0].fix["lr"] >= 1e-3


def test_overfitting_on_sixty_examples(blobs):
    (x, y), (xv, yv) = blobs
    noise = torch.randn(len(x), 80, generator=torch.Generator().manual_seed(0))
    noise_v = torch.randn(len(xv), 80, generator=torch.Generator().manual_seed(1))
    x, xv = torch.cat([x, noise], 1), torch.cat([xv, noise_v], 1)
    _, run = train(mlp(100, 4, (256, 256)), (x[:60], y[:60]), (xv, yv), optimizer="adam", lr=3e-3, epochs=40,
                   batch_size=16)
    assert run.codes == ["overfitting"]
    assert run.warnings[0].fix["weight_decay"] > 0


def test_underfitting_and_plateau_of_a_linear_model_on_circles(circles):
    _, run = train(mlp(2, 2, ()), *circles, optimizer="adam", lr=1e-2, epochs=15)
    assert set(run.codes) == {"underfitting", "loss_plateau"}
    assert run.warning("underfitting").fix == {}  # only a model change helps: the suggestion says which


def test_underfitting_from_heavy_l1_offers_to_turn_it_off(small_digits):
    _, run = train(mlp(64, 10, (64,)), *small_digits, optimizer="adamw", lr=1e-3, l1=0.05, epochs=6)
    assert "underfitting" in run.codes
    assert run.warning("underfitting").fix == {"l1": 0.0}


def test_loss_oscillation_with_momentum_099(reg):
    _, run = train(mlp(10, 1, (64,)), *reg, optimizer="momentum", lr=0.05, momentum=0.99, epochs=15)
    assert "loss_oscillation" in run.codes
    assert run.warning("loss_oscillation").fix["momentum"] == 0.9


def test_bad_input_data_fails_the_run_with_the_reason(blobs):
    (x, y), val = blobs
    x = x.clone()
    x[5, 3] = float("nan")
    _, run = train(mlp(20, 4), (x, y), val, epochs=2)
    assert run.status == "failed" and run.codes == ["bad_input_data"]
    assert "column 3" in run.warnings[0].message and "bad_input_data" in str(run.error)


def test_label_mismatch_fails_the_run_with_the_reason(blobs):
    (x, y), (xv, yv) = blobs
    _, run = train(mlp(20, 4), (x, y + 1), (xv, yv + 1), epochs=2)
    assert run.status == "failed" and run.codes == ["label_mismatch"]
    msg = run.warnings[0].message
    assert "train targets hold class ids from 1 to 4" in msg and "val targets" in msg


def test_class_imbalance_warns_and_trains_on(blobs):
    (x, y), val = blobs
    keep = torch.cat([torch.nonzero(y == 0).flatten(), torch.nonzero(y == 1).flatten()[:8]])
    yb = (y[keep] == 1).float().reshape(-1, 1)
    _, run = train(mlp(20, 1), (x[keep], yb), None, optimizer="adam", lr=3e-3, epochs=5)
    assert run.status == "finished" and run.codes == ["class_imbalance"]
    assert "1:" in run.warnings[0].message


def test_applying_the_fix_clears_the_warning(blobs):
    t, run = train(mlp(20, 4), *blobs, optimizer="sgd", lr=1e-5, epochs=5)
    w = run.warning("lr_too_low")
    fixed = t.start(**w.fix)
    t.wait(timeout=60)
    assert fixed.config.lr == w.fix["lr"] and fixed.warnings == []
    assert fixed.last["train_loss"] < 0.8 * run.last["train_loss"]  # it learns now


# -- healthy controls: nothing at all ----------------------------------------------------

LR = {"sgd": 0.1, "momentum": 0.02, "adam": 2e-3, "adamw": 2e-3, "rmsprop": 1e-3}
REGULARISATION = {"plain": {}, "weight_decay": {"weight_decay": 1e-3}, "dropout": {"dropout": 0.2},
                  "l1": {"l1": 1e-4}}


@pytest.fixture(scope="module")
def tasks(digits, binary, regression):
    return {"classification": (digits, 64, 10), "binary": (binary, 30, 1), "regression": (regression, 10, 1)}


@pytest.mark.parametrize("reg_name", list(REGULARISATION))
@pytest.mark.parametrize("optimizer", list(LR))
@pytest.mark.parametrize("task", ["classification", "binary", "regression"])
def test_healthy_runs_raise_no_warning(task, optimizer, reg_name, tasks):
    (train_data, val_data), n_in, n_out = tasks[task]
    if task == "classification":  # a subset keeps the 60 runs quick
        train_data = (train_data[0][:600], train_data[1][:600])
    config = dict(optimizer=optimizer, lr=LR[optimizer], epochs=8, batch_size=32, **REGULARISATION[reg_name])
    model = mlp(n_in, n_out, (64,), dropout=0.1 if reg_name == "dropout" else None)
    _, run = train(model, train_data, val_data, **config)
    assert run.status == "finished"
    assert run.warnings == [], [str(w) for w in run.warnings]


# -- the fault gallery notebook ----------------------------------------------------------

@pytest.mark.slow
@pytest.mark.kernel
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fault_gallery_is_stored_clean_and_runs_headless(tmp_path, monkeypatch):
    """Each section asserts that its warning was raised and that the fix made it go away."""
    import time
    from pathlib import Path

    import nbformat
    from nbclient import NotebookClient
    path = Path(__file__).resolve().parent.parent / "demo_notebooks" / "03_fault_gallery.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    assert all(c.outputs == [] and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    t0 = time.monotonic()
    NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert time.monotonic() - t0 < 120
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    codes = ("nan_loss", "exploding_gradients", "vanishing_gradients", "dead_relu", "overfitting", "loss_plateau",
             "loss_oscillation", "lr_too_high", "lr_too_low", "underfitting", "bad_input_data", "label_mismatch",
             "class_imbalance", "unscaled_data", "probability_outputs")
    for code in codes:
        assert f"] {code}:" in text, f"the gallery never shows {code}"
    assert "=> verdict:" in text and "auto-fix 2/5" in text  # one verdict per cause, and auto-repair
    assert not any(o.output_type == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)


# -- scenarios of the held-out check (benchmarks/health_heldout.py), each a fraction of a second --------

@pytest.fixture(scope="module")
def heldout():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "health_heldout.py"
    spec = importlib.util.spec_from_file_location("health_heldout", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["health_heldout"] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("health_heldout", None)


def _scenario_run(heldout, name, seed):
    sc = next(s for s in heldout.SCENARIOS if s.name == name)
    heldout.SEED = seed
    model, data, val, config = sc.build()
    config = dict(config)
    loss = config.pop("loss", None)
    t = nbt.Trainer(model, data, val, store=None, loss=loss)
    run = t.start(**dict(config, seed=seed))
    t.wait(timeout=120)
    assert run.done, "the run did not end"
    return sc, run


HELDOUT_FAULTS = [
    # (scenario, seed, what the rule change behind it is)
    ("f_dead_functional_relu", 0, "F.relu has no module to probe: exactly-zero first-layer gradients say dead units"),
    ("f_vanish_sigmoid10_adam", 0, "the loss only came down to the baseline: no progress, so the gradient rule looks"),
    ("f_explode_deep_linear", 0, "NaN at step 2: the first loss 9000x the baseline says the forward pass overflowed"),
    ("f_high_momentum_gru", 0, "the train loss stays above the start and the baseline, bouncing"),
    ("f2_high_sgd_bars", 1, "the same at SGD lr 10 on a CNN, whose units also die"),
    ("f_osc_rmsprop_multireg", 2, "the val loss spikes 7-12x its level three times"),
    ("f_under_heavy_wd_multireg", 0, "weight decay 0.5 holds R² at 0.4: underfitting at 60% of the baseline"),
    ("f_low_momentum_multireg", 1, "batch noise of the first steps no longer hides a loss that does not move"),
]


@pytest.mark.parametrize("name,seed,why", HELDOUT_FAULTS, ids=[f[0] for f in HELDOUT_FAULTS])
def test_heldout_fault_is_caught_with_nothing_untrue_beside_it(heldout, name, seed, why):
    sc, run = _scenario_run(heldout, name, seed)
    assert sc.expect in run.codes, (why, run.codes)
    assert set(run.codes) <= {sc.expect, *sc.allow}, run.codes


HELDOUT_HEALTHY = [
    ("h2_bars_gelu_gap_momentum", 0),  # a slow start (val loss creeping down at ln 2) is not a plateau
    ("h2_bars_gelu_gap_momentum", 1),
    ("h_cnn_adam", 0),
    ("h_gru_binary", 0),
    ("h_cancer_ce_dataloader", 0),     # a DataLoader with its own batch size
    ("h_moons_numpy64_adam", 0),       # numpy float64 in, float (N, 1) targets
    ("h2_tokens_embedding_adam", 0),   # int64 token inputs, an embedding as the first matrix
    ("h2_residual_mlp_adam", 0),       # a user's module with torch.relu
    ("h_noisy_binary_early_stopping", 0),
]


@pytest.mark.parametrize("name,seed", HELDOUT_HEALTHY, ids=[f"{n}-s{s}" for n, s in HELDOUT_HEALTHY])
def test_heldout_healthy_run_raises_nothing(heldout, name, seed):
    _, run = _scenario_run(heldout, name, seed)
    assert run.status in ("finished", "stopped")
    assert run.warnings == [], [str(w) for w in run.warnings]


# -- the cases of issue "health warnings whose fixes work", as a user met them -------------------------------

@pytest.fixture(scope="module")
def quickstart():
    """The quickstart's digits (pixels / 16, a stratified 75/25 split) and its MLP 64-256-256-10 with dropout."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x, xv, y, yv = train_test_split((d.data / 16).astype("float32"), d.target, test_size=0.25, random_state=0,
                                    stratify=d.target)

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 256), nn.ReLU(),
                             nn.Linear(256, 10))
    return (x, y), (xv, yv), model


def test_lr_1_in_the_quickstart_is_one_verdict_naming_the_module(quickstart):
    train_data, val_data, model = quickstart
    _, run = train(model(), train_data, val_data, lr=1.0, epochs=15)
    assert len(run.codes) >= 2
    (v,) = run.verdicts
    assert v.cause == "step_too_large" and v.fix == {"lr": 0.01} and set(v.codes) == set(run.codes)
    assert "Sequential[1] (ReLU after Linear(64→256))" in run.warning("dead_relu").message


def test_plain_sgd_at_the_quickstart_lr_is_a_small_step_not_underfitting(quickstart):
    train_data, val_data, model = quickstart
    t, run = train(model(), train_data, val_data, optimizer="sgd", lr=1e-3, epochs=15)
    assert "underfitting" not in run.codes and "lr_too_low" in run.codes
    (v,) = run.verdicts
    assert v.cause == "step_too_small" and v.fix["lr"] > 1e-3
    fixed = t.start(**v.fix)
    t.wait(timeout=120)
    assert fixed.last["val_accuracy"] > run.last["val_accuracy"] + 0.3


def test_heavy_l1_is_one_verdict_whose_fix_works(blobs):
    t, run = train(mlp(20, 4, (64,)), *blobs, optimizer="adamw", lr=1e-3, l1=0.05, epochs=8)
    (v,) = run.verdicts
    assert v.cause == "regularisation" and v.fix == {"l1": 0.0} and "loss_plateau" in run.codes
    fixed = t.start(**v.fix)
    t.wait(timeout=60)
    assert fixed.warnings == [] and fixed.last["val_accuracy"] > run.last["val_accuracy"] + 0.2


def test_rmsprop_at_lr_03_is_fixed_by_one_click(reg):
    t, run = train(mlp(10, 1, (64, 64)), *reg, optimizer="rmsprop", lr=0.3, epochs=8)
    (v,) = run.verdicts
    assert v.fix == {"lr": 0.003}
    fixed = t.start(**v.fix)
    t.wait(timeout=60)
    assert fixed.warnings == [] and fixed.last["val_r2"] > 0.5


def test_auto_fix_retrains_until_no_warning_offers_a_fix(quickstart):
    train_data, val_data, model = quickstart
    t = nbt.Trainer(model(), train_data, val_data, store=None)
    runs = t.auto_fix(max_runs=5, optimizer="adam", lr=1.0, epochs=10)
    assert 2 <= len(runs) <= 5
    assert runs[0].note.startswith("auto-fix 1/5") and "because" in runs[1].note and "lr_too_high" in runs[1].note
    assert not any(v.fix for v in runs[-1].verdicts)
    assert runs[-1].last["val_accuracy"] > runs[0].last["val_accuracy"] + 0.3
    assert all(r.parent is runs[i] for i, r in enumerate(runs[1:]))  # each from the one before, same initial weights


def test_auto_fix_refuses_a_bad_max_runs(blobs):
    t = nbt.Trainer(mlp(20, 4), *blobs, store=None)
    with pytest.raises(ValueError, match="max_runs"):
        t.auto_fix(max_runs=0)


HELDOUT_NEW = [
    # (scenario, seed, expected answer) of the third and fourth batches
    ("f3_explode_deep_residual", 0, "gradients off scale from the first step while the run learns"),
    ("f3_explode_init_gain3", 1, "an initialisation 5x He"),
    ("f3_osc_full_batch_heavy_ball", 0, "the under-damped heavy ball"),
    ("f3_prob_softmax_layer", 0, "nn.Softmax before cross-entropy, named"),
    ("f3_prob_functional_softmax", 0, "F.softmax in forward: the outputs say it"),
    ("f3_unscaled_cancer_adam", 0, "raw breast-cancer features"),
    ("f4_multilabel_sigmoid", 0, "a Sigmoid before multi-label BCE-with-logits"),
]


@pytest.mark.parametrize("name,seed,why", HELDOUT_NEW, ids=[f[0] for f in HELDOUT_NEW])
def test_heldout_new_fault_classes_are_caught(heldout, name, seed, why):
    sc, run = _scenario_run(heldout, name, seed)
    findings = [w.code for w in run.warnings if w.severity != "info"]
    assert sc.expect in findings, (why, run.codes)
    assert set(findings) <= {sc.expect, *sc.allow}, run.codes


HELDOUT_NEW_HEALTHY = ["h3_full_batch_momentum09", "h3_deep_residual_layernorm", "h3_logsoftmax_nll",
                       "h3_sigmoid_bceloss", "h3_digits_raw_counts_adam", "h4_multilabel_bce", "h4_two_inputs"]


@pytest.mark.parametrize("name", HELDOUT_NEW_HEALTHY)
def test_heldout_new_healthy_shapes_raise_nothing(heldout, name):
    _, run = _scenario_run(heldout, name, 0)
    assert run.status in ("finished", "stopped")
    assert run.warnings == [], [str(w) for w in run.warnings]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["h4_bert_dict_adamw", "h4_gpt2_causal_lm", "h4_tagger_sequence_outputs"])
def test_heldout_transformers_raise_nothing(heldout, name):
    pytest.importorskip("transformers")
    _, run = _scenario_run(heldout, name, 0)
    assert run.status == "finished"
    assert run.warnings == [], [str(w) for w in run.warnings]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["f4_bert_lr_too_high", "f4_gpt2_lr_too_low"])
def test_heldout_transformers_faults_are_caught(heldout, name):
    pytest.importorskip("transformers")
    sc, run = _scenario_run(heldout, name, 0)
    symptom = {"loss_plateau"} if sc.expect in heldout.STUCK_CAUSES else set()  # the flat loss of a stuck run
    assert sc.expect in run.codes and set(run.codes) <= {sc.expect, *sc.allow} | symptom, run.codes
