"""Metrics equal scikit-learn's on the same predictions: unit (random predictions
fed to the accumulators in batches) and through a Trainer (predictions of the
trained model recomputed by hand)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

import nb_trainer as nbt
from nb_trainer.metrics import (BinaryMetrics, ClassificationMetrics, RegressionMetrics,
                                metric_names, resolve_loss)

APPROX = dict(rel=1e-9, abs=1e-12)


def _feed(acc, out, target, batch=37):
    for i in range(0, len(out), batch):
        acc.update(out[i:i + batch], target[i:i + batch])
    return acc.compute(prefix="val_")


def _sk_classification(y, pred):
    kw = dict(average="macro", zero_division=0)
    return {
        "val_accuracy": skm.accuracy_score(y, pred),
        "val_precision": skm.precision_score(y, pred, **kw),
        "val_recall": skm.recall_score(y, pred, **kw),
        "val_f1": skm.f1_score(y, pred, **kw),
    }


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_equal_sklearn_on_random_predictions(seed):
    g = torch.Generator().manual_seed(seed)
    n, c = 500, 7
    logits = torch.randn(n, c, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    got = _feed(ClassificationMetrics(c, "cpu"), logits, y)
    want = _sk_classification(y.numpy(), logits.argmax(1).numpy())
    assert got == pytest.approx(want, **APPROX)


def test_classification_with_a_class_never_predicted():
    g = torch.Generator().manual_seed(1)
    n, c = 300, 5
    logits = torch.randn(n, c, generator=g)
    logits[:, 3] = -1e9  # class 3 is in the targets but never predicted: its precision is 0
    y = torch.randint(0, c, (n,), generator=g)
    pred = logits.argmax(1).numpy()
    assert 3 not in pred and 3 in y.numpy()
    got = _feed(ClassificationMetrics(c, "cpu"), logits, y)
    assert got == pytest.approx(_sk_classification(y.numpy(), pred), **APPROX)


def test_classification_with_a_class_in_neither_targets_nor_predictions():
    g = torch.Generator().manual_seed(2)
    n, c = 300, 6
    logits = torch.randn(n, c, generator=g)
    logits[:, 5] = -1e9
    y = torch.randint(0, 5, (n,), generator=g)  # class 5 absent from both: left out of the macro average
    pred = logits.argmax(1).numpy()
    got = _feed(ClassificationMetrics(c, "cpu"), logits, y)
    assert got == pytest.approx(_sk_classification(y.numpy(), pred), **APPROX)


def test_classification_with_a_class_predicted_but_never_true():
    g = torch.Generator().manual_seed(3)
    n, c = 200, 4
    logits = torch.randn(n, c, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)  # class 3 only in predictions: its recall is 0
    pred = logits.argmax(1).numpy()
    assert 3 in pred
    got = _feed(ClassificationMetrics(c, "cpu"), logits, y)
    assert got == pytest.approx(_sk_classification(y.numpy(), pred), **APPROX)


@pytest.mark.parametrize("seed", range(3))
def test_binary_metrics_equal_sklearn_positive_class(seed):
    g = torch.Generator().manual_seed(seed)
    n = 400
    logits = torch.randn(n, 1, generator=g) + 0.3
    y = (torch.rand(n, 1, generator=g) < 0.4).float()
    got = _feed(BinaryMetrics("cpu"), logits, y)
    pred = (logits > 0).long().numpy().ravel()
    yt = y.long().numpy().ravel()
    want = {
        "val_accuracy": skm.accuracy_score(yt, pred),
        "val_precision": skm.precision_score(yt, pred, zero_division=0),
        "val_recall": skm.recall_score(yt, pred, zero_division=0),
        "val_f1": skm.f1_score(yt, pred, zero_division=0),
    }
    assert got == pytest.approx(want, **APPROX)


def test_binary_metrics_with_no_positive_prediction_are_zero_like_sklearn():
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    logits = torch.full((4,), -2.0)
    got = _feed(BinaryMetrics("cpu"), logits, y)
    assert got["val_precision"] == skm.precision_score([0, 1, 1, 0], [0, 0, 0, 0], zero_division=0) == 0
    assert got["val_f1"] == 0
    assert got["val_accuracy"] == 0.5


def _sk_regression(y, out):
    return {
        "val_mse": skm.mean_squared_error(y, out),
        "val_mae": skm.mean_absolute_error(y, out),
        "val_r2": skm.r2_score(y, out),
    }


@pytest.mark.parametrize("shape", [(300,), (300, 1), (300, 3)])
def test_regression_metrics_equal_sklearn(shape):
    g = torch.Generator().manual_seed(0)
    y = torch.randn(*shape, generator=g, dtype=torch.float64) * 3 + 10
    out = y + torch.randn(*shape, generator=g, dtype=torch.float64)
    got = _feed(RegressionMetrics("cpu"), out, y)
    assert got == pytest.approx(_sk_regression(y.numpy(), out.numpy()), rel=1e-7)


def test_regression_multi_output_r2_is_the_uniform_average():
    g = torch.Generator().manual_seed(4)
    y = torch.randn(200, 2, generator=g, dtype=torch.float64)
    y[:, 1] *= 100  # very different scales: a pooled R² would differ from the per-output average
    out = y + torch.randn(200, 2, generator=g, dtype=torch.float64) * torch.tensor([0.5, 10.0], dtype=torch.float64)
    got = _feed(RegressionMetrics("cpu"), out, y)
    assert got["val_r2"] == pytest.approx(skm.r2_score(y.numpy(), out.numpy()), rel=1e-9)
    assert got["val_mse"] == pytest.approx(skm.mean_squared_error(y.numpy(), out.numpy()), rel=1e-9)


@pytest.mark.parametrize("perfect", [True, False])
def test_regression_r2_of_a_constant_target_follows_sklearn(perfect):
    y = torch.full((50,), 2.5, dtype=torch.float64)
    out = y.clone() if perfect else y + torch.linspace(-1, 1, 50, dtype=torch.float64)
    got = _feed(RegressionMetrics("cpu"), out, y)
    assert got["val_r2"] == skm.r2_score(y.numpy(), out.numpy())
    assert got["val_r2"] == (1.0 if perfect else 0.0)


def test_regression_float32_inputs_keep_r2_digits():
    # large offset, small spread: float32 sums of y² would lose R² entirely
    g = torch.Generator().manual_seed(5)
    y = (torch.randn(5000, generator=g) * 0.01 + 1000.0).float()
    out = (y.double() + torch.randn(5000, generator=g, dtype=torch.float64) * 0.005).float()
    got = _feed(RegressionMetrics("cpu"), out, y, batch=512)
    assert got["val_r2"] == pytest.approx(skm.r2_score(y.double().numpy(), out.double().numpy()), abs=1e-6)


def test_resolve_loss_by_task_name_and_callable():
    assert resolve_loss(None, "classification")[0] == "cross_entropy"
    assert resolve_loss(None, "binary")[0] == "bce"
    assert resolve_loss(None, "multilabel")[0] == "bce"
    assert resolve_loss(None, "causal_lm")[0] == "causal_lm"
    assert resolve_loss(None, "regression")[1] is F.mse_loss
    assert resolve_loss("MAE", "regression")[1] is F.l1_loss

    def my_loss(out, y):
        return (out - y).pow(4).mean()
    assert resolve_loss(my_loss, "regression") == ("my_loss", my_loss)
    with pytest.raises(TypeError, match="loss=3"):
        resolve_loss(3, "regression")


# -- through a Trainer ----------------------------------------------------------

def _predict(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def test_trainer_multiclass_epoch_record_equals_sklearn(digits, make_mlp):
    train, (xv, yv) = digits
    t = nbt.Trainer(make_mlp(64, 10), train, (xv, yv), store=None)
    run = t.start(epochs=2, lr=3e-3, batch_size=128)
    t.wait()
    assert run.status == "finished", run.error
    rec = run.last
    out = _predict(t.model, xv)
    want = _sk_classification(yv.numpy(), out.argmax(1).numpy())
    assert {k: rec[k] for k in want} == pytest.approx(want, **APPROX)
    assert rec["val_loss"] == pytest.approx(float(F.cross_entropy(out, yv)), rel=1e-5)
    assert set(rec) == {"epoch", "train_loss", "val_loss", "grad_norm", "lr", "seconds"} | set(metric_names("classification"))
    assert rec["epoch"] == 2 and rec["lr"] == 3e-3


def test_trainer_binary_one_output_float_targets_equals_sklearn(binary, make_mlp):
    train, (xv, yv) = binary
    assert yv.shape[1:] == (1,) and yv.dtype == torch.float32
    t = nbt.Trainer(make_mlp(30, 1), train, (xv, yv), store=None)
    assert t.task == "binary"
    run = t.start(epochs=2, lr=1e-2, batch_size=64)
    t.wait()
    assert run.status == "finished", run.error
    rec = run.last
    out = _predict(t.model, xv)
    pred = (out > 0).long().numpy().ravel()
    yt = yv.long().numpy().ravel()
    want = {
        "val_accuracy": skm.accuracy_score(yt, pred),
        "val_precision": skm.precision_score(yt, pred, zero_division=0),
        "val_recall": skm.recall_score(yt, pred, zero_division=0),
        "val_f1": skm.f1_score(yt, pred, zero_division=0),
    }
    assert {k: rec[k] for k in want} == pytest.approx(want, **APPROX)
    assert rec["val_loss"] == pytest.approx(float(F.binary_cross_entropy_with_logits(out, yv)), rel=1e-5)


def test_trainer_regression_n_by_1_targets_equals_sklearn(regression, make_mlp):
    train, (xv, yv) = regression
    t = nbt.Trainer(make_mlp(10, 1), train, (xv, yv), store=None)
    assert t.task == "regression"
    run = t.start(epochs=3, lr=1e-2, batch_size=32)
    t.wait()
    assert run.status == "finished", run.error
    rec = run.last
    out = _predict(t.model, xv)
    want = _sk_regression(yv.numpy(), out.numpy())
    assert {k: rec[k] for k in want} == pytest.approx(want, rel=1e-5)
    assert rec["val_loss"] == pytest.approx(float(F.mse_loss(out, yv)), rel=1e-5)
    assert set(rec) >= set(metric_names("regression"))


def test_trainer_evaluate_equals_sklearn(digits, make_mlp):
    train, (xv, yv) = digits
    t = nbt.Trainer(make_mlp(64, 10), train, (xv, yv), store=None)
    result = t.evaluate()  # the untrained model: metrics are far from perfect
    want = _sk_classification(yv.numpy(), _predict(t.model, xv).argmax(1).numpy())
    assert {"val_" + k: v for k, v in result.items() if k != "loss"} == pytest.approx(want, **APPROX)


def test_target_ids_outside_the_classes_are_left_out():
    g = torch.Generator().manual_seed(6)
    n, c = 200, 4
    logits = torch.randn(n, c, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    y[::10] = c      # ids the model has no output for (the data checks report them)
    y[5::10] = -1
    keep = (y >= 0) & (y < c)
    got = _feed(ClassificationMetrics(c, "cpu"), logits, y)
    want = _sk_classification(y[keep].numpy(), logits[keep].argmax(1).numpy())
    assert got == pytest.approx(want, **APPROX)


# -- tasks beyond one label per row ----------------------------------------------------------

@pytest.mark.parametrize("layout", ["classes last (N, T, C)", "classes second (N, C, H, W)"])
def test_per_position_classification_ignores_minus_100_and_equals_sklearn(layout):
    from nb_trainer.metrics import cross_entropy
    g = torch.Generator().manual_seed(3)
    c = 5
    if layout.startswith("classes last"):
        logits = torch.randn(60, 9, c, generator=g)
        y = torch.randint(0, c, (60, 9), generator=g)
        flat_logits = logits.reshape(-1, c)
    else:
        logits = torch.randn(60, c, 4, 3, generator=g)
        y = torch.randint(0, c, (60, 4, 3), generator=g)
        flat_logits = logits.movedim(1, -1).reshape(-1, c)
    y[::3] = -100
    got = _feed(ClassificationMetrics(c, "cpu"), logits, y, batch=7)
    keep = y.reshape(-1) != -100
    want = _sk_classification(y.reshape(-1)[keep].numpy(), flat_logits.argmax(1)[keep].numpy())
    assert got == pytest.approx(want, **APPROX)
    # the loss is torch's over the kept positions
    assert float(cross_entropy(logits, y)) == pytest.approx(
        float(F.cross_entropy(flat_logits[keep], y.reshape(-1)[keep])), rel=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_multilabel_metrics_equal_sklearn_with_a_label_never_present(seed):
    from nb_trainer.metrics import MultilabelMetrics
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(200, 6, generator=g)
    y = (torch.rand(200, 6, generator=g) > 0.6).float()
    y[:, 4] = 0
    logits[:, 4] = -5.0  # label 4: no positive target, no positive prediction
    got = _feed(MultilabelMetrics("cpu"), logits, y)
    pred, true = (logits > 0).int().numpy(), y.int().numpy()
    kw = dict(average="macro", zero_division=0)
    want = {"val_accuracy": skm.accuracy_score(true, pred), "val_precision": skm.precision_score(true, pred, **kw),
            "val_recall": skm.recall_score(true, pred, **kw), "val_f1": skm.f1_score(true, pred, **kw)}
    assert got == pytest.approx(want, **APPROX)


def test_next_token_accuracy_reads_the_shifted_positions_and_skips_minus_100():
    from nb_trainer.metrics import NextTokenMetrics, causal_lm_loss
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 8, 11, generator=g)
    labels = torch.randint(0, 11, (20, 8), generator=g)
    labels[:, -2:] = -100
    got = _feed(NextTokenMetrics("cpu"), logits, labels, batch=6)
    pred = logits[:, :-1].argmax(-1).reshape(-1)
    true = labels[:, 1:].reshape(-1)
    keep = true != -100
    assert got["val_accuracy"] == pytest.approx(skm.accuracy_score(true[keep].numpy(), pred[keep].numpy()))
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 11)[keep], true[keep])
    assert float(causal_lm_loss(logits, labels)) == pytest.approx(float(want), rel=1e-5)


def test_one_hot_float_targets_are_scored_as_their_class():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(100, 4, generator=g)
    ids = torch.randint(0, 4, (100,), generator=g)
    got = _feed(ClassificationMetrics(4, "cpu"), logits, F.one_hot(ids, 4).float())
    assert got == pytest.approx(_sk_classification(ids.numpy(), logits.argmax(1).numpy()), **APPROX)
