"""Where the package's configuration lives: the one owner of conf/'s location (no imports, so
every module may use it)."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
