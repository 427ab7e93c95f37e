"""A sweep around its jobs: its plan (`plan`), its progress lines with one ETA (`progress`), the
report at its end (`report`) and the launcher that runs its jobs as threads of one process
(`launcher`, hydra/launcher=threads). Hydra reaches the first three through normexp.cli.sweep_report."""
