"""A sweep around its jobs: its plan (`plan`), its progress lines with one ETA (`progress`) and the
report at its end (`report`). Torch-free; Hydra reaches it through normexp.cli.sweep_report."""
