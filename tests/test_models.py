"""Any PyTorch model, any batch: real models from `transformers` (built from a config, nothing
downloaded), several inputs, tuple outputs, sequence outputs, multi-label, a custom step and a stream,
each trained until its metric moves and checked against the same predictions scored by scikit-learn."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

import nb_trainer as nbt

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tiny_bert(num_labels=2, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=num_labels, **kw)
    return transformers.BertForSequenceClassification(cfg)


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(cfg)


def token_data(n=480, seed=0):
    """Sequences of 16 token ids; the label says whether token 7 occurs."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (n, 16), generator=g)
    labels = (ids == 7).any(1).long()
    return ids, labels


def dict_loader(ids, labels, batch_size=32, shuffle=False, **extra):
    items = [{"input_ids": ids[i], "attention_mask": torch.ones_like(ids[i]), "labels": labels[i],
              **{k: v[i] for k, v in extra.items()}} for i in range(len(ids))]
    return DataLoader(items, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(0))


def predictions(t: nbt.Trainer, data) -> tuple:
    """The model's predictions and the targets over ``data``, computed here without the Trainer."""
    model = t.model.eval()
    preds, targets = [], []
    with torch.no_grad():
        for batch in data:
            yield_ = t.step(model, batch)
            preds.append(yield_.pred)
            targets.append(yield_.target)
    return preds, targets


# -- Hugging Face ----------------------------------------------------------------------------

def test_bert_on_dict_batches_trains_on_its_own_loss_and_its_accuracy_matches_sklearn():
    ids, labels = token_data()
    train, val = dict_loader(ids[:400], labels[:400], shuffle=True), dict_loader(ids[400:], labels[400:], 40)
    t = nbt.Trainer(tiny_bert(), train, val, store=None)
    assert t.task == "classification" and t.loss_from == "model"
    run = t.start(epochs=4, lr=3e-3)
    t.wait()
    assert run.status == "finished", run.error
    acc = run.metric("val_accuracy")
    assert acc[-1] > acc[0] or acc[-1] > 0.85
    preds, targets = predictions(t, val)
    pred = torch.cat(preds).argmax(-1).numpy()
    true = torch.cat(targets).numpy()
    assert run.epochs[-1]["val_accuracy"] == pytest.approx(accuracy_score(true, pred))
    assert run.epochs[-1]["val_f1"] == pytest.approx(f1_score(true, pred, average="macro"))


def test_bert_with_our_loss_is_not_given_the_labels():
    ids, labels = token_data(96)
    seen = []
    model = tiny_bert()
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(sorted(kwargs)), with_kwargs=True)
    t = nbt.Trainer(model, dict_loader(ids, labels), loss="cross_entropy", store=None)
    assert t.loss_from == "ours"
    t.start(epochs=1)
    t.wait()
    assert seen[-1] == ["attention_mask", "input_ids"]


def test_gpt2_trains_as_a_causal_lm_with_perplexity_and_next_token_accuracy():
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, 50, (320,), generator=g).tolist()
    seqs = torch.stack([torch.arange(s, s + 16) % 50 for s in starts])  # counting: next token = this + 1
    train = DataLoader([{"input_ids": s} for s in seqs[:256]], batch_size=32)
    val = DataLoader([{"input_ids": s} for s in seqs[256:]], batch_size=32)
    t = nbt.Trainer(tiny_gpt2(), train, val, store=None)
    assert t.task == "causal_lm" and t.loss_from == "model"
    run = t.start(epochs=3, lr=3e-3)
    t.wait()
    assert run.status == "finished", run.error
    first, last = run.epochs[0], run.epochs[-1]
    assert last["val_loss"] < first["val_loss"]
    assert last["val_perplexity"] == pytest.approx(np.exp(last["val_loss"]))
    preds, _ = predictions(t, val)
    pred = torch.cat(preds)[:, :-1].argmax(-1).reshape(-1).numpy()
    true = seqs[256:, 1:].reshape(-1).numpy()
    assert last["val_accuracy"] == pytest.approx(accuracy_score(true, pred))


# -- several inputs, tuple outputs, sample weights ----------------------------------------------

class TwoInputs(nn.Module):
    """A tabular model: numeric features and a categorical column (embedded)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(5, 4)
        self.net = nn.Sequential(nn.Linear(8 + 4, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x_num, x_cat):
        return self.net(torch.cat([x_num, self.emb(x_cat)], dim=1))


def tabular(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_num = torch.randn(n, 8, generator=g)
    x_cat = torch.randint(0, 5, (n,), generator=g)
    y = ((x_num[:, 0] > 0).long() + (x_cat >= 3).long())  # 0, 1, 2: needs both inputs
    return x_num, x_cat, y


def test_a_two_input_model_takes_the_first_two_elements_of_each_batch():
    x_num, x_cat, y = tabular()
    t = nbt.Trainer(TwoInputs(), (x_num[:500], x_cat[:500], y[:500]), (x_num[500:], x_cat[500:], y[500:]),
                    store=None)
    assert t.layout.kind == "tuple" and t.layout.n_inputs == 2
    run = t.start(epochs=8, lr=1e-2)
    t.wait()
    assert run.status == "finished", run.error
    assert run.epochs[-1]["val_accuracy"] > 0.8


def test_keras_style_sample_weights_for_a_one_input_model_weight_the_loss():
    x = torch.randn(64, 4)
    y = torch.randint(0, 2, (64,))
    w = torch.zeros(64)
    w[:8] = 1.0
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    t = nbt.Trainer(model, (x, y, w), store=None, diagnostics=False)
    assert t.layout.weighted and t.layout.n_inputs == 1
    result = t.step(model, (x, y, w))
    per = nn.functional.cross_entropy(model(x), y, reduction="none")
    assert result.loss.item() == pytest.approx(float((per * w).sum() / 64))


class ReturnsTuple(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(64, 32), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        features = self.body(x)
        return self.head(features), features


def test_a_model_returning_logits_and_features_is_scored_on_the_logits(small_digits):
    train, val = small_digits
    t = nbt.Trainer(ReturnsTuple(), train, val, store=None)
    assert t.task == "classification"
    run = t.start(epochs=5, lr=3e-3)
    t.wait()
    assert run.status == "finished", run.error
    assert run.epochs[-1]["val_accuracy"] > 0.7


def test_integer_class_ids_of_any_dtype_train(small_digits, make_mlp):
    (x, y), (xv, yv) = small_digits
    for dtype in (torch.int32, torch.int16, torch.uint8):
        t = nbt.Trainer(make_mlp(64, 10), (x, y.to(dtype)), (xv, yv.to(dtype)), store=None)
        run = t.start(epochs=2)
        t.wait()
        assert run.status == "finished", (dtype, run.error)


# -- per position and multi-label ----------------------------------------------------------

class Tagger(nn.Module):
    def __init__(self, vocab=30, tags=4):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab, 16)
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        self.out = nn.Linear(32, tags)

    def forward(self, tokens):
        h, _ = self.lstm(self.emb(tokens))
        return self.out(h)  # (N, T, C)


def tagging(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 30, (n, 12), generator=g)
    tags = tokens % 4
    tags[:, -3:] = -100  # padding: ignored
    return tokens, tags


def test_an_lstm_tagger_is_scored_per_position_ignoring_minus_100_like_sklearn():
    tokens, tags = tagging()
    t = nbt.Trainer(Tagger(), (tokens[:240], tags[:240]), (tokens[240:], tags[240:]), store=None)
    assert t.task == "classification" and t.task_info.per_position
    run = t.start(epochs=6, lr=1e-2)
    t.wait()
    assert run.status == "finished", run.error
    assert run.epochs[-1]["val_accuracy"] > run.epochs[0]["val_accuracy"]
    with torch.no_grad():
        logits = t.model.eval()(tokens[240:])
    keep = tags[240:] != -100
    pred = logits.argmax(-1)[keep].numpy()
    true = tags[240:][keep].numpy()
    assert run.epochs[-1]["val_accuracy"] == pytest.approx(accuracy_score(true, pred))
    assert run.epochs[-1]["val_f1"] == pytest.approx(f1_score(true, pred, average="macro"))


def test_a_multilabel_mlp_is_inferred_and_scored_like_sklearn():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 10, generator=g)
    y = torch.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0, x[:, 3] > 0.5, x[:, 4] < -0.5], 1).float()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
    t = nbt.Trainer(model, (x[:400], y[:400]), (x[400:], y[400:]), store=None)
    assert t.task == "multilabel" and t.loss_name == "bce"
    run = t.start(epochs=10, lr=1e-2)
    t.wait()
    assert run.status == "finished", run.error
    assert run.epochs[-1]["val_f1"] > run.epochs[0]["val_f1"]
    with torch.no_grad():
        pred = (t.model.eval()(x[400:]) > 0).int().numpy()
    true = y[400:].int().numpy()
    rec = run.epochs[-1]
    assert rec["val_accuracy"] == pytest.approx(accuracy_score(true, pred))  # subset accuracy
    assert rec["val_f1"] == pytest.approx(f1_score(true, pred, average="macro", zero_division=0))


# -- a custom step, a stream ---------------------------------------------------------------------

def test_a_custom_step_returning_loss_outputs_targets_gets_metrics_and_the_rest(small_digits, make_mlp):
    calls = []

    def step(model, batch):
        x, y = batch
        calls.append(len(x))
        logits = model(x * 1.0)
        return nn.functional.cross_entropy(logits, y, label_smoothing=0.1), logits, y

    train, val = small_digits
    t = nbt.Trainer(make_mlp(64, 10), train, val, step=step, store=None)
    assert t.task == "classification" and t.loss_from == "step"
    run = t.start(epochs=4, lr=3e-3, grad_clip=1.0)
    t.wait()
    assert run.status == "finished", run.error
    assert calls and run.epochs[-1]["val_accuracy"] > 0.6
    assert max(run.history.columns("grad_norm")["grad_norm"]) > 0


def test_a_custom_step_returning_only_a_loss_reports_the_loss(small_digits, make_mlp):
    train, val = small_digits
    t = nbt.Trainer(make_mlp(64, 10), train, val, step=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
                    store=None)
    assert t.task == "custom"
    run = t.start(epochs=2)
    t.wait()
    assert run.status == "finished", run.error
    assert set(run.epochs[-1]) == {"epoch", "train_loss", "val_loss", "grad_norm", "lr", "seconds"}


class Stream(IterableDataset):
    """A one-shot stream: iterating it a second time yields nothing, like a generator."""

    def __init__(self, x, y):
        self.x, self.y = x, y
        self.started = 0

    def __iter__(self):
        self.started += 1
        if self.started > 1:
            return iter(())
        return iter(zip(self.x, self.y))


class Repeating(IterableDataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y))


def test_a_one_shot_stream_is_not_consumed_when_the_trainer_is_made(small_digits, make_mlp):
    (x, y), val = small_digits
    stream = Stream(x, y)
    t = nbt.Trainer(make_mlp(64, 10), DataLoader(stream, batch_size=32), val, store=None)
    run = t.start(epochs=1)
    t.wait()
    assert run.status == "finished", run.error
    assert run.steps_per_epoch is None
    assert run.step == len(x) // 32  # every example of the stream, read once


def test_an_iterable_dataset_trains_for_epochs_of_unknown_length(small_digits, make_mlp):
    (x, y), val = small_digits
    t = nbt.Trainer(make_mlp(64, 10), Repeating(x, y), val, store=None)
    run = t.start(epochs=3, batch_size=64)
    t.wait()
    assert run.status == "finished", run.error
    assert run.steps_per_epoch is None and run.step == 3 * len(x) // 64
    from nb_trainer.ui.status import progress
    assert "ETA" not in progress(run)[2]


# -- errors at the door ----------------------------------------------------------------------

def test_a_dict_batch_without_a_target_key_lists_its_keys():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, features):
            return self.lin(features)

    batches = {"features": torch.randn(10, 3), "answer": torch.randint(0, 2, (10,))}
    with pytest.raises(ValueError, match="'features', 'answer'.*target="):
        nbt.Trainer(M(), batches, store=None)
    t = nbt.Trainer(M(), batches, target="answer", store=None)
    assert t.task == "classification"


def test_a_tuple_that_fits_neither_the_signature_nor_sample_weights_is_refused(make_mlp):
    x, y = torch.randn(10, 64), torch.randint(0, 10, (10,))
    with pytest.raises(ValueError, match="fits neither.*inputs="):
        nbt.Trainer(make_mlp(64, 10), (x, x, x, y), store=None)
    with pytest.raises(ValueError, match="inputs=2"):  # a third element that is no weight vector
        nbt.Trainer(make_mlp(64, 10), (x, y, x), store=None)


def test_a_step_returning_something_else_is_refused_at_the_door(small_digits, make_mlp):
    train, _ = small_digits
    with pytest.raises(TypeError, match="step returned a dict"):
        nbt.Trainer(make_mlp(64, 10), train, step=lambda m, b: {"loss": 1}, store=None)
    with pytest.raises(ValueError, match=r"loss of shape \(64,\)|loss of shape"):
        nbt.Trainer(make_mlp(64, 10), train, step=lambda m, b: nn.functional.cross_entropy(
            m(b[0]), b[1], reduction="none"), store=None)


def test_val_data_the_model_cannot_run_on_is_an_error_at_the_door(small_digits, make_mlp):
    train, (xv, yv) = small_digits
    with pytest.raises(ValueError, match="val batch"):
        nbt.Trainer(make_mlp(64, 10), train, (xv[:, :10], yv), store=None)


def test_a_custom_loss_returning_a_vector_is_refused_at_the_door(small_digits, make_mlp):
    train, _ = small_digits
    with pytest.raises(ValueError, match="loss=per_example.*not one number"):
        def per_example(out, y):
            return nn.functional.cross_entropy(out, y, reduction="none")
        nbt.Trainer(make_mlp(64, 10), train, loss=per_example, store=None)


def test_nested_batches_move_to_the_device_and_leave_strings_alone():
    from nb_trainer.data import to_device
    batch = {"a": [torch.zeros(2, dtype=torch.float64), ("text", torch.ones(2, dtype=torch.int32))], "id": "x7"}
    moved = to_device(batch, "cpu", torch.float32)
    assert moved["a"][0].dtype == torch.float32 and moved["a"][1][0] == "text"
    assert moved["a"][1][1].dtype == torch.int32 and moved["id"] == "x7"


def test_lr_find_and_evaluate_run_through_the_step_on_dict_batches():
    ids, labels = token_data(192)
    t = nbt.Trainer(tiny_bert(), dict_loader(ids, labels), dict_loader(ids[:64], labels[:64]), store=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = t.lr_find(num_steps=30)
    assert result.suggestion > 0
    scores = t.evaluate()
    assert set(scores) >= {"loss", "accuracy", "f1"}


# -- data checks and probes on the new shapes --------------------------------------------------

def test_nan_in_one_tensor_of_a_dict_batch_is_named_and_ends_the_run_failed():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(4, 2)

        def forward(self, num, extra):
            return self.a(num) + self.b(extra)

    g = torch.Generator().manual_seed(0)
    data = {"num": torch.randn(40, 3, generator=g), "extra": torch.randn(40, 4, generator=g),
            "label": torch.randint(0, 2, (40,), generator=g)}
    data["extra"][5, 1] = float("nan")
    t = nbt.Trainer(M(), data, store=None)
    run = t.start(epochs=1)
    t.wait()
    assert run.status == "failed"
    w = run.warning("bad_input_data")
    assert w is not None and "batch['extra']" in w.message and "column 1" in w.message


@pytest.mark.parametrize("case", ["tag id beyond the outputs", "multi-label target 2"])
def test_labels_that_do_not_fit_the_new_tasks_are_label_mismatch(case):
    if case.startswith("tag"):
        tokens, tags = tagging(40)
        tags[0, 0] = 7  # 4 outputs
        t = nbt.Trainer(Tagger(), (tokens, tags), store=None)
        needle = "from 0 to 7"
    else:
        x = torch.randn(40, 10)
        y = (torch.rand(40, 4) > 0.5).float()
        y[3, 2] = 2.0
        torch.manual_seed(0)
        t = nbt.Trainer(nn.Sequential(nn.Linear(10, 4)), (x, y), task="multilabel", store=None)
        needle = "not all 0 or 1"
    run = t.start(epochs=1)
    t.wait()
    assert run.status == "failed"
    assert needle in run.warning("label_mismatch").message


def test_probes_take_update_ratios_on_dict_batches_and_dead_units_on_a_sequence_model():
    ids, labels = token_data(128)
    t = nbt.Trainer(tiny_bert(), dict_loader(ids, labels), store=None)
    run = t.start(epochs=2)
    t.wait()
    assert run.status == "finished", run.error
    ratios = [p["update_ratio"] for p in run.probes if p["update_ratio"]]
    assert ratios and all(v > 0 for v in ratios[0].values())

    class SeqRelu(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb = nn.Embedding(30, 8)
            self.ff = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

        def forward(self, tokens):
            return self.ff(self.emb(tokens))

    tokens, tags = tagging(64)
    t = nbt.Trainer(SeqRelu(), (tokens, tags), store=None)
    run = t.start(epochs=1)
    t.wait()
    dead = [p["dead_relu"] for p in run.probes if p["dead_relu"]]
    assert dead and dead[0]["ff.1"]["units"] == 16  # units are the last dimension of (N, T, 16)
