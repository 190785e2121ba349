"""The training loop and the curvature probe on a GPU, compared with the CPU (run where CUDA is available).

Prints, per device: where the model trained, the realised lr/momentum per epoch (must follow the plan), the final
val accuracy, seconds per epoch, and lambda0 from the probe. Run: ``python bench/gpu_smoke.py``.
"""

from __future__ import annotations

import time

import torch

from phasetune.search_spaces.plan import build_plan
from phasetune.search_spaces.probes import estimate_curvature, probe_batch
from phasetune.workers.train import train
from phasetune.workers.workloads import build_workload

SCHEDULE = {"family": "phases", "phases": [{"lr": 0.3, "momentum": 0.0}, {"lr": 0.02, "momentum": 0.9}],
            "transition_epochs": [4]}


def main() -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}; cuda available: {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""))
    for device in devices:
        workload = build_workload("ps10", {"noise": 0.1}, seed=0).to(device)
        x, y = probe_batch(workload.train_x, workload.train_y, seed=0)
        curvature = estimate_curvature(workload.model, x, y, workload.loss_kind)
        plan = build_plan(SCHEDULE, 8, workload.steps_per_epoch)
        started = time.perf_counter()
        history = train(workload, plan, 8, order_seed=0)
        seconds = (time.perf_counter() - started) / len(history)
        param_device = next(workload.model.parameters()).device
        print(f"{device}: params on {param_device}, lambda0 {curvature.lambda0:.4f} ({curvature.iterations} iters), "
              f"{seconds:.3f} s/epoch, final val_accuracy {history[-1]['val_accuracy']:.3f}")
        print(f"  realised lr {[round(h['lr'], 4) for h in history]}")
        print(f"  realised momentum {[h['momentum'] for h in history]}")


if __name__ == "__main__":
    main()
