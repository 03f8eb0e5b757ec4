"""Run configs: one plain TOML file per run in ``configs/``, read once, used by every notebook.

A run names its model pair (``preset``) and every setting that decides a result: the harvest (corpus, layer,
token budget, exclusions), the crosscoder training per sparsity scheme, and the analysis settings of each stage
(evaluation sets, steering strengths, claim thresholds), fixed before any result is looked at. Notebooks take
``RUN = "organism-m"`` plus only what they own (bootstrap draws, threads, how many cards to draw), so a later
notebook cannot quietly change an upstream setting: a different setting is a different run, with its own name
and cache keys.

    preset = "organism-m"
    [harvest]
    n_docs = 3000
    [train.relu]
    n_steps = 1000

``extends = "organism-m"`` starts from another run and changes only the keys it lists (tables merge key by key).
``[train.<scheme>] from = "<folder or file>"`` imports that scheme's crosscoder from a checkpoint trained elsewhere
(``thinkdiff.formats``; a relative path is taken from the folder of the file that says it) instead of training it.
``smoke = true`` marks tiny parameters for tests: such a run computes everything and reports every claim and
target as "not tested". Keys missing from a section take the defaults below; unknown keys are errors.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import formats, pairs, paths, settings, stream
from .harvest import HarvestConfig
from .settings import RunConfigError, is_int
from .train import ORGANISM, PAPER, TrainConfig

CONFIG_DIR = paths.REPO_ROOT / "configs"
DEFAULT_RUN = pairs.DEFAULT_PAIR   # the run of the embedded default pair (what `make demo` runs)

# Harvest settings besides the HarvestConfig fields: which documents (see ``pipeline.documents``) and their defaults.
CORPUS_KEYS = ("n_docs", "teacher_fraction", "seed", "corpus")
CORPUS_DEFAULTS = {"n_docs": 3000, "teacher_fraction": 0.5, "seed": 1}   # seed: the corpus draw, not training
# How the activations reach training: "store" (harvest a whole store, then train) or "stream" (``thinkdiff.stream``:
# a bounded ring of shards, for stores larger than the disk), with ``[harvest.stream]`` holding its ``StreamConfig``.
MODE_DEFAULTS = {"mode": "store", "stream": {}}

# Each stage's analysis settings with their defaults (``settings``: a typed, documented dataclass per section).
ANALYSIS_DEFAULTS: dict[str, dict] = settings.defaults()
TOP_KEYS = ("preset", "extends", "smoke", "description", "model_dtype", "harvest", "train", *ANALYSIS_DEFAULTS)


@dataclass(frozen=True)
class RunConfig:
    """One run, fully resolved: every section holds plain values (lists, numbers, strings)."""

    name: str
    source: str                  # the TOML file (or "<dict>" for a config built in code)
    preset: str
    smoke: bool
    description: str
    harvest: dict                # CORPUS_KEYS and HarvestConfig fields
    train: dict                  # {"schemes": [...], "<scheme>": {TrainConfig fields}}
    evaluate: dict
    label: dict
    steer: dict
    geometry: dict
    adl: dict
    model_dtype: str = "auto"    # the pair's weights in memory: "auto" (stored dtype; stored bf16 is upcast to
    #                              float32 on a CPU whose bf16 matmuls are not faster), "float32" or "bfloat16"
    imports: dict = field(default_factory=dict)   # scheme -> absolute path of the checkpoint its crosscoder is
    #                              imported from (``[train.<scheme>] from``); such a scheme is not trained

    @property
    def schemes(self) -> list[str]:
        """The sparsity schemes trained; the first is the main one (the paper's ReLU by default)."""
        return list(self.train["schemes"])

    @property
    def tested(self) -> bool:
        """False for a smoke run: its claims and targets are reported as "not tested"."""
        return not self.smoke

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        d.pop("description")
        if d["harvest"]["mode"] == "store" and not d["harvest"]["stream"]:   # runs from before the stream mode keep
            d["harvest"] = {k: v for k, v in d["harvest"].items() if k not in MODE_DEFAULTS}   # their hash
        return d

    @property
    def hash(self) -> str:
        """12 hex characters over every setting (not the name): equal settings, equal hash."""
        d = self.to_dict()
        d.pop("name")
        # a checkpoint counts by its content, not by where it lies
        d["imports"] = {s: formats.digest(formats.detect(p)[1]) for s, p in self.imports.items()}
        return paths.config_hash(d)


def config_path(name_or_path, folder: Path | None = None) -> Path:
    """``<folder>/<name>.toml`` where that exists (a folder of your own runs), else ``configs/<name>.toml``; a
    ``.toml`` path is itself."""
    p = Path(str(name_or_path))
    if p.suffix == ".toml":
        return p
    if folder is not None and (Path(folder) / f"{name_or_path}.toml").exists():
        return Path(folder) / f"{name_or_path}.toml"
    return CONFIG_DIR / f"{name_or_path}.toml"


def available() -> list[str]:
    """Names of the committed run configs."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def _read(path: Path, chain: tuple = ()) -> dict:
    if not path.exists():
        raise RunConfigError(f"run config {path} does not exist; committed runs: {', '.join(available())}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise RunConfigError(f"run config {path} is not valid TOML: {err}") from None
    bad = sorted(set(raw) - set(TOP_KEYS))
    if bad:
        raise RunConfigError(f"run config {path}: unknown key(s) {bad}; known: {list(TOP_KEYS)}")
    resolve_imports(raw, path.parent)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    ppath = path.parent / parent if str(parent).endswith(".toml") else config_path(parent, path.parent)
    if ppath.resolve() in chain:
        raise RunConfigError(f"run config {path}: 'extends' loops back to {ppath}")
    return merge(_read(ppath, chain + (path.resolve(),)), raw)


def resolve_imports(raw: dict, folder: Path) -> None:
    """Make every relative ``[train.<scheme>] from`` path absolute, from ``folder`` (the config file's), in place."""
    train = raw.get("train")
    for table in (train.values() if isinstance(train, dict) else ()):
        if isinstance(table, dict) and isinstance(table.get("from"), str) and table["from"]:
            p = Path(table["from"]).expanduser()
            table["from"] = str(p if p.is_absolute() else (folder / p).resolve())


def _import_path(value, where: str, scheme: str) -> str:
    """A ``from`` value checked: a path to a checkpoint in a layout ``thinkdiff.formats`` reads (file names only:
    its contents are checked when the crosscoder is first asked for)."""
    if not isinstance(value, str) or not value:
        raise RunConfigError(f"{where}: [train.{scheme}] from = {value!r} must be the path of a crosscoder checkpoint")
    try:
        formats.detect(value)
    except (FileNotFoundError, formats.CheckpointError) as err:
        raise RunConfigError(f"{where}: [train.{scheme}] from = {value!r}: {err}") from None
    return str(Path(value).expanduser().absolute())


def merge(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` applied; tables merge key by key, any other value is replaced."""
    out = copy.deepcopy(base)
    for k, v in changes.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _section(raw: dict, name: str, defaults: dict, where: str) -> dict:
    got = raw.get(name, {})
    if not isinstance(got, dict):
        raise RunConfigError(f"{where}: [{name}] must be a table, got {type(got).__name__}")
    bad = sorted(set(got) - set(defaults))
    if bad:
        raise RunConfigError(f"{where}: unknown key(s) {bad} in [{name}]; known: {sorted(defaults)}")
    out = copy.deepcopy(defaults)
    for k, v in got.items():
        d = defaults[k]
        if d is not None and not isinstance(d, dict) and type(v) is not type(d) \
                and not (isinstance(d, float) and isinstance(v, int) and not isinstance(v, bool)):
            raise RunConfigError(f"{where}: [{name}] {k} = {v!r} should be a {type(d).__name__} like the default {d!r}")
        out[k] = v
    return out


def _harvest_defaults() -> dict:
    fields = {f.name: f.default for f in dataclasses.fields(HarvestConfig)}
    return {**CORPUS_DEFAULTS, "corpus": {}, **MODE_DEFAULTS, **fields}


def harvest_fields(harvest: dict) -> dict:
    """The ``HarvestConfig`` fields of a ``[harvest]`` section (lists as tuples): all but the corpus and mode keys."""
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in harvest.items()
            if k not in (*CORPUS_KEYS, *MODE_DEFAULTS)}


def _train_section(raw: dict, spec, where: str) -> tuple[dict, dict]:
    """(the [train] section, scheme -> imported checkpoint path); an imported scheme's other keys are unused."""
    got = raw.get("train", {})
    if not isinstance(got, dict):
        raise RunConfigError(f"{where}: [train] must be a table")
    schemes = got.get("schemes", ["relu", "batchtopk"])
    if not schemes or not isinstance(schemes, list) or any(s not in ORGANISM for s in schemes):
        raise RunConfigError(f"{where}: [train] schemes = {schemes!r}; each must be one of {sorted(ORGANISM)}")
    bad = sorted(set(got) - {"schemes", *ORGANISM})
    if bad:
        raise RunConfigError(f"{where}: unknown key(s) {bad} in [train]; known: schemes, {', '.join(sorted(ORGANISM))}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"activation"}
    out, imports = {"schemes": list(schemes)}, {}
    for s in schemes:
        table = dict(got.get(s, {}))
        if "from" in table:
            imports[s] = _import_path(table.pop("from"), where, s)
        unknown = sorted(set(table) - fields)
        if unknown:
            raise RunConfigError(f"{where}: unknown key(s) {unknown} in [train.{s}]; TrainConfig fields: {sorted(fields)}")
        base = ORGANISM[s] if spec.train_config == "organism" else PAPER.replace(activation=s)
        try:
            cfg = base.replace(**{k: tuple(v) if k == "betas" else v for k, v in table.items()}).validate()
        except (TypeError, ValueError) as err:
            raise RunConfigError(f"{where}: [train.{s}]: {err}") from None
        out[s] = cfg.to_dict()
    return out, imports


def _check_harvest(harvest: dict, where: str) -> None:
    """[harvest] values checked when the run is read: types (a string layer is a type error, not "out of
    range"), ranges and ``HarvestConfig.validate``; the pair's own limits are its kind's ``check_run``."""
    layer = harvest["layer"]
    if layer is not None and not is_int(layer):
        raise RunConfigError(f"{where}: [harvest] layer = {layer!r} must be an integer (a block index), "
                             f"not a {type(layer).__name__}")
    if not is_int(harvest["n_docs"]) or harvest["n_docs"] < 1:
        raise RunConfigError(f"{where}: [harvest] n_docs = {harvest['n_docs']!r} must be an integer >= 1")
    if not 0.0 <= harvest["teacher_fraction"] <= 1.0:
        raise RunConfigError(f"{where}: [harvest] teacher_fraction = {harvest['teacher_fraction']!r} must be in [0, 1]")
    try:
        HarvestConfig(**harvest_fields(harvest)).validate()
    except (TypeError, ValueError) as err:
        raise RunConfigError(f"{where}: [harvest]: {err}") from None
    if harvest["mode"] not in stream.MODES:
        raise RunConfigError(f"{where}: [harvest] mode = {harvest['mode']!r}; one of {list(stream.MODES)}")
    try:
        stream.StreamConfig(**harvest["stream"]).validate()
    except (TypeError, ValueError) as err:
        raise RunConfigError(f"{where}: [harvest.stream]: {err}") from None


def _check_runs_exist(geometry: dict, where: str, folder: Path | None) -> None:
    missing = [r for r in geometry["runs"] if not config_path(r, folder).exists()]
    if missing:
        raise RunConfigError(f"{where}: [geometry] runs {missing} have no run config; committed runs: "
                             f"{', '.join(available())}")


def from_dict(raw: dict, name: str, source: str = "<dict>") -> RunConfig:
    """Validate and resolve a run given as a dict (the parsed TOML, ``extends`` already applied)."""
    where = f"run config {source}"
    known = [k for k in TOP_KEYS if k != "extends"]
    bad = sorted(set(raw) - set(known))
    if bad:
        raise RunConfigError(f"{where}: unknown key(s) {bad}; known: {known}")
    if "preset" not in raw:
        raise RunConfigError(f"{where}: no 'preset' (the model pair, e.g. \"{pairs.DEFAULT_PAIR}\")")
    try:
        spec = pairs.get(raw["preset"])
    except ValueError as err:
        raise RunConfigError(f"{where}: {err}") from None
    smoke = raw.get("smoke", False)
    if not isinstance(smoke, bool):
        raise RunConfigError(f"{where}: smoke must be true or false, got {smoke!r}")
    model_dtype = raw.get("model_dtype", "auto")
    if model_dtype not in ("auto", "float32", "bfloat16"):
        raise RunConfigError(f"{where}: model_dtype = {model_dtype!r}; one of 'auto', 'float32', 'bfloat16'")
    harvest = _section(raw, "harvest", _harvest_defaults(), where)
    _check_harvest(harvest, where)
    sections = {s: _section(raw, s, d, where) for s, d in ANALYSIS_DEFAULTS.items()}
    for section, values in sections.items():
        settings.SECTIONS[section](**values).check(where)
    try:
        spec.kind_plugin.check_run(spec, harvest, sections["evaluate"], where)
    except pairs.PairError as err:
        raise RunConfigError(str(err)) from None
    _check_runs_exist(sections["geometry"], where, Path(source).parent if source.endswith(".toml") else None)
    train, imports = _train_section(raw, spec, where)
    return RunConfig(name=name, source=source, preset=spec.name, smoke=smoke,
                     description=str(raw.get("description", "")), harvest=harvest,
                     train=train, model_dtype=model_dtype, imports=imports, **sections)


def load(name_or_path=DEFAULT_RUN, overrides: dict | None = None) -> RunConfig:
    """The run ``name_or_path`` (a name in ``configs/`` or a ``.toml`` path), validated.

    ``overrides``: ``{"train.relu.n_steps": 500}``-style changes for exploration; the run's name then lists
    them (``organism-m[train.relu.n_steps=500]``), so its cache keys and report are visibly its own."""
    if isinstance(name_or_path, RunConfig):
        if overrides:
            raise RunConfigError("overrides apply to a run name or file, not to a loaded RunConfig")
        return name_or_path
    path = config_path(name_or_path)
    if (path.parent / "pairs").is_dir() and path.parent.resolve() != CONFIG_DIR.resolve():
        try:   # a folder of your own: its pairs/*.toml are pairs its runs may name
            pairs.register_folder(path.parent / "pairs")
        except ValueError as err:
            raise RunConfigError(f"run config {path}: {err}") from None
    raw = _read(path)
    name = path.stem
    if overrides:
        for dotted, value in overrides.items():
            *tables, key = dotted.split(".")
            node = raw
            for t in tables:
                node = node.setdefault(t, {})
            node[key] = value
        resolve_imports(raw, path.parent)
        name += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(overrides.items())) + "]"
    return from_dict(raw, name, str(path))
