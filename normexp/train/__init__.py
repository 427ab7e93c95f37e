"""The training wing: a job's lifecycle (conductor), its epoch loop and per-epoch hooks (epochs), the
harness every training loop builds through (harness), the training and evaluation passes (engine,
step, bn_evaluation), the optimizer and schedule, where a job runs (runtime), progress lines and
experiment trackers. It writes run records through normexp.record and never imports the analysis."""
