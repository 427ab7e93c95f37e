"""A fault for the launcher tests, in every Python process started with this folder on PYTHONPATH
(a sweep and the jobs its launcher starts): with NORMEXP_HOLD_AT_STEP=N and NORMEXP_HOLD_MARKER=path,
a job whose model splits BN statistics over virtual devices writes the marker and stops before its
N-th training step until it is killed. The test kills the sweep once that has happened and the other
job has finished: events, not delays."""

import os

if os.environ.get("NORMEXP_HOLD_AT_STEP"):
    import time

    import normexp.train.runtime as runtime
    from normexp.nn.devices import PerDeviceBatchNorm2d

    _compiled = runtime.maybe_compiled

    def _held(flag, model, *args):
        forward = _compiled(flag, model, *args)
        if not any(isinstance(m, PerDeviceBatchNorm2d) for m in model.modules()):
            return forward
        steps = [0]

        def step(x):
            steps[0] += 1
            if steps[0] == int(os.environ["NORMEXP_HOLD_AT_STEP"]):
                open(os.environ["NORMEXP_HOLD_MARKER"], "w").close()
                while True:  # until the test kills the sweep
                    time.sleep(1)
            return forward(x)

        return step

    runtime.maybe_compiled = _held
