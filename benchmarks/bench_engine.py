"""Throughput of the Trainer's engine against a bare hand-written PyTorch loop.

Three reference workloads:

  digits  MLP 64-256-256-10 on scikit-learn's digits (1497 train / 300 val), Adam, batch 64
  random  MLP 784-512-512-10 on 20k random samples (18k train / 2k val), Adam, batch 128
  bert    a tiny transformers BertForSequenceClassification (2 layers, hidden 32, built from a
          config) on dict batches {input_ids, attention_mask, labels} from a DataLoader, batch 32,
          trained on the model's own loss; the bare loop does ``model(**batch).loss``

The bare loop does forward, backward, step, zero_grad on batches drawn with a
``randperm`` over in-memory tensors (the Trainer's batching), and the same
per-epoch validation (loss and a confusion matrix over the val split, batches
of 1024, one host sync). The Trainer runs headless (``store=None``). The two
alternate in one process, the order flipping each pair, and the figure is the
median of the per-pair throughput ratios (the machines are shared: a single
pair means little).

  python benchmarks/bench_engine.py                 # both workloads, Trainer vs bare
  python benchmarks/bench_engine.py --quick         # a short smoke run
  python benchmarks/bench_engine.py --mode diagnostics   # Trainer(diagnostics=True) vs (False)
  python benchmarks/bench_engine.py --device cuda --threads 4
  python benchmarks/bench_engine.py --profile       # cProfile of one Trainer run (hot path)
  python benchmarks/bench_engine.py --mode bare --schedule cosine --warmup 0.1
        # both sides follow a cosine schedule with warmup (the bare loop with torch.optim.lr_scheduler)
  python benchmarks/bench_engine.py --device cuda --precision 16
        # both sides in float16 autocast with a GradScaler (bf16: autocast only)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler

# set from the command line: the schedule and precision both sides train with
RECIPE = {"schedule": "constant", "warmup": 0.0, "precision": "32"}

VAL_BATCH = 1024  # the engine's evaluation batch


@dataclass
class Workload:
    name: str
    model: nn.Module
    train: tuple
    val: tuple
    n_classes: int
    batch_size: int
    epochs: int
    lr: float = 1e-3
    kind: str = "tensors"   # "tensors": (X, y) pairs; "dict": DataLoaders of dict batches


def mlp(sizes, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def digits_workload(epochs: int) -> Workload:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0).clamp(min=1e-6)
    y = torch.tensor(d.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return Workload("digits 64-256-256-10, batch 64", mlp([64, 256, 256, 10]),
                    (x[:-300], y[:-300]), (x[-300:], y[-300:]), 10, 64, epochs)


def random_workload(epochs: int) -> Workload:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, 784, generator=g)
    y = torch.randint(0, 10, (20_000,), generator=g)
    return Workload("random 784-512-512-10, batch 128", mlp([784, 512, 512, 10]),
                    (x[:18_000], y[:18_000]), (x[18_000:], y[18_000:]), 10, 128, epochs)


def bert_workload(epochs: int) -> Workload:
    import transformers
    transformers.logging.set_verbosity_error()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (1280, 24), generator=g)
    labels = (ids == 7).any(1).long()
    items = [{"input_ids": ids[i], "attention_mask": torch.ones_like(ids[i]), "labels": labels[i]}
             for i in range(len(ids))]
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=2)
    model = transformers.BertForSequenceClassification(cfg)
    from torch.utils.data import DataLoader
    train = DataLoader(items[:1024], batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(items[1024:], batch_size=64)
    return Workload("tiny BERT on dict batches, batch 32", model, train, val, 2, 32, epochs, lr=1e-3, kind="dict")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the bare loop ------------------------------------------------------------------

def validate(model, xv, yv, n_classes):
    """Val loss, accuracy and macro precision/recall/F1 from a confusion matrix: what the
    Trainer's epoch record holds."""
    model.eval()
    loss_sum, n = None, 0
    cm = torch.zeros(n_classes * n_classes, dtype=torch.long, device=xv.device)
    with torch.no_grad():
        for i in range(0, len(xv), VAL_BATCH):
            xb, yb = xv[i:i + VAL_BATCH], yv[i:i + VAL_BATCH]
            out = model(xb)
            batch_loss = F.cross_entropy(out, yb) * len(xb)
            loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
            n += len(xb)
            cm += torch.bincount(yb * n_classes + out.argmax(-1), minlength=n_classes * n_classes)
    model.train()
    cm = cm.view(n_classes, n_classes)
    tp, true_n, pred_n = torch.stack([cm.diagonal(), cm.sum(1), cm.sum(0)]).tolist()  # one host sync
    present = [c for c in range(n_classes) if true_n[c] or pred_n[c]]
    precision = [tp[c] / pred_n[c] if pred_n[c] else 0.0 for c in present]
    recall = [tp[c] / true_n[c] if true_n[c] else 0.0 for c in present]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall)]
    k = max(len(present), 1)
    return {"val_loss": float(loss_sum) / n, "val_accuracy": sum(tp) / n,
            "val_precision": sum(precision) / k, "val_recall": sum(recall) / k, "val_f1": sum(f1) / k}


def validate_dicts(model, val, n_classes, device):
    """The same record as :func:`validate`, over a DataLoader of dict batches (the model's own loss)."""
    model.eval()
    loss_sum, n = None, 0
    cm = torch.zeros(n_classes * n_classes, dtype=torch.long, device=device)
    with torch.no_grad():
        for batch in val:
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch)
            yb = batch["labels"]
            batch_loss = out.loss * len(yb)
            loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
            n += len(yb)
            cm += torch.bincount(yb * n_classes + out.logits.argmax(-1), minlength=n_classes * n_classes)
    model.train()
    cm = cm.view(n_classes, n_classes)
    tp, true_n, pred_n = torch.stack([cm.diagonal(), cm.sum(1), cm.sum(0)]).tolist()
    return {"val_loss": float(loss_sum) / n, "val_accuracy": sum(tp) / n}


class BareRecipe:
    """The hand-written loop's schedule (torch.optim.lr_scheduler) and mixed precision (autocast, GradScaler)."""

    def __init__(self, opt, total_steps: int, device):
        sched, warm = RECIPE["schedule"], RECIPE["warmup"]
        self.scheduler = None
        if sched != "constant" or warm > 0:
            w = int(round(warm * total_steps))
            main = {"constant": lambda: lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0),
                    "cosine": lambda: lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps - w),
                    "linear": lambda: lr_scheduler.LinearLR(opt, 1.0, 0.0, total_iters=total_steps - w)}[sched]()
            self.scheduler = main if w == 0 else lr_scheduler.SequentialLR(
                opt, [lr_scheduler.LinearLR(opt, start_factor=1 / (w + 1), total_iters=w), main], milestones=[w])
        precision = RECIPE["precision"]
        self.dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(precision)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler("cuda") if precision == "16" else None
        self.opt = opt

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype) if self.dtype else contextlib.nullcontext()

    def backward_step(self, loss):
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()


def bare_dict_run(w: Workload, model, initial, device) -> tuple[int, float, float]:
    """The hand-written loop over dict batches: ``model(**batch).loss``, backward, step, zero_grad."""
    sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    model.load_state_dict(initial)
    opt = torch.optim.Adam(model.parameters(), lr=w.lr)
    recipe = BareRecipe(opt, w.epochs * len(w.train), device)
    model.train()
    steps = 0
    for _ in range(w.epochs):
        for batch in w.train:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with recipe.autocast():
                loss = model(**batch).loss
            recipe.backward_step(loss)
            steps += 1
        with recipe.autocast():
            validate_dicts(model, w.val, w.n_classes, device)
    sync(device)
    return steps, time.perf_counter() - t0, time.process_time() - c0


def bare_run(w: Workload, model, initial, train, val, device) -> tuple[int, float, float]:
    """Train ``epochs`` epochs from ``initial``; return (steps, wall seconds, CPU seconds)."""
    if w.kind == "dict":
        return bare_dict_run(w, model, initial, device)
    x, y = train
    xv, yv = val
    sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    model.load_state_dict(initial)
    opt = torch.optim.Adam(model.parameters(), lr=w.lr)
    recipe = BareRecipe(opt, w.epochs * -(-len(x) // w.batch_size), device)
    gen = torch.Generator().manual_seed(0)
    model.train()
    steps = 0
    for _ in range(w.epochs):
        order = torch.randperm(len(x), generator=gen).to(device)
        for i in range(0, len(x), w.batch_size):
            idx = order[i:i + w.batch_size]
            with recipe.autocast():
                loss = F.cross_entropy(model(x[idx]), y[idx])
            recipe.backward_step(loss)
            steps += 1
        with recipe.autocast():
            validate(model, xv, yv, w.n_classes)
    sync(device)
    return steps, time.perf_counter() - t0, time.process_time() - c0


# -- the Trainer ----------------------------------------------------------------------

def trainer_run(t, w: Workload, device) -> tuple[int, float, float]:
    sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    run = t.start(optimizer="adam", lr=w.lr, batch_size=w.batch_size, epochs=w.epochs, seed=0, **RECIPE)
    t.wait()
    sync(device)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    if run.status != "finished":
        raise RuntimeError(f"the Trainer's run ended {run.status}: {run.error or run.stop_reason}")
    return run.step, elapsed, cpu


def make_trainer(w: Workload, device, diagnostics: bool):
    import nb_trainer as nbt
    return nbt.Trainer(w.model, w.train, w.val, device=device, store=None, diagnostics=diagnostics)


# -- pairs ------------------------------------------------------------------------------

def alternate(a, b, pairs: int) -> list[tuple]:
    """Run ``a`` and ``b`` in pairs, flipping the order each pair.

    Per pair: (wall steps/s of a, of b, CPU steps/s of a, of b). CPU time (all
    threads of this process) is less disturbed by other jobs on a shared machine
    than wall time; on a GPU it means little (the host waits in a sync).
    """
    out = []
    for i in range(pairs):
        order = (a, b) if i % 2 == 0 else (b, a)
        rates = {}
        for fn in order:
            steps, seconds, cpu = fn()
            rates[fn] = (steps / seconds, steps / max(cpu, 1e-9))
        out.append((rates[a][0], rates[b][0], rates[a][1], rates[b][1]))
    return out


def summarize(label_a: str, label_b: str, pairs: list) -> dict:
    ratios = [p[1] / p[0] for p in pairs]
    cpu_ratios = [p[3] / p[2] for p in pairs]
    return {label_a: statistics.median(p[0] for p in pairs),
            label_b: statistics.median(p[1] for p in pairs),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "cpu_ratio": statistics.median(cpu_ratios),
            # best of each side: the least disturbed runs, a floor-noise estimate of the intrinsic cost
            "best_ratio": max(p[1] for p in pairs) / max(p[0] for p in pairs),
            "pairs": len(pairs)}


def bench_workload(w: Workload, args, device) -> dict:
    train = tuple(t.to(device) for t in w.train) if w.kind == "tensors" else w.train
    val = tuple(t.to(device) for t in w.val) if w.kind == "tensors" else w.val
    if args.mode in ("bare", "overall"):
        # "bare": the engine (the health diagnostics of issue 4 off) against the hand-written loop;
        # "overall": the Trainer as a user gets it (diagnostics on) against the same loop
        model = w.model.to(device)
        trainer = make_trainer(w, device, diagnostics=args.mode == "overall")
        initial = {k: v.clone() for k, v in trainer.initial_state.items()}
        a = lambda: bare_run(w, model, initial, train, val, device)  # noqa: E731
        b = lambda: trainer_run(trainer, w, device)  # noqa: E731
        labels = ("bare steps/s", "Trainer steps/s" if args.mode == "bare" else "Trainer+diagnostics steps/s")
    else:
        t_off = make_trainer(w, device, diagnostics=False)
        w_on = Workload(**{**w.__dict__, "model": mlp_copy(w.model)})
        t_on = make_trainer(w_on, device, diagnostics=True)
        a = lambda: trainer_run(t_off, w, device)  # noqa: E731
        b = lambda: trainer_run(t_on, w_on, device)  # noqa: E731
        labels = ("diagnostics=False steps/s", "diagnostics=True steps/s")
    a()  # warm-up: torch's first optimizer imports its compiler stack, allocators warm up
    b()
    pairs = alternate(a, b, args.pairs)
    return summarize(*labels, pairs)


def mlp_copy(model: nn.Module) -> nn.Module:
    import copy
    return copy.deepcopy(model)


def profile(w: Workload, device, sort: str, limit: int) -> None:
    import cProfile
    import pstats
    from nb_trainer import engine as engine_mod
    t = make_trainer(w, device, diagnostics=True)
    trainer_run(t, w, device)  # warm-up
    prof = cProfile.Profile()
    original = engine_mod.Engine.run

    def profiled(self):
        prof.enable()
        try:
            return original(self)
        finally:
            prof.disable()
    engine_mod.Engine.run = profiled
    try:
        steps, seconds, _ = trainer_run(t, w, device)
    finally:
        engine_mod.Engine.run = original
    print(f"\n== cProfile of one Trainer run: {w.name}: {steps} steps in {seconds:.2f} s (profiled)")
    pstats.Stats(prof).sort_stats(sort).print_stats(limit)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("all", "bare", "diagnostics", "overall"), default="all",
                   help="bare: hand-written loop vs Trainer(diagnostics=False) (the engine); diagnostics: "
                        "Trainer(diagnostics=False) vs True; overall: loop vs Trainer(diagnostics=True); "
                        "all (default): the three in turn")
    p.add_argument("--workload", choices=("digits", "random", "bert", "all"), default="all")
    p.add_argument("--pairs", type=int, default=11, help="alternating pairs (median taken; >= 5 for a figure)")
    p.add_argument("--quick", action="store_true", help="short smoke run: 3 pairs, 1-3 epochs")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--digits-epochs", type=int, default=20)
    p.add_argument("--random-epochs", type=int, default=2)
    p.add_argument("--bert-epochs", type=int, default=3)
    p.add_argument("--target", type=float, default=0.97, help="ratio the Trainer must keep")
    p.add_argument("--profile", action="store_true", help="print a cProfile of one Trainer run per workload")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--schedule", choices=("constant", "cosine", "linear"), default="constant",
                   help="the lr schedule both sides follow (the bare loop: torch.optim.lr_scheduler)")
    p.add_argument("--warmup", type=float, default=0.0, help="warmup fraction of the steps (both sides)")
    p.add_argument("--precision", choices=("32", "bf16", "16"), default="32",
                   help="autocast both sides (16: with a GradScaler; CUDA only)")
    args = p.parse_args(argv)
    RECIPE.update(schedule=args.schedule, warmup=args.warmup, precision=args.precision)
    if args.precision == "16" and not args.device.startswith("cuda"):
        p.error("--precision 16 needs --device cuda (float16 autocast with a GradScaler is CUDA's)")
    if args.quick:
        args.pairs = min(args.pairs, 3)
        args.digits_epochs = min(args.digits_epochs, 3)
        args.random_epochs = 1
        args.bert_epochs = 1
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here")

    workloads = []
    if args.workload in ("digits", "all"):
        workloads.append(digits_workload(args.digits_epochs))
    if args.workload in ("random", "all"):
        workloads.append(random_workload(args.random_epochs))
    if args.workload in ("bert", "all"):
        workloads.append(bert_workload(args.bert_epochs))

    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"mode {args.mode}, {args.pairs} pairs{' (quick)' if args.quick else ''}, schedule {args.schedule} "
          f"warmup {args.warmup:g}, precision {args.precision}")
    results = {}
    ok = True
    modes = ("bare", "diagnostics", "overall") if args.mode == "all" else (args.mode,)
    targets = {"bare": args.target, "diagnostics": args.target, "overall": None}  # overall: reported only
    for w in workloads:
        if args.profile:
            profile(w, device, "cumtime", 30)
            profile(w, device, "tottime", 20)
            continue
        for mode in modes:
            args.mode = mode
            r = bench_workload(w, args, device)
            results[f"{w.name}/{mode}"] = r
            labels = [k for k in r if k.endswith("steps/s")]
            target = targets[mode]
            verdict = "" if target is None else (" [target met]" if r["ratio"] >= target else " [target NOT met]")
            print(f"{w.name} ({w.epochs} epochs a run) {mode}: "
                  + ", ".join(f"{k} {r[k]:.1f}" for k in labels)
                  + f"; ratio {r['ratio']:.3f} (median of {r['pairs']} pairs, range {r['ratio_min']:.3f}"
                  f"-{r['ratio_max']:.3f}); CPU-time ratio {r['cpu_ratio']:.3f}; best-vs-best "
                  f"{r['best_ratio']:.3f}{verdict}")
            if target is not None:
                ok &= r["ratio"] >= target
    if results:
        print(f"targets (engine vs bare, diagnostics on vs off) >= {args.target}: {'met' if ok else 'NOT met'}"
              + (" (quick: a smoke run; runs this short are dominated by per-run setup, not a figure)"
                 if args.quick else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "threads": args.threads, "mode": args.mode,
                       "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
