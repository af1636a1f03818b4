"""How soon a fresh kernel's first run is plotted: from its first logged steps to the first drawn frame.

Each repeat starts a new python3 kernel (jupyter_client), builds a Trainer and its panel on the
digits MLP, starts a run and records, in the kernel, when the run's history got its first steps
and when the plot first showed a drawn figure (not the placeholder). Target: within 1 s.

    python benchmarks/bench_first_frame.py            # 3 fresh kernels
    python benchmarks/bench_first_frame.py --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CELL = """
import json, time, torch
torch.set_num_threads(1)
from sklearn.datasets import load_digits
d = load_digits()
X, y = torch.tensor(d.data / 16, dtype=torch.float32), torch.tensor(d.target)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
import nb_trainer as nbt
t0 = time.monotonic()
t = nbt.Trainer(model, (X[:1200], y[:1200]), (X[1200:], y[1200:]), store=None, epochs=EPOCHS, batch_size=16)
p = t.panel()
drawn = []
p.plot.observe(lambda change: drawn.append(time.monotonic()) if p._real_frame else None, names="value")
run = t.start()
first_steps = None
while time.monotonic() - t0 < 60 and (not drawn or first_steps is None):
    if first_steps is None and len(run.history):
        first_steps = time.monotonic()
    time.sleep(0.005)
t.stop(); t.wait()
print(json.dumps({"panel_to_first_steps": first_steps - t0, "first_steps_to_frame": drawn[0] - first_steps,
                  "run_ended_after_first_steps": run.ended_at - (time.time() - (time.monotonic() - first_steps)),
                  "renderer": p._renderer.mode}))
"""


def one(epochs: int) -> dict:
    from jupyter_client.manager import start_new_kernel
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as cwd:
        km, kc = start_new_kernel(kernel_name="python3", cwd=cwd, env=env)
        try:
            msg_id = kc.execute(CELL.replace("EPOCHS", str(epochs)))
            out = ""
            while True:
                msg = kc.get_iopub_msg(timeout=120)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "stream":
                    out += msg["content"]["text"]
                elif msg["msg_type"] == "error":
                    raise RuntimeError("\n".join(msg["content"]["traceback"]))
                elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    break
            return json.loads(out.strip().splitlines()[-1])
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    args = p.parse_args(argv)
    results = []
    for i in range(args.repeats):
        r = one(args.epochs)
        results.append(r)
        print(f"kernel {i + 1}: first steps {r['panel_to_first_steps']:.2f} s after the panel was built, "
              f"first drawn frame {r['first_steps_to_frame']:.2f} s after them ({r['renderer']})")
    gaps = [r["first_steps_to_frame"] for r in results]
    print(f"\nfirst steps to first drawn frame: median {statistics.median(gaps):.2f} s, "
          f"range {min(gaps):.2f}-{max(gaps):.2f} s (target: within 1 s)")


if __name__ == "__main__":
    sys.exit(main())
