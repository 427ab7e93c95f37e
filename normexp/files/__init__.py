"""General file handling: atomic writes (`atomic`) and advisory locks (`locks`); torch- and Hydra-free."""
