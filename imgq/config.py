"""Settings: embedded defaults, overridden by one imgq.toml, overridden by the environment
and the command line.

The settings file in force is the first found of: --config, $IMGQ_CONFIG, ./imgq.toml,
$XDG_CONFIG_HOME/imgq/imgq.toml (default ~/.config/imgq/imgq.toml), /etc/imgq/imgq.toml.
Files are never merged: the first one found is the whole of the settings besides the
defaults (so what a file says is all there is to read, as with rclone's one config).
Every setting remembers where its value came from (``Settings.sources``) for `imgq config`.

Only the CLI reads the environment and files; the library receives a ``Settings``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import unicodedata
from pathlib import Path

from imgq.errors import UsageError

DEFAULT_RECIPES: dict[str, dict[str, str]] = {
    # artifact name -> operation chain; every chain of a recipe runs from one decode.
    # A video's thumb and web are stills of a representative frame; preview (a video
    # chain) is made for videos only, so a photo's default jobs keep their hash.
    "default": {"thumb": "thumb", "web": "web", "preview": "preview"},
    # the sizes a gallery's pages choose from (srcset), by their long side; `imgq publish`
    # enqueues it for the photos that lack it (not in `enqueue`, so the default recipe's
    # jobs keep their identity and nothing already made is made again)
    "gallery": {"gallery320": "fit:320x320", "gallery640": "fit:640x640", "gallery1280": "fit:1280x1280", "gallery1920": "fit:1920x1920"},
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


@dataclasses.dataclass(frozen=True)
class RouteRule:
    """One ``[[route]]`` of imgq.toml: what goes to ``to``. A missing selector selects
    everything: no ``artifacts`` = the original and every artifact (``original`` names
    the original), no ``owners`` = every photographer (compared in NFC), no ``recipes`` =
    every recipe (with ``recipes``, the artifacts those recipes made, and the original
    of a file one of them processed). An empty list selects nothing: ``artifacts = []``
    names a destination that takes only what the route command sends there."""

    to: str
    artifacts: tuple[str, ...] | None = None
    owners: tuple[str, ...] | None = None
    recipes: tuple[str, ...] | None = None


_ROUTE_KEYS = ("to", "artifacts", "owners", "recipes")


def _route_rules(config: Path, value) -> list[RouteRule]:
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise UsageError(f'{config}: route must be an array of tables: [[route]] to = "/mnt/archive" artifacts = ["original"]')
    rules = []
    for n, table in enumerate(value, start=1):
        unknown = [k for k in table if k not in _ROUTE_KEYS]
        if unknown:
            raise UsageError(f"{config}: route {n} has unknown setting(s) {', '.join(map(repr, unknown))}; known: {', '.join(_ROUTE_KEYS)}")
        to = table.get("to")
        if not isinstance(to, str) or not to:
            raise UsageError(f'{config}: route {n} needs to = "DEST" (a folder or ssh://host/path)')
        lists = {}
        for key in ("artifacts", "owners", "recipes"):
            if key not in table:
                continue
            v = table[key]
            if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
                raise UsageError(f'{config}: route {n} ({to}): {key} must be a list of names, e.g. {key} = ["{_ROUTE_EXAMPLES[key]}"]')
            lists[key] = tuple(unicodedata.normalize("NFC", x) if key == "owners" else x for x in v)
        rules.append(RouteRule(to, **lists))
    return rules


_ROUTE_EXAMPLES = {"artifacts": "web", "owners": "Zoë Müller", "recipes": "default"}


_SLURM_KEYS = {"partition": str, "time": str, "account": str, "cpus_per_task": int, "mem": str}


@dataclasses.dataclass
class Settings:
    db: Path = Path("imgq.db")
    store: Path | None = None  # artifacts; default: "<db stem>-store" beside the database
    max_pixels: int = 250_000_000
    default_owner: str = "unknown"
    settle: float = 2.0
    lease_seconds: float = 60.0
    # A transient failure (a share or disk away, a host down) is retried for a time, not
    # a count: until it has been failing for retry_for seconds, with backoff from
    # backoff_seconds doubling up to backoff_max_seconds. max_attempts, when set (> 0),
    # also bounds the attempts; max_lost bounds the times a job's worker may be lost
    # (killed, hung, cut off) running it, so a photo that kills its worker cannot loop.
    max_attempts: int = 0
    retry_for: float = 86400.0
    max_lost: int = 5
    backoff_seconds: float = 5.0
    backoff_max_seconds: float = 300.0
    jpeg_quality: int = 85
    backup_keep: int = 5  # journal snapshots kept at each destination (imgq backup, imgq run)
    transfers: int = 4  # copies each archive destination makes at once (imgq archive, imgq run)
    split_pixels: int = 40_000_000  # with --split, larger images become stripe jobs
    split_stripes: int = 4
    split_seconds: float = 120.0  # with --split, longer videos become chunk jobs (split_stripes of them)
    recipes: dict[str, dict[str, str]] = dataclasses.field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_RECIPES.items()}
    )
    destinations: list[str] = dataclasses.field(default_factory=list)
    # archive runs this argv (never a shell) with FILE_ID DESTINATION PATH appended after
    # each verified copy of an original at a destination; failures are retried with backoff
    on_archived: list[str] = dataclasses.field(default_factory=list)
    on_archived_timeout: float = 60.0  # seconds before a running on_archived is killed (a failure)
    destinations: list[str] = dataclasses.field(default_factory=list)  # everything to each
    route: list[RouteRule] = dataclasses.field(default_factory=list)  # [[route]]: what goes where
    # argv of a command asked per file where its original and artifacts go (docs/archive.md)
    route_command: list[str] = dataclasses.field(default_factory=list)
    route_timeout: float = 30.0  # seconds the route command may take for one file
    # where `imgq run` publishes the gallery after each run (its --publish); relative to imgq.toml
    publish: Path | None = None
    # the recipes `imgq enqueue` applies when given no --recipe or --op
    enqueue: list[str] = dataclasses.field(default_factory=lambda: ["default"])
    slurm: SlurmSettings = dataclasses.field(default_factory=SlurmSettings)  # imgq work --slurm
    config_path: Path | None = None
    # how config_path was found ("--config", "$IMGQ_CONFIG", "./imgq.toml", ...)
    config_source: str | None = None
    # setting (or "recipes.NAME") -> where its value came from: the config file's path,
    # "$IMGQ_DB", "--db"; a setting not listed has its default
    sources: dict[str, str] = dataclasses.field(default_factory=dict)

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
    "retry_for": float,
    "max_lost": int,
    "backoff_seconds": float,
    "backoff_max_seconds": float,
    "jpeg_quality": int,
    "backup_keep": int,
    "transfers": int,
    "publish": Path,
    "split_pixels": int,
    "split_stripes": int,
    "split_seconds": float,
    "on_archived_timeout": float,
    "route_timeout": float,
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


SYSTEM_CONFIG = Path("/etc/imgq/imgq.toml")


def config_places() -> list[tuple[Path, str]]:
    """Where a settings file is looked for when neither --config nor $IMGQ_CONFIG names
    one, in order, each with how it is described (``./imgq.toml``, ``$XDG_CONFIG_HOME/...``)."""
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec: a relative value is to be ignored
        user, user_name = Path(xdg) / "imgq" / "imgq.toml", "$XDG_CONFIG_HOME/imgq/imgq.toml"
    else:
        user, user_name = Path("~/.config/imgq/imgq.toml").expanduser(), "~/.config/imgq/imgq.toml"
    return [(Path("imgq.toml"), "./imgq.toml"), (user, user_name), (SYSTEM_CONFIG, str(SYSTEM_CONFIG))]


def locate_config(explicit: str | None) -> tuple[Path | None, str | None]:
    """The settings file in force and how it was found: --config, else $IMGQ_CONFIG (both
    must exist), else the first of ``config_places()`` that is a file; (None, None) if none."""
    if explicit:
        return Path(explicit), "--config"
    env = os.environ.get("IMGQ_CONFIG")
    if env:
        return Path(env), "$IMGQ_CONFIG"
    for path, name in config_places():
        if path.is_file():
            return path, name
    return None, None


def find_config(explicit: str | None) -> Path | None:
    """The settings file in force (see ``locate_config``), or None."""
    return locate_config(explicit)[0]


def load_settings(config: Path | None = None, db: str | None = None, *, config_source: str | None = None) -> Settings:
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
        s.config_source = config_source
        where = os.path.abspath(config)
        for key, value in data.items():
            s.sources[key] = where
            if key in _SCALARS:
                try:
                    setattr(s, key, _SCALARS[key](value))
                except (TypeError, ValueError):
                    raise UsageError(f"{config}: {key} = {value!r} is not a valid {_SCALARS[key].__name__}")
                if key == "transfers" and s.transfers < 1:
                    raise UsageError(f"{config}: transfers = {value!r}: at least 1 copy at a time")
            elif key == "recipes":
                if not isinstance(value, dict):
                    raise UsageError(f"{config}: [recipes] must be a table of tables")
                for name, chains in value.items():
                    if not isinstance(chains, dict) or not all(isinstance(c, str) for c in chains.values()):
                        raise UsageError(f'{config}: [recipes.{name}] must map artifact names to chains, e.g. thumb = "fit:120x90"')
                    s.recipes[name] = dict(chains)
                    s.sources[f"recipes.{name}"] = where
            elif key == "destinations":
                s.destinations = [str(d) for d in value]
            elif key == "on_archived":
                if not isinstance(value, list) or not value or not all(isinstance(a, str) and a for a in value):
                    raise UsageError(f'{config}: on_archived must be a command as a list of strings (never a shell string), e.g. on_archived = ["/usr/local/bin/catalogue", "--add"]')
                s.on_archived = list(value)
            elif key == "route":
                s.route = _route_rules(config, value)
            elif key == "route_command":
                if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(a, str) and a for a in value):
                    raise UsageError(f'{config}: route_command must be a list (the program and its arguments, never run through a shell), e.g. route_command = ["/usr/local/bin/route-photo"]')
                s.route_command = list(value)
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
    s.sources.pop("recipes", None)  # recorded per recipe
    if db is not None:
        s.db = Path(db)
        s.sources["db"] = "--db"
    elif os.environ.get("IMGQ_DB"):
        s.db = Path(os.environ["IMGQ_DB"])
        s.sources["db"] = "$IMGQ_DB"
    return s


def effective(settings: Settings) -> list[dict]:
    """Every setting in force with where its value came from, for `imgq config`: dicts
    with ``key``, ``value`` (plain TOML-able data) and ``source`` ("default", "built-in"
    for a built-in recipe, the settings file's absolute path, "$IMGQ_DB", "--db").
    Recipes come one per ``recipes.NAME``; ``store`` shows the folder in force."""
    rows = []
    for field in dataclasses.fields(Settings):
        key = field.name
        if key in ("config_path", "config_source", "sources", "recipes"):
            continue
        value = getattr(settings, key)
        source = settings.sources.get(key, "default")
        if key == "store" and value is None:
            value, source = settings.store_dir, "default (beside the database)"
        if value is None:
            continue  # not set, and no default: a TOML file has no way to say "none"
        if dataclasses.is_dataclass(value):  # a table such as [slurm]: its keys that are set
            value = {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, list):
            value = [{k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(x).items() if v is not None} if dataclasses.is_dataclass(x) else x for x in value]
        rows.append({"key": key, "value": value, "source": source})
    for name, chains in settings.recipes.items():
        key = f"recipes.{name}"
        rows.append({"key": key, "value": dict(chains), "source": settings.sources.get(key, "built-in" if name in DEFAULT_RECIPES else "default")})
    return rows
