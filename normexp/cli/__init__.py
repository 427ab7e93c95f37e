"""Console entry points: normexp-train, normexp-analyze, and the sweep report callback."""
