"""The training wing: a job's lifecycle (conductor), the training and evaluation passes (engine,
bn_evaluation), the optimizer and schedule, where a job runs (runtime), progress lines and
experiment trackers. It writes run records through normexp.record and never imports the analysis."""
