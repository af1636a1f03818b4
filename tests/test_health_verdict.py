"""The verdict rules on scripted warnings: no training, one rule per test.

Each case is a list of warnings as the monitor raises them (code, fix) and
the run's config; the verdicts must group them by cause, never offer two
contradicting fixes, drop no-op fixes, and read what the runs before tried.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from nb_trainer import TrainConfig
from nb_trainer.health import verdict as V
from nb_trainer.health.warning import HealthWarning


def w(code, fix=None, severity="warning", message="seen", suggestion="do"):
    return HealthWarning(code=code, severity=severity, message=f"{code}: {message}", suggestion=suggestion,
                         fix=dict(fix or {}))


def cfg(**kw):
    return TrainConfig(**kw)


def run(config, *warnings, parent=None):
    return SimpleNamespace(config=config, initial_config=config, warnings=list(warnings), parent=parent)


# -- rule 1: one verdict per cause ------------------------------------------------------------

def test_codes_of_one_cause_become_one_verdict_with_one_fix():
    c = cfg(lr=1.0)
    vs = V.build([w("lr_too_high", {"lr": 0.1}), w("dead_relu", {"lr": 0.1}), w("loss_plateau", {"lr": 0.1})], c)
    assert len(vs) == 1
    v = vs[0]
    assert v.cause == "step_too_large" and v.codes[0] == "lr_too_high"
    assert set(v.codes) == {"lr_too_high", "dead_relu", "loss_plateau"} and v.fix == {"lr": 0.1}


def test_merged_fix_is_the_union_with_the_strongest_values():
    c = cfg(optimizer="momentum", lr=0.3, momentum=0.99)
    vs = V.build([w("loss_oscillation", {"lr": 0.1, "momentum": 0.9}),
                  w("exploding_gradients", {"lr": 0.03, "grad_clip": 1.0})], c)
    assert len(vs) == 1
    assert vs[0].primary.code == "exploding_gradients"
    assert vs[0].fix == {"lr": 0.03, "grad_clip": 1.0, "momentum": 0.9}


def test_dead_units_from_the_first_step_are_the_models_cause_not_the_lrs():
    vs = V.build([w("lr_too_high", {"lr": 0.1}), w("dead_relu", {})], cfg(lr=1.0))
    assert sorted(v.cause for v in vs) == ["model", "step_too_large"]


def test_a_plateau_without_a_fix_joins_the_cause_the_run_has():
    vs = V.build([w("lr_too_low", {"lr": 0.1}), w("loss_plateau", {})], cfg(lr=1e-5))
    assert len(vs) == 1 and vs[0].cause == "step_too_small" and vs[0].codes == ["lr_too_low", "loss_plateau"]


def test_a_plateau_alone_is_its_own_verdict():
    vs = V.build([w("loss_plateau", {})], cfg())
    assert len(vs) == 1 and vs[0].cause == "model" and vs[0].fix == {}


def test_regularisation_underfitting_takes_the_plateau_in():
    """The L1 0.05 case: loss_plateau 'lr=0.0001' and underfitting 'l1=0' are one cause, and its fix is L1 off."""
    c = cfg(optimizer="adamw", lr=1e-3, l1=0.05)
    vs = V.build([w("loss_plateau", {"l1": 0.0}), w("underfitting", {"l1": 0.0})], c)
    assert len(vs) == 1 and vs[0].cause == "regularisation" and vs[0].fix == {"l1": 0.0}
    assert vs[0].primary.code == "underfitting"


# -- rule 2: the data explains what training shows ------------------------------------------------

def test_unscaled_data_explain_exploding_gradients_and_offer_no_lr_fix():
    vs = V.build([w("unscaled_data", {}), w("exploding_gradients", {"lr": 0.001, "grad_clip": 1.0})], cfg(lr=0.01))
    assert len(vs) == 1 and vs[0].cause == "unscaled_data"
    assert vs[0].codes == ["unscaled_data", "exploding_gradients"] and vs[0].fix == {}


def test_probabilities_into_the_loss_explain_a_plateau():
    vs = V.build([w("probability_outputs", {}), w("loss_plateau", {}), w("underfitting", {})], cfg())
    assert len(vs) == 1 and vs[0].cause == "probability_outputs" and len(vs[0].codes) == 3


# -- rule 3: contradicting fixes are never offered side by side -------------------------------------

def test_lr_down_and_lr_up_are_not_both_offered_and_the_rising_loss_wins():
    c = cfg(lr=0.3)
    vs = V.build([w("lr_too_high", {"lr": 0.03}), w("lr_too_low", {"lr": 1.0})], c)
    assert len(vs) == 1
    v = vs[0]
    assert v.fix == {"lr": 0.03} and "lr_too_low" in v.codes and "lr_too_low" in v.set_aside
    assert "rose" in v.reason  # says why


def test_a_measured_still_run_beats_an_oscillation():
    c = cfg(lr=1e-4)
    vs = V.build([w("loss_oscillation", {"lr": 3e-5}), w("lr_too_low", {"lr": 1e-2})], c)
    assert len(vs) == 1 and vs[0].fix == {"lr": 1e-2} and "loss_oscillation" in vs[0].set_aside


def test_weight_decay_up_and_down_are_not_both_offered():
    c = cfg(weight_decay=0.1)
    vs = V.build([w("overfitting", {"weight_decay": 1.0, "patience": 3}),
                  w("underfitting", {"weight_decay": 0.001})], c)
    with_fix = [v for v in vs if v.fix]
    assert len(with_fix) == 1 and with_fix[0].cause == "regularisation"
    assert "overfitting" in with_fix[0].set_aside


def test_fixes_on_different_fields_both_stay():
    vs = V.build([w("overfitting", {"weight_decay": 1e-3}), w("class_imbalance", {})], cfg())
    assert [v.cause for v in vs] == ["memorising", "class_imbalance"]


# -- rule 4: no no-op fixes -----------------------------------------------------------------------

def test_a_fix_the_config_already_has_is_not_offered():
    vs = V.build([w("exploding_gradients", {"grad_clip": 1.0, "lr": 0.001})], cfg(lr=0.01, grad_clip=1.0))
    assert vs[0].fix == {"lr": 0.001}
    vs = V.build([w("underfitting", {"l1": 0.0})], cfg())
    assert vs[0].fix == {}


# -- rule 5: fixes that know what was tried --------------------------------------------------------

def test_an_lr_cut_that_overshot_is_halved_back_not_repeated():
    first = run(cfg(lr=1.0), w("lr_too_high", {"lr": 0.1}))
    second = run(cfg(lr=0.1), w("lr_too_low", {"lr": 1.0}), parent=first)
    (v,) = V.verdicts(second)
    assert v.cause == "step_too_small" and v.fix == {"lr": pytest.approx(0.32)}
    assert "between" in v.reason


def test_an_lr_fix_stays_inside_what_the_runs_so_far_bracket():
    """1e-3 diverged, 1e-4 and 3.2e-4 barely moved: the next try is between 3.2e-4 and 1e-3, not lr 1."""
    a = run(cfg(optimizer="sgd", lr=1e-3), w("nan_loss", {"lr": 1e-4, "grad_clip": 1.0}, severity="error"))
    b = run(cfg(optimizer="sgd", lr=1e-4, grad_clip=1.0), w("lr_too_low", {"lr": 3e-3}), parent=a)
    c = run(cfg(optimizer="sgd", lr=3.2e-4, grad_clip=1.0), w("lr_too_low", {"lr": 1.0}), parent=b)
    (v,) = V.verdicts(c)
    assert 3.2e-4 < v.fix["lr"] < 1e-3


def test_no_lr_is_offered_when_the_bracket_has_closed():
    a = run(cfg(lr=1e-3), w("lr_too_high", {"lr": 1e-4}))
    b = run(cfg(lr=6e-4), w("lr_too_low", {"lr": 1e-2}), parent=a)
    (v,) = V.verdicts(b)
    assert v.fix == {} and "no lr" in v.reason


def test_an_lr_cut_that_did_not_cure_escalates_and_says_so():
    first = run(cfg(optimizer="rmsprop", lr=0.3), w("lr_too_high", {"lr": 0.03}))
    second = run(cfg(optimizer="rmsprop", lr=0.03), w("lr_too_high", {"lr": 0.003}),
                 w("loss_oscillation", {"lr": 0.01}), parent=first)
    (v,) = V.verdicts(second)
    assert v.fix == {"lr": 0.003} and "did not cure" in v.reason


def test_two_config_changes_that_did_not_cure_point_at_the_model_or_data():
    a = run(cfg(lr=0.1), w("exploding_gradients", {"lr": 0.01, "grad_clip": 1.0}))
    b = run(cfg(lr=0.01, grad_clip=1.0), w("exploding_gradients", {"lr": 0.001}), parent=a)
    c = run(cfg(lr=0.001, grad_clip=1.0), w("exploding_gradients", {"lr": 0.0001}), parent=b)
    (v,) = V.verdicts(c)
    assert v.fix == {} and "model or the data" in v.reason


def test_weight_decay_raised_for_overfitting_then_underfitting_goes_halfway_back():
    first = run(cfg(), w("overfitting", {"weight_decay": 1e-3}))
    second = run(cfg(weight_decay=1e-3), w("underfitting", {"weight_decay": 0.0}), parent=first)
    (v,) = V.verdicts(second)
    assert v.fix == {"weight_decay": pytest.approx(1e-4)}


def test_a_first_run_has_no_history_to_read():
    (v,) = V.verdicts(run(cfg(lr=0.3), w("lr_too_high", {"lr": 0.03})))
    assert v.reason == "" and v.fix == {"lr": 0.03}


# -- order ------------------------------------------------------------------------------------------

def test_errors_first_then_data_then_training():
    vs = V.build([w("overfitting", {"weight_decay": 1e-3}), w("nan_loss", {"lr": 1e-4}, severity="error"),
                  w("class_imbalance", {})], cfg())
    assert [v.cause for v in vs] == ["step_too_large", "memorising", "class_imbalance"]
