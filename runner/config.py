"""The sweep config file: a TOML document, validated into dataclasses with exact error messages.

A sweep is the grid benchmarks x methods x seeds; every method entry may give lists for ``name``,
``placement`` and ``rank`` (or ``init_r``/``target_r``), which expand into one method each. Each method
takes the settings of its registered dataclass (``runner.methods``); a setting of another method the entry
names is validated and left to that method, and a setting of a method the entry does not name is refused.
Relative paths are taken from the current folder, as on the command line. Input paths
(``data.root``, ``model.path``) may point anywhere; every run folder stays inside ``sweep.out``:
names that become folder names (benchmarks, method tags built from ``placement``) cannot be
``..``, absolute or contain a path separator. See
``runner/configs/*.toml`` for complete examples::

    [sweep]
    out = "runs/demo"
    benchmarks = ["scienceqa", "iconqa", "flickr30k", "vizwiz"]
    seeds = [0, 1]

    [model]
    preset = "tiny"              # or "instructblip-flan-t5-xl" with path = "/models/instructblip-flan-t5-xl"

    [data]
    root = "data/synthetic"      # <root>/<benchmark>/ in the benchmark's real format
    synthetic = true             # write the synthetic benchmarks there first if missing

    [training]
    epochs = 3
    batch_size = 8

    [[methods]]
    name = "adalora"
    placement = "all_linear"
    init_r = 12
    target_r = 4
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from qformer_budget.benchmarks.registry import BENCHMARKS
from qformer_budget.core.layout import run_path

from .methods import METHODS, MethodSettings, get_method

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

EVAL_SPLITS = {"scienceqa": "test", "iconqa": "test", "flickr30k": "test", "vizwiz": "val"}  # VizWiz test has no answers


class ConfigError(ValueError):
    """A config file that cannot be run; the message names the file and the key at fault."""


@dataclass(frozen=True)
class SweepSection:
    out: str
    benchmarks: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])

    def __post_init__(self) -> None:
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        if unknown or not self.benchmarks:
            raise ValueError(f"benchmarks must be a non-empty list from {list(BENCHMARKS)}, got {self.benchmarks}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")


@dataclass(frozen=True)
class ModelSection:
    preset: str = "tiny"
    path: str | None = None


@dataclass(frozen=True)
class DataSection:
    root: str = "data"
    synthetic: bool = False
    train_split: str = "train"
    eval_split: str | None = None  # None: the benchmark's usual evaluation split (EVAL_SPLITS)
    max_train_examples: int | None = None
    max_eval_examples: int | None = None


@dataclass(frozen=True)
class TrainingSection:
    epochs: float = 3.0
    batch_size: int = 8
    gradient_accumulation: int = 1
    learning_rate: float = 5e-4
    weight_decay: float = 0.05
    max_prompt_tokens: int = 128
    max_new_tokens: int = 20
    num_beams: int = 1
    bf16_on_gpu: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_size", "gradient_accumulation", "max_prompt_tokens", "max_new_tokens", "num_beams"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs <= 0 or self.learning_rate <= 0:
            raise ValueError("epochs and learning_rate must be > 0")


@dataclass(frozen=True)
class LauncherSection:
    """How ``qformer-budget run --launcher slurm`` (or ``local``) starts its workers through submitit.

    Slurm: one array job, one task per run, each with ``gpus_per_run`` GPUs, ``cpus_per_run`` CPUs (and as
    many torch threads), ``mem_gb`` and ``time_min``; at most ``array_parallelism`` tasks at once; ``sbatch``
    holds further sbatch options (``account``, ``qos``, ``constraint``...). Local: ``local_workers``
    processes on this machine share its cores.
    """

    partition: str | None = None
    gpus_per_run: int = 1
    cpus_per_run: int = 8
    mem_gb: int = 32
    time_min: int = 24 * 60
    array_parallelism: int = 32
    sbatch: dict[str, str | int] = field(default_factory=dict)
    local_workers: int = 2

    def __post_init__(self) -> None:
        for name in ("cpus_per_run", "mem_gb", "time_min", "array_parallelism", "local_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_run < 0:
            raise ValueError(f"gpus_per_run must be >= 0, got {self.gpus_per_run}")


@dataclass(frozen=True)
class RunSpec:
    """One cell of the sweep grid, with everything needed to train and evaluate it."""

    benchmark: str
    seed: int
    method: MethodSettings
    model: ModelSection
    data: DataSection
    training: TrainingSection
    out: Path

    @property
    def run_dir(self) -> Path:
        return run_path(self.out, self.benchmark, self.method.tag, self.seed)

    @property
    def eval_split(self) -> str:
        return self.data.eval_split or EVAL_SPLITS[self.benchmark]

    @property
    def splits(self) -> tuple[tuple[str, int | None], tuple[str, int | None]]:
        """(split, example limit) of the training set, then of the evaluation set."""
        return (self.data.train_split, self.data.max_train_examples), (self.eval_split, self.data.max_eval_examples)

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "seed": self.seed,
            "method": self.method.to_dict(),
            "model": dataclasses.asdict(self.model),
            "data": dataclasses.asdict(self.data) | {"eval_split": self.eval_split},
            "training": dataclasses.asdict(self.training),
        }


@dataclass(frozen=True)
class SweepConfig:
    source: Path
    sweep: SweepSection
    model: ModelSection
    data: DataSection
    training: TrainingSection
    methods: tuple[MethodSettings, ...]
    launcher: LauncherSection = field(default_factory=LauncherSection)

    @property
    def out(self) -> Path:
        return Path(self.sweep.out).resolve()

    @property
    def data_root(self) -> Path:
        return Path(self.data.root).resolve()

    def with_paths(self, out: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None) -> SweepConfig:
        """The same sweep writing to ``out`` and reading data from ``data_root``."""
        sweep = self.sweep if out is None else dataclasses.replace(self.sweep, out=str(out))
        data = self.data if data_root is None else dataclasses.replace(self.data, root=str(data_root))
        return dataclasses.replace(self, sweep=sweep, data=data)

    def with_seeds(self, seeds: list[int]) -> SweepConfig:
        return dataclasses.replace(self, sweep=dataclasses.replace(self.sweep, seeds=list(seeds)))

    def with_sizes(self, examples: int | None = None, epochs: float | None = None) -> SweepConfig:
        """The same sweep on at most ``examples`` training examples per run and for ``epochs`` epochs."""
        data = self.data if examples is None else dataclasses.replace(self.data, max_train_examples=examples)
        training = self.training if epochs is None else dataclasses.replace(self.training, epochs=epochs)
        return dataclasses.replace(self, data=data, training=training)

    def runs(self) -> list[RunSpec]:
        """Every run of the grid, benchmark-major, then method, then seed; each run folder is inside ``out``."""
        data = dataclasses.replace(self.data, root=str(self.data_root))
        model = self.model
        if model.path is not None:
            model = dataclasses.replace(model, path=str(Path(model.path).resolve()))
        specs = [
            RunSpec(benchmark, seed, method, model, data, self.training, self.out)
            for benchmark, method, seed in itertools.product(self.sweep.benchmarks, self.methods, self.sweep.seeds)
        ]
        for spec in specs:
            self._check_inside_out(spec)
        return specs

    def _check_inside_out(self, spec: RunSpec) -> None:
        """Refuse a run folder that would lie outside ``out`` once its ``..`` parts are applied.

        The check is on the path as written: symlinks the user put inside ``out`` are theirs to follow.
        """
        run_dir = Path(os.path.normpath(spec.run_dir))
        if not run_dir.is_relative_to(self.out):
            raise ConfigError(
                f"{self.source.name}: the run folder of benchmark {spec.benchmark!r}, method {spec.method.tag!r}, "
                f"seed {spec.seed} would be {run_dir}, outside [sweep].out {self.out}"
            )


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Validate one TOML value against a dataclass field's annotation (ints are accepted for floats)."""
    origin = get_origin(annotation)
    if origin is dict:
        _, value_type = get_args(annotation)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__} {value!r}")
        return {key: _check_type(v, value_type, f"{where}.{key}") for key, v in value.items()}
    if origin is list:
        (item_type,) = get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_check_type(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    options = get_args(annotation) if origin is not None else (annotation,)
    for option in options:
        if option is type(None) and value is None:
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option in (int, str, bool) and type(value) is option:
            return value
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{where}: expected {names}, got {type(value).__name__} {value!r}")


def _build(cls, table: Any, where: str):
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    values = {key: _check_type(value, hints[key], f"{where}.{key}") for key, value in table.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _method_settings(values: dict[str, Any], entry_names: list[Any], where: str) -> MethodSettings:
    """One grid cell of a ``[[methods]]`` entry as its method's settings.

    A key may belong to another method the entry names (``name = ["adalora", "routed_adalora"]`` with
    ``routing``): it is validated, and left to the methods it belongs to. A key that belongs to none of the
    entry's methods is refused.
    """
    values = dict(values)
    if "name" not in values:
        raise ConfigError(f"{where}: missing key 'name'; methods are {list(METHODS)}")
    name = _check_type(values.pop("name"), str, f"{where}.name")
    try:
        method = get_method(name)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    declared = {m.settings: {f.name for f in fields(m.settings)} for m in METHODS.values()}
    known = set().union(*declared.values())
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known | {'name'})}")
    foreign = set(values) - declared[method.settings]
    for settings, keys in declared.items():
        if foreign & keys:
            _build(settings, {key: values[key] for key in foreign & keys}, where)
    for key in sorted(foreign):
        owners = [m.settings.name for m in METHODS.values() if key in declared[m.settings]]
        if not set(owners) & set(entry_names):
            raise ConfigError(f"{where}: {key!r} is a setting of {owners}, not of {sorted(set(entry_names))}")
    return _build(method.settings, {key: values[key] for key in declared[method.settings] & set(values)}, where)


def _expand_methods(entries: Any, where: str) -> tuple[MethodSettings, ...]:
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: give at least one [[methods]] entry")
    methods = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}[{i}]: expected a table")
        grid = {k: v if isinstance(v, list) else [v] for k, v in entry.items()}
        for combination in itertools.product(*grid.values()):
            methods.append(_method_settings(dict(zip(grid, combination)), grid.get("name", []), f"{where}[{i}]"))
    tags = [m.tag for m in methods]
    duplicated = sorted({t for t in tags if tags.count(t) > 1})
    if duplicated:
        raise ConfigError(f"{where}: the same variant appears twice: {duplicated}")
    return tuple(methods)


def load_config(path: str | os.PathLike) -> SweepConfig:
    """Read and validate a sweep config; ConfigError names the file and the key at fault."""
    source = Path(path).resolve()
    try:
        document = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such config file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc})") from exc
    sections = {"sweep", "model", "data", "training", "methods", "launcher"}
    unknown = sorted(set(document) - sections)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; known sections: {sorted(sections)}")
    if "sweep" not in document:
        raise ConfigError(f"{source}: missing [sweep] section")
    name = source.name
    config = SweepConfig(
        source=source,
        sweep=_build(SweepSection, document["sweep"], f"{name} [sweep]"),
        model=_build(ModelSection, document.get("model", {}), f"{name} [model]"),
        data=_build(DataSection, document.get("data", {}), f"{name} [data]"),
        training=_build(TrainingSection, document.get("training", {}), f"{name} [training]"),
        methods=_expand_methods(document.get("methods"), f"{name} [[methods]]"),
        launcher=_build(LauncherSection, document.get("launcher", {}), f"{name} [launcher]"),
    )
    config.runs()  # refuses run folders outside [sweep].out
    return config
