"""Settings: embedded defaults, overridden by imgq.toml, overridden by the command line.

Only the CLI reads the environment and files; the library receives a ``Settings``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path

from imgq.errors import UsageError

DEFAULT_RECIPES: dict[str, dict[str, str]] = {
    # artifact name -> operation chain; every chain of a recipe runs from one decode.
    "default": {"thumb": "thumb", "web": "web"},
}


@dataclasses.dataclass
class SlurmSettings:
    """``[slurm]`` in imgq.toml: what each agent's job asks Slurm for, as srun's and
    sbatch's options of the same names (None: the site's default). ``--slurm-arg`` on the
    command line comes after these, so it wins."""

    partition: str | None = None  # --partition
    time: str | None = None  # --time: Slurm's formats, "30", "2:00:00", "1-12"
    account: str | None = None  # --account
    cpus_per_task: int | None = None  # --cpus-per-task: the agent's slots default to it
    mem: str | None = None  # --mem: memory per agent, "4G", "500M" (a number: megabytes)


_SLURM_KEYS = {"partition": str, "time": str, "account": str, "cpus_per_task": int, "mem": str}


@dataclasses.dataclass
class Settings:
    db: Path = Path("imgq.db")
    store: Path | None = None  # artifacts; default: "<db stem>-store" beside the database
    max_pixels: int = 250_000_000
    default_owner: str = "unknown"
    settle: float = 2.0
    lease_seconds: float = 60.0
    max_attempts: int = 5
    backoff_seconds: float = 5.0
    backoff_max_seconds: float = 3600.0
    jpeg_quality: int = 85
    split_pixels: int = 40_000_000  # with --split, larger images become stripe jobs
    split_stripes: int = 4
    recipes: dict[str, dict[str, str]] = dataclasses.field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_RECIPES.items()}
    )
    destinations: list[str] = dataclasses.field(default_factory=list)
    # the recipes `imgq enqueue` applies when given no --recipe or --op
    enqueue: list[str] = dataclasses.field(default_factory=lambda: ["default"])
    slurm: SlurmSettings = dataclasses.field(default_factory=SlurmSettings)  # imgq work --slurm
    config_path: Path | None = None

    @property
    def store_dir(self) -> Path:
        if self.store is not None:
            return self.store
        return self.db.parent / (self.db.stem + "-store")


DEFAULTS = Settings()  # the embedded defaults, read (never changed) where help texts name them

_SCALARS = {
    "store": Path,
    "max_pixels": int,
    "default_owner": str,
    "settle": float,
    "lease_seconds": float,
    "max_attempts": int,
    "backoff_seconds": float,
    "backoff_max_seconds": float,
    "jpeg_quality": int,
    "split_pixels": int,
    "split_stripes": int,
}


def _slurm_settings(config: Path, table) -> SlurmSettings:
    if not isinstance(table, dict):
        raise UsageError(f'{config}: [slurm] must be a table, e.g. [slurm] partition = "batch"')
    out = SlurmSettings()
    for key, value in table.items():
        if key not in _SLURM_KEYS:
            raise UsageError(f"{config}: [slurm] has unknown setting {key!r}; known: {', '.join(_SLURM_KEYS)}")
        if key == "cpus_per_task":
            if type(value) is not int or value < 1:
                raise UsageError(f"{config}: [slurm] cpus_per_task = {value!r} is not a whole number of CPUs (1 or more)")
        elif key == "mem" and type(value) is int and value > 0:
            value = str(value)  # megabytes, as Slurm reads a bare number
        elif not isinstance(value, str) or not value.strip() or value.startswith("-"):
            raise UsageError(f'{config}: [slurm] {key} = {value!r} must be a non-empty string, e.g. {key} = "{_SLURM_EXAMPLES[key]}"')
        setattr(out, key, value)
    return out


_SLURM_EXAMPLES = {"partition": "batch", "time": "2:00:00", "account": "photolab", "mem": "4G"}


def find_config(explicit: str | None) -> Path | None:
    """The config file in force: --config, else $IMGQ_CONFIG, else ./imgq.toml if present."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("IMGQ_CONFIG")
    if env:
        return Path(env)
    here = Path("imgq.toml")
    return here if here.is_file() else None


def load_settings(config: Path | None = None, db: str | None = None) -> Settings:
    """Settings from the defaults and an optional imgq.toml.

    The file has top-level keys matching ``Settings`` fields, a ``[recipes.NAME]`` table
    per recipe (artifact = "chain", plus options such as ``on_no_faces = "skip"``),
    ``enqueue = [...]`` (the recipes ``imgq enqueue`` applies by default) and
    ``destinations = [...]`` for archive/collect, and a ``[slurm]`` table (``SlurmSettings``)
    for the agents ``imgq work --slurm`` starts.
    """
    s = Settings()
    if config is not None:
        try:
            data = tomllib.loads(config.read_text())
        except FileNotFoundError:
            raise UsageError(f"config file {config} does not exist")
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"config file {config}: {e}")
        s.config_path = config
        for key, value in data.items():
            if key in _SCALARS:
                try:
                    setattr(s, key, _SCALARS[key](value))
                except (TypeError, ValueError):
                    raise UsageError(f"{config}: {key} = {value!r} is not a valid {_SCALARS[key].__name__}")
            elif key == "recipes":
                if not isinstance(value, dict):
                    raise UsageError(f"{config}: [recipes] must be a table of tables")
                for name, chains in value.items():
                    if not isinstance(chains, dict) or not all(isinstance(c, str) for c in chains.values()):
                        raise UsageError(f'{config}: [recipes.{name}] must map artifact names to chains, e.g. thumb = "fit:120x90"')
                    s.recipes[name] = dict(chains)
            elif key == "destinations":
                s.destinations = [str(d) for d in value]
            elif key == "enqueue":
                if not isinstance(value, list) or not value or not all(isinstance(n, str) for n in value):
                    raise UsageError(f'{config}: enqueue must be a list of recipe names, e.g. enqueue = ["default", "people"]')
                s.enqueue = list(dict.fromkeys(value))
            elif key == "slurm":
                s.slurm = _slurm_settings(config, value)
            elif key == "db":
                s.db = Path(value)
            else:
                raise UsageError(f"{config}: unknown setting {key!r}")
        unknown = [n for n in s.enqueue if n not in s.recipes]
        if unknown:
            raise UsageError(f"{config}: enqueue names unknown recipe(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(s.recipes))}")
    if db is not None:
        s.db = Path(db)
    elif os.environ.get("IMGQ_DB"):
        s.db = Path(os.environ["IMGQ_DB"])
    return s
