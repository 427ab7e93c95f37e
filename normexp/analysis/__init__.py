"""The analysis wing: run records collected into tables (collect, tables, landscape,
bn_decomposition), the claim verdict and its text, figures and the HTML report. Torch-free: it
reads records and never imports the training wing."""
