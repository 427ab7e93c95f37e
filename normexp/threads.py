"""What a sweep's jobs share when they run as threads of one process (hydra/launcher=threads,
normexp.sweep.launcher), in one place. Plain threading primitives: no torch, no Hydra.

- GLOBAL_RNG: torch's global RNG; whatever draws from it (a seeded model's initialization, the
  layers packing builds) holds it (normexp.train.harness).
- CAPTURING: one CUDA graph capture at a time; entering one synchronizes the device and empties the
  allocator's cache, which another capture under way forbids (normexp.train.step).
- SHARED_PROCESS: set while several jobs share this process; a failed capture then stops the
  sweep (normexp.train.step.capture_failed).
- HYDRA_GATE and `holding`: Hydra's per-job state (HydraConfig) is process-wide, so a job holds
  the gate while Hydra sets it up and tears it down, and lets go of it while it trains.

A run's log takes the job's shared lines from the thread that trains it only: normexp.train.run_log.
"""

from __future__ import annotations

import threading

GLOBAL_RNG = threading.Lock()
CAPTURING = threading.Lock()
SHARED_PROCESS = threading.Event()
HYDRA_GATE = threading.Lock()
holding = threading.local()  # holding.gate: whether this thread holds HYDRA_GATE for its job's set-up

