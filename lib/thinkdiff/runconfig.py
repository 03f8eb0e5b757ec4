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
``smoke = true`` marks tiny parameters for tests: such a run computes everything and reports every claim and
target as "not tested". Keys missing from a section take the defaults below; unknown keys are errors.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from . import pairs, paths
from .harvest import HarvestConfig
from .norms import DISTILLED_SPECIFIC
from .steer import POSITION_POLICIES
from .train import ORGANISM, PAPER, TrainConfig

CONFIG_DIR = paths.REPO_ROOT / "configs"
DEFAULT_RUN = pairs.DEFAULT_PAIR   # the run of the embedded default pair (what `make demo` runs)

# Harvest settings besides the HarvestConfig fields: which documents (see ``pipeline.documents``) and their defaults.
CORPUS_KEYS = ("n_docs", "teacher_fraction", "seed", "corpus")
CORPUS_DEFAULTS = {"n_docs": 3000, "teacher_fraction": 0.5, "seed": 1}   # seed: the corpus draw, not training

# Each stage's analysis settings with their defaults. Every key a run may set is listed here.
ANALYSIS_DEFAULTS: dict[str, dict] = {
    # 00: the pair's own evaluation. Organism runs: the world's held-out problems for each listed size;
    # hf runs: a math set scored with math-verify (``math_files``: local json/jsonl/parquet, works offline).
    "evaluate": {"sizes": ["XS", "S", "M", "L"], "n_eval": 200, "max_new_tokens": 200, "math_set": "math500",
                 "math_files": "", "seed": 0,
                 # a second sample of held-out problems for rules registered after the first was scored
                 "fresh_seed": 1},
    # 03: labelling, latent scaling, ablation, ground truth.
    "label": {"n_scaling": 100, "reasonscore_alpha": 0.7, "window": [1, 2], "n_occurrences": 50,
              "ablation_ks": [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5], "k_verdict": 0.2,
              # claim 5: matched random latent sets at k_verdict (one set per bootstrap replicate), and how far
              # (marker-logit units) the base's targeted - random change may stray from 0 and still "barely move"
              "ablation_random_sets": 20, "ablation_base_margin": 0.5,
              # the planted gated connective (organism): problems for its probes (training, held out) and the
              # matched random latents its chosen latent's ablation is compared with
              "gate_problems": [1500, 500], "gate_random": 10},
    # 04: steering. Strengths are multiples of a latent's max activation times its decoder vector.
    "steer": {"n_prompts": 128, "max_new_tokens": 128, "alphas": [-4, -2, -1, -0.5, 0.5, 1, 2, 4],
              "control_alphas": [-4, -1, 1, 4], "claim_alpha": 1, "positions": "all", "specific_nrn": DISTILLED_SPECIFIC,
              "seed": 0,
              # claims 6 and 7: how much accuracy / well-formedness steering may lose and still count as
              # non-inferior (Newcombe's paired interval), and the fewest prompts a verdict may rest on
              "noninferiority_margin": 0.05, "min_prompts": 20},
    # 05: geometry across sizes: the runs compared (smallest first); each pair's performance is its [evaluate].
    # ``runs``: the runs compared across sizes, smallest first (empty: this run alone)
    "geometry": {"runs": [], "dims": [2, 5, 10, 20],
                 "claim_dim": 2, "top_k": 6, "seed": 0},
}
TOP_KEYS = ("preset", "extends", "smoke", "description", "model_dtype", "harvest", "train", *ANALYSIS_DEFAULTS)


class RunConfigError(ValueError):
    """A run config that cannot be used; the message names the file and the key."""


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
    model_dtype: str = "auto"    # the pair's weights in memory: "auto" (stored dtype; stored bf16 is upcast to
    #                              float32 on a CPU whose bf16 matmuls are not faster), "float32" or "bfloat16"

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
        return d

    @property
    def hash(self) -> str:
        """12 hex characters over every setting (not the name): equal settings, equal hash."""
        d = self.to_dict()
        d.pop("name")
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
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    ppath = path.parent / parent if str(parent).endswith(".toml") else config_path(parent, path.parent)
    if ppath.resolve() in chain:
        raise RunConfigError(f"run config {path}: 'extends' loops back to {ppath}")
    return merge(_read(ppath, chain + (path.resolve(),)), raw)


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
    return {**CORPUS_DEFAULTS, "corpus": {}, **fields}


def _train_section(raw: dict, spec, where: str) -> dict:
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
    out = {"schemes": list(schemes)}
    for s in schemes:
        table = got.get(s, {})
        unknown = sorted(set(table) - fields)
        if unknown:
            raise RunConfigError(f"{where}: unknown key(s) {unknown} in [train.{s}]; TrainConfig fields: {sorted(fields)}")
        base = ORGANISM[s] if spec.train_config == "organism" else PAPER.replace(activation=s)
        try:
            cfg = base.replace(**{k: tuple(v) if k == "betas" else v for k, v in table.items()}).validate()
        except (TypeError, ValueError) as err:
            raise RunConfigError(f"{where}: [train.{s}]: {err}") from None
        out[s] = cfg.to_dict()
    return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_harvest(harvest: dict, where: str) -> None:
    """[harvest] values checked when the run is read: types (a string layer is a type error, not "out of
    range"), ranges and ``HarvestConfig.validate``; the pair's own limits are its kind's ``check_run``."""
    layer = harvest["layer"]
    if layer is not None and not _is_int(layer):
        raise RunConfigError(f"{where}: [harvest] layer = {layer!r} must be an integer (a block index), "
                             f"not a {type(layer).__name__}")
    if not _is_int(harvest["n_docs"]) or harvest["n_docs"] < 1:
        raise RunConfigError(f"{where}: [harvest] n_docs = {harvest['n_docs']!r} must be an integer >= 1")
    if not 0.0 <= harvest["teacher_fraction"] <= 1.0:
        raise RunConfigError(f"{where}: [harvest] teacher_fraction = {harvest['teacher_fraction']!r} must be in [0, 1]")
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in harvest.items()
              if k not in ("n_docs", "teacher_fraction", "seed", "corpus")}
    try:
        HarvestConfig(**fields).validate()
    except (TypeError, ValueError) as err:
        raise RunConfigError(f"{where}: [harvest]: {err}") from None


def _check_evaluate(evaluate: dict, where: str) -> None:
    for key in ("n_eval", "max_new_tokens"):
        if not _is_int(evaluate[key]) or evaluate[key] < 1:
            raise RunConfigError(f"{where}: [evaluate] {key} = {evaluate[key]!r} must be an integer >= 1")


def _check_geometry(geometry: dict, where: str, folder: Path | None = None) -> None:
    dims, claim = geometry["dims"], geometry["claim_dim"]
    if not isinstance(dims, list) or not dims or not all(_is_int(d) and d >= 1 for d in dims):
        raise RunConfigError(f"{where}: [geometry] dims = {dims!r} must be a non-empty list of integers >= 1 "
                             "(PCA dimensions)")
    if claim not in dims:
        raise RunConfigError(f"{where}: [geometry] claim_dim = {claim!r} must be one of dims = {dims!r}")
    runs = geometry["runs"]
    if not isinstance(runs, list) or not all(isinstance(r, str) for r in runs):
        raise RunConfigError(f"{where}: [geometry] runs = {runs!r} must be a list of run names (empty: this run)")
    missing = [r for r in runs if not config_path(r, folder).exists()]
    if missing:
        raise RunConfigError(f"{where}: [geometry] runs {missing} have no run config; committed runs: "
                             f"{', '.join(available())}")
    if not _is_int(geometry["top_k"]) or geometry["top_k"] < 1:
        raise RunConfigError(f"{where}: [geometry] top_k = {geometry['top_k']!r} must be an integer >= 1")


def _check_label(label: dict, where: str) -> None:
    """The [label] settings 03b's claim 5 relies on, checked when the run is read."""
    ks = label["ablation_ks"]
    if not isinstance(ks, list) or not ks or not all(isinstance(k, (int, float)) and 0 < k <= 1 for k in ks):
        raise RunConfigError(f"{where}: [label] ablation_ks = {ks!r} must be a non-empty list of fractions in (0, 1]")
    if label["k_verdict"] not in ks:
        raise RunConfigError(f"{where}: [label] k_verdict = {label['k_verdict']!r} must be one of ablation_ks = {ks!r} "
                             "(claim 5 is judged where the ablation ran)")
    if not isinstance(label["ablation_random_sets"], int) or label["ablation_random_sets"] < 2:
        raise RunConfigError(f"{where}: [label] ablation_random_sets = {label['ablation_random_sets']!r} must be an "
                             "integer >= 2")
    if not label["ablation_base_margin"] > 0:
        raise RunConfigError(f"{where}: [label] ablation_base_margin = {label['ablation_base_margin']!r} must be > 0")


def _check_steer(steer: dict, where: str) -> None:
    """The [steer] settings 04_steer relies on, checked when the run is read rather than after an hour of work."""
    alphas, controls, claim = steer["alphas"], steer["control_alphas"], steer["claim_alpha"]
    for key, grid in (("alphas", alphas), ("control_alphas", controls)):
        if not grid or any(isinstance(a, bool) or not isinstance(a, (int, float)) for a in grid):
            raise RunConfigError(f"{where}: [steer] {key} = {grid!r} must be a non-empty list of numbers")
        if 0 in grid:
            raise RunConfigError(f"{where}: [steer] {key} = {grid!r} holds 0; alpha = 0 is the unsteered run itself")
    if claim not in alphas or claim not in controls:
        raise RunConfigError(f"{where}: [steer] claim_alpha = {claim!r} must be in both alphas = {alphas!r} and "
                             f"control_alphas = {controls!r}: claims are judged where every direction was run")
    if not 0.0 <= steer["specific_nrn"] <= 1.0:
        raise RunConfigError(f"{where}: [steer] specific_nrn = {steer['specific_nrn']!r} is a relative norm, in [0, 1]")
    if steer["n_prompts"] < 3 or steer["max_new_tokens"] < 1:
        raise RunConfigError(f"{where}: [steer] needs n_prompts >= 3 (the side-by-side shows three) and "
                             f"max_new_tokens >= 1; got {steer['n_prompts']} and {steer['max_new_tokens']}")
    if not 0.0 < steer["noninferiority_margin"] < 1.0:
        raise RunConfigError(f"{where}: [steer] noninferiority_margin = {steer['noninferiority_margin']!r} is a "
                             "difference of proportions, in (0, 1)")
    if not isinstance(steer["min_prompts"], int) or steer["min_prompts"] < 2:
        raise RunConfigError(f"{where}: [steer] min_prompts = {steer['min_prompts']!r} must be an integer >= 2")
    if steer["positions"] not in POSITION_POLICIES:
        raise RunConfigError(f"{where}: [steer] positions = {steer['positions']!r}; one of {list(POSITION_POLICIES)}")


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
    _check_evaluate(sections["evaluate"], where)
    try:
        spec.kind_plugin.check_run(spec, harvest, sections["evaluate"], where)
    except pairs.PairError as err:
        raise RunConfigError(str(err)) from None
    _check_geometry(sections["geometry"], where, Path(source).parent if source.endswith(".toml") else None)
    _check_label(sections["label"], where)
    _check_steer(sections["steer"], where)
    return RunConfig(name=name, source=source, preset=spec.name, smoke=smoke,
                     description=str(raw.get("description", "")), harvest=harvest,
                     train=_train_section(raw, spec, where), model_dtype=model_dtype, **sections)


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
        name += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(overrides.items())) + "]"
    return from_dict(raw, name, str(path))
