"""Job kinds and their parameters: validated when a job is posted, so bad input gets a 422
before anything is queued, and a worker never sees parameters it cannot use.

Each kind's pydantic model is the one source of its parameters: their defaults live here
only. What a `check_*` function resolves at submission (the promoted generator, the audit's
generator and training set) is a declared optional field, filled in and validated again, so
the stored JSON is exactly `model_dump` of a valid model and a worker reads it back typed
(`stored_params`, `JobContext.p`)."""

from __future__ import annotations

import re

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, computed_field, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from sqlalchemy.orm import Session

from app import model_registry
from app.problems import Problem, _clean_errors
from app.settings import Settings
from app.storage import Storage
from app.uploads import zip_problems


class Params(BaseModel):
    # Unknown keys are a 422 on submission; a stored job is read back just as strictly
    # (`stored_params`), so a key that is not a field is never silently dropped.
    model_config = ConfigDict(extra="forbid")

    def inputs(self) -> dict[str, Any]:
        """The fields as a request or a stored job gives them: unset optionals and computed
        fields (derived again on validation) left out."""
        return self.model_dump(exclude_none=True, exclude=set(type(self).model_computed_fields))


P = TypeVar("P", bound=Params)


def _resolved(params: P, **resolved: Any) -> P:
    """`params` with the fields a check resolved at submission filled in, validated again."""
    return type(params).model_validate({**params.inputs(), **resolved})


RESOLVED = "Resolved at submission when left out (and stored with the job). "

# -- bounds -----------------------------------------------------------------------------------
# Every parameter is bounded, so no one job can hold a worker for ever or flood the tables: the
# pydantic fields below carry their ranges, and the free-form dicts (`overrides`, `speed`) are
# checked key by key against these tables (an unknown key or a value out of range is a 422 that
# names the field and what it allows). The models' own configs stay permissive (research code
# and the tests build anything); these are the limits of what a job may ask for.

SEED_MAX = 2**31 - 1
MODEL_REF = re.compile(r"[0-9A-Za-z_-]{1,64}")
GAN_STEPS_MAX = 5_000_000
EPOCHS = (1, 200)
INPUT_SIZE = (32, 512)
MIN_EVERY = 10  # sample_every / checkpoint_every: 0 (off) or at least this many steps
MAX_GRIDS = 1000  # sample grids per job (labels x steps // sample_every), and checkpoints alike
MAX_SELECTION_POINTS = 200  # snapshots scored per label (select_every): each costs select_samples samples + features


@dataclass(frozen=True)
class Allowed:
    """What one key of an `overrides` or `speed` dict may be: a number in lo..hi (an integer
    when `integer`), a boolean (`flag`), or one of `choices`; `nullable` also allows null."""

    lo: float | None = None
    hi: float | None = None
    integer: bool = False
    flag: bool = False
    choices: tuple[Any, ...] = ()
    nullable: bool = False
    hint: str = ""  # said instead of the range: for keys that are refused outright

    def describe(self) -> str:
        if self.hint:
            return self.hint
        if self.flag:
            what = "true or false"
        elif self.choices:
            what = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            what = f"{'an integer' if self.integer else 'a number'} in {_num(self.lo)}..{_num(self.hi)}"
        return what + (" or null" if self.nullable else "")

    def admits(self, value: Any) -> bool:
        if self.hint:
            return False
        if value is None:
            return self.nullable
        if self.flag:
            return isinstance(value, bool)
        if self.choices:
            return not isinstance(value, bool) and value in self.choices
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return False
        return self.lo <= value <= self.hi  # False for NaN


def _int(lo: float, hi: float) -> Allowed:
    return Allowed(lo, hi, integer=True)


FLAG = Allowed(flag=True)

# models.msggan.GanConfig: every field.
GAN_OVERRIDES: dict[str, Allowed] = {
    "latent_dim": _int(1, 1024), "width": Allowed(1 / 64, 2),
    "d_width": Allowed(1 / 64, 2, nullable=True), "depth": _int(2, 8),
    "equalized_lr": FLAG, "pixel_norm": FLAG, "mbstd_group": _int(0, 64),
    "loss": Allowed(choices=("wgan-gp", "rahinge", "ns-r1")), "gp_lambda": Allowed(0, 1000), "drift": Allowed(0, 1),
    "lr": Allowed(1e-8, 1), "d_lr": Allowed(1e-8, 1, nullable=True),
    "lr_decay_start": _int(0, 10**7), "lr_decay_steps": _int(0, 10**7), "batch_size": _int(1, 1024), "n_critic": _int(1, 10),
    "optimizer": Allowed(choices=("rmsprop", "adam")), "adam_beta1": Allowed(0, 0.99999),
    "adam_beta2": Allowed(0, 0.99999), "ema_beta": Allowed(0, 0.99999), "fixed_samples": _int(1, 256),
    "seed": _int(0, SEED_MAX), "upsample": Allowed(choices=("nearest", "bilinear")),
    "augment": Allowed(choices=("none", "dihedral")),
    "diffaug": Allowed(choices=("none", "translation", "cutout", "translation,cutout")),
}
# models.classifier.ClassifierConfig: epochs and input_size within the top-level params' own
# bounds; weights only as the top-level param (whose file is checked).
CLASSIFIER_OVERRIDES: dict[str, Allowed] = {
    "weights": Allowed(hint="not an override: give the top-level 'weights' parameter (its file is checked)"),
    "mode": Allowed(choices=("frozen", "finetune")), "input_size": _int(*INPUT_SIZE), "lr": Allowed(1e-8, 1),
    "batch_size": _int(1, 1024), "epochs": _int(*EPOCHS), "seed": _int(0, SEED_MAX),
    "num_classes": Allowed(choices=(2,)), "fast_path": FLAG, "eval_batch_size": _int(1, 1024),
    "augment": Allowed(choices=("none", "dihedral", "stain", "dihedral+stain")), "stain_strength": Allowed(0, 0.5),
}
# models.gan_speed.TrainSpeed: every field.
SPEED_OPTIONS: dict[str, Allowed] = {
    "precision": Allowed(choices=("auto", "fp32", "bf16")), "channels_last": Allowed(flag=True, nullable=True),
    "cuda_graph": Allowed(flag=True, nullable=True), "compile": FLAG, "tf32": Allowed(flag=True, nullable=True),
    "read_ahead": Allowed(0, 64, integer=True, nullable=True), "sync_every": Allowed(1, 1000, integer=True, nullable=True),
    "graph_warmup": _int(1, 100),
}


def _error(key: str, value: Any, message: str) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError("out_of_bounds", "{detail}", {"detail": message}),
                            loc=(key,), input=value)


def _out_of_bounds(title: str, key: str, value: Any, message: str) -> ValidationError:
    """A validation error located at `key` (raised from a validator, pydantic nests its location)."""
    return ValidationError.from_exception_data(title, [_error(key, value, message)])


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bounded(table: dict[str, Allowed], what: str) -> AfterValidator:
    """Check a free-form dict key by key: one error per wrong key, located at (field, key)."""
    def check(values: dict[str, Any]) -> dict[str, Any]:
        wrong = []
        for key, value in values.items():
            if key not in table:
                message = f"not a {what} field (known: {', '.join(table)})"
            elif not table[key].admits(value):
                message = table[key].hint or f"must be {table[key].describe()}, got {_short(value)}"
            else:
                continue
            wrong.append(_error(key, value, message))
        if wrong:
            raise ValidationError.from_exception_data(what, wrong)
        return values
    return AfterValidator(check)


GanOverrides = Annotated[dict[str, Any], _bounded(GAN_OVERRIDES, "GanConfig")]
ClassifierOverrides = Annotated[dict[str, Any], _bounded(CLASSIFIER_OVERRIDES, "ClassifierConfig")]
SpeedOptions = Annotated[dict[str, Any], _bounded(SPEED_OPTIONS, "TrainSpeed")]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
Id = Annotated[str, Field(max_length=64)]


def _every(value: int) -> int:
    if value != 0 and not MIN_EVERY <= value <= GAN_STEPS_MAX:
        raise PydanticCustomError("out_of_bounds", "must be 0 (off) or in {lo}..{hi}, got {value}",
                                  {"lo": MIN_EVERY, "hi": GAN_STEPS_MAX, "value": value})
    return value


Every = Annotated[int, AfterValidator(_every)]


def smallest_every(steps: int, n_labels: int) -> int:
    """The smallest sample_every / checkpoint_every that keeps a job within MAX_GRIDS:
    n_labels * (steps // every) <= MAX_GRIDS."""
    return max(MIN_EVERY, steps // (MAX_GRIDS // n_labels + 1) + 1)


class IngestParams(Params):
    path: str | None = Field(None, max_length=4096, description="Server-side folder (public IDC layout) or .zip file.")
    upload_id: str | None = Field(None, pattern="^[0-9a-f]{32}$", description="A zip uploaded with POST /v1/uploads.")
    name: str | None = Field(None, max_length=200)

    @model_validator(mode="after")
    def _one_source(self) -> "IngestParams":
        if (self.path is None) == (self.upload_id is None):
            raise ValueError("give exactly one of 'path' or 'upload_id'")
        return self


def check_ingest(params: IngestParams, settings: Settings, session: Session) -> None:
    if params.upload_id is not None:
        if not Storage.from_settings(settings).exists(Storage.upload_key(params.upload_id)):
            raise Problem(422, "Unknown upload", f"No upload with id {params.upload_id!r}.")
        return
    path = Path(params.path).expanduser()
    if not path.is_absolute():
        raise Problem(422, "Path must be absolute", f"{params.path!r} is relative; the worker resolves nothing.")
    refusal = ingest_path_refusal(settings, path)
    if refusal is not None:  # checked before existence: a refused path says nothing about the server
        raise Problem(422, "Path outside the allowed ingest roots", refusal)
    if not path.exists():
        raise Problem(422, "Path does not exist", f"{path} does not exist on the server.")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise Problem(422, "Not a folder or a zip file", f"{path} is a file but not a zip archive.")
        with zipfile.ZipFile(path) as zf:
            problems = zip_problems(zf)
        if problems:
            raise Problem(422, "Zip refused", "; ".join(problems[:5]), problems=problems[:50])


LABEL_ALIASES = {"IDC+": 1, "IDC-": 0, "1": 1, "0": 0, 1: 1, 0: 0}
Label = Annotated[int, BeforeValidator(lambda v: _label(v))]


def _label(value: Any) -> int:
    if isinstance(value, bool) or value not in LABEL_ALIASES:
        raise ValueError(f"label must be 'IDC+', 'IDC-', 1 or 0, got {value!r}")
    return LABEL_ALIASES[value]


def _dataset(session: Session, dataset_id: str):  # noqa: ANN202
    from app.tables import Dataset

    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise Problem(422, "Unknown dataset", f"No dataset with id {dataset_id!r}.")
    return dataset


def _label_count(dataset, label: int) -> int:  # noqa: ANN001
    return int(dataset.counts.get("by_label", {}).get(str(label), 0))


SELECT_EVERY = ("0 (off): the model is the last step's EMA generator, as in the paper. Otherwise, every so many "
                "steps from select_start (and at the last step), the EMA generator's samples are scored by FID "
                "against its own training patches in a domain classifier's features, and the model is the "
                "best-scoring snapshot (models/snapshot_selection.py; no holdout patient is looked at)")
SELECT_SIZE = ("The size the scored samples are drawn at: 50, the dataset's own patches (the default), or 64, "
               "the generator's output and generate's default size. In a domain classifier's features the two "
               "sizes of the same samples can score far apart: score at the size the samples will be used")


def _check_selection(params: Any, title: str) -> None:
    """select_every's bound: at most MAX_SELECTION_POINTS scored snapshots per label."""
    from models.snapshot_selection import scored_steps

    points = len(scored_steps(params.select_start, params.select_every, params.steps))
    if points > MAX_SELECTION_POINTS:
        raise _out_of_bounds(title, "select_every", params.select_every, (
            f"{params.select_every} scores {points} snapshots from step {params.select_start} to {params.steps}; "
            f"at most {MAX_SELECTION_POINTS} per label: raise select_every or select_start"))


# models.msggan.PRESETS by name, spelled out so that validating a request does not import torch;
# tests/test_job_bounds.py keeps the two lists equal.
PresetName = Literal["paper", "cpu-small", "cpu-small-he", "cpu-tissue", "cpu-medium", "gpu-large"]


class TrainGanParams(Params):
    dataset_id: Id
    label: Label | Literal["both"] = Field(description="1/'IDC+', 0/'IDC-', or 'both' (one model per label)")
    preset: PresetName = "cpu-small"
    steps: int = Field(2000, ge=1, le=GAN_STEPS_MAX)
    overrides: GanOverrides = Field(default_factory=dict, description="GanConfig fields, each within its bounds")
    speed: SpeedOptions = Field(default_factory=dict, description="TrainSpeed fields (precision, cuda_graph, ...)")
    holdout_fraction: float = Field(0.0, ge=0, lt=1, description="Patients kept out of GAN training (seeded), "
                                    "recorded on the generator for the audit's holdout")
    holdout_seed: Seed = 0
    checkpoint_every: Every = Field(500, description=f"0 (off) or >= {MIN_EVERY} steps")
    sample_every: Every = Field(500, description=f"0 (off) or >= {MIN_EVERY} steps")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    select_every: Every = Field(0, description=SELECT_EVERY)
    select_start: int = Field(0, ge=0, le=GAN_STEPS_MAX, description="The first step select_every scores")
    select_size: Literal[50, 64] = Field(50, description=SELECT_SIZE)
    select_samples: int = Field(2000, ge=50, le=20_000, description="Samples per score, and training patches in "
                                "the score's reference")
    select_classifier_model_id: str | None = Field(None, max_length=64, description=RESOLVED + "With select_every: "
                                                   "the classifier whose features score snapshots; default the "
                                                   "promoted classifier")

    @model_validator(mode="after")
    def _bounded_selection(self) -> "TrainGanParams":
        _check_selection(self, type(self).__name__)
        if not self.select_every and self.select_classifier_model_id is not None:
            raise _out_of_bounds(type(self).__name__, "select_classifier_model_id", self.select_classifier_model_id,
                                 "select_classifier_model_id needs select_every > 0")
        return self

    @model_validator(mode="after")
    def _bounded_outputs(self) -> "TrainGanParams":
        # One sample grid (an artifact row and a PNG) and one checkpoint every so many steps:
        # at most MAX_GRIDS of each per job, whatever the steps.
        n_labels = 2 if self.label == "both" else 1
        for name in ("sample_every", "checkpoint_every"):
            every = getattr(self, name)
            if every and n_labels * (self.steps // every) > MAX_GRIDS:
                raise _out_of_bounds(type(self).__name__, name, every, (
                    f"{every} gives {n_labels * (self.steps // every)} outputs over {self.steps} steps x "
                    f"{n_labels} label(s); at most {MAX_GRIDS} per job: use {name} >= "
                    f"{smallest_every(self.steps, n_labels)} or 0 (off)"))
        return self

    @computed_field(description="The labels trained, one model each: derived from `label`, stored with the job.")
    @property
    def labels(self) -> list[int]:
        return [0, 1] if self.label == "both" else [self.label]


def _gan_config(preset: str, overrides: dict, steps: int, title: str):  # noqa: ANN202 (GanConfig, imported late)
    """The run's GanConfig, or a 422: overrides out of the config's own rules, or steps that
    would go on past the lr schedule's end (they would train at lr 0 and change nothing)."""
    from models.msggan import config_from

    try:
        config = config_from(preset, overrides)
    except (TypeError, ValueError) as exc:
        raise Problem(422, title, str(exc)) from exc
    end = config.lr_decay_start + config.lr_decay_steps
    if config.lr_decay_steps and steps > end:
        raise Problem(422, title, f"steps={steps} runs past the learning rates' decay to 0 at step {end} "
                      f"(lr_decay_start={config.lr_decay_start} + lr_decay_steps={config.lr_decay_steps}): "
                      f"use steps <= {end} or a later decay.")
    return config


def _selection_classifier(session: Session, model_id: str | None) -> str:
    """The classifier that scores snapshots: the one named, or the promoted one."""
    return model_registry.classifier_id(session, model_id, "select_classifier_model_id", (
        "No classifier to score snapshots",
        "select_every scores snapshots in a domain classifier's features: train one "
        "(train_classifier), promote it or pass select_classifier_model_id, or set select_every 0."))


def check_train_gan(params: TrainGanParams, settings: Settings, session: Session) -> TrainGanParams | None:
    dataset = _dataset(session, params.dataset_id)
    config = _gan_config(params.preset, params.overrides, params.steps, "Invalid GAN overrides")
    from models.gan_speed import TrainSpeed

    try:
        TrainSpeed.from_dict(params.speed)
    except (TypeError, ValueError) as exc:
        raise Problem(422, "Invalid speed options", str(exc)) from exc
    for label in params.labels:
        n = _label_count(dataset, label)
        if n < config.batch_size:
            raise Problem(422, "Dataset lacks that label",
                          f"Dataset {dataset.id} has {n} patches of label {label}; training needs at least "
                          f"batch_size={config.batch_size}.")
    if params.select_every:
        return _resolved(params, select_classifier_model_id=_selection_classifier(session, params.select_classifier_model_id))
    return None


class GenerateParams(Params):
    label: Label
    n: int = Field(gt=0)
    seed: Seed = 0
    model_id: str | None = Field(None, max_length=64, description=RESOLVED + "Default: the label's promoted generator.")
    size: Literal[64, 50] = 64
    batch_size: int = Field(256, ge=1, le=4096)
    name: str | None = Field(None, max_length=200)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on a GPU, fp32 on a CPU")
    filter_model_id: str | None = Field(None, max_length=64, description="A classifier model id: keep only the "
                                        "candidates it gives P(label) >= filter_min_prob (a label filter)")
    filter_min_prob: float = Field(0.5, ge=0.0, lt=1.0, description="With filter_model_id: the threshold on "
                                   "P(label); 0 keeps every candidate and only records the classifier's agreement")
    filter_max_draw: float = Field(4.0, ge=1.0, le=20.0, description="With filter_model_id: at most this many "
                                   "candidates per kept patch; fewer than n kept within them fails the job")

    @model_validator(mode="after")
    def _filter_needs_model(self) -> "GenerateParams":
        # compared with the defaults, not model_fields_set: stored params hold every field
        fields = type(self).model_fields
        stray = [k for k in ("filter_min_prob", "filter_max_draw") if getattr(self, k) != fields[k].default]
        if stray and self.filter_model_id is None:
            raise ValueError(f"{', '.join(stray)} need filter_model_id (the classifier that filters)")
        return self


def check_generate(params: GenerateParams, settings: Settings, session: Session) -> GenerateParams | None:
    from app.tables import ModelVersion

    if params.n > settings.max_generate_n:
        raise Problem(422, "Too many patches requested",
                      f"n={params.n} is over the cap of {settings.max_generate_n} (HISTOSYNTH_MAX_GENERATE_N).")
    if params.filter_model_id is not None:  # a given id: never the promoted fallback, so no 409 text
        model_registry.classifier_id(session, params.filter_model_id, "filter_model_id", ("", ""))
    if params.model_id is None:
        model = model_registry.promoted(session, "generator", params.label)
        if model is None:
            raise Problem(409, "No generator for that label",
                          f"No promoted generator for label {params.label}: run a train_gan job on a dataset with "
                          "that label, or pass model_id.")
        return _resolved(params, model_id=model.id)
    model = session.get(ModelVersion, params.model_id)
    if model is None:
        raise Problem(422, "Unknown model", f"No model with id {params.model_id!r}.")
    if model.kind != "generator":
        raise Problem(422, "Model is not a generator", f"Model {model.id} is a {model.kind}; generate needs a generator.")
    if model.label != params.label:
        raise Problem(422, "Generator is for the other label",
                      f"Model {model.id} draws label {model.label}, the request asks for label {params.label}.")
    return None


class ClassifierParams(Params):
    weights: str = Field("imagenet", max_length=4096, description="'imagenet' (torchvision IMAGENET1K_V1), 'none', "
                         "a classifier model id (start from that model), or a server-side .pth under WEIGHTS_ROOTS")
    mode: Literal["frozen", "finetune"] = "frozen"
    epochs: int = Field(150, ge=EPOCHS[0], le=EPOCHS[1])
    input_size: int = Field(224, ge=INPUT_SIZE[0], le=INPUT_SIZE[1])
    overrides: ClassifierOverrides = Field(default_factory=dict, description="Other ClassifierConfig fields (lr, batch_size, seed)")
    max_per_class: int | None = Field(None, ge=1, le=10_000_000, description="Subsample each class (seeded) for CPU-scale runs")
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def classifier_settings(self) -> dict[str, Any]:
        """What models.classifier.config_from takes: the ClassifierConfig fields of these params."""
        return {"weights": self.weights, "mode": self.mode, "epochs": self.epochs, "input_size": self.input_size,
                **self._classifier_overrides()}

    def _classifier_overrides(self) -> dict[str, Any]:
        return self.overrides


def is_model_ref(weights: str) -> bool:
    """`weights` names a model version of this service (an id: no '/' and no '.'), not a file."""
    return weights not in ("imagenet", "none") and MODEL_REF.fullmatch(weights) is not None


def _check_classifier(params: ClassifierParams, settings: Settings, session: Session) -> None:
    from app.tables import ModelVersion
    from models.classifier import config_from

    if is_model_ref(params.weights):
        row = session.get(ModelVersion, params.weights)
        if row is None or row.kind != "classifier":
            raise Problem(422, "Unknown classifier model",
                          f"weights={params.weights!r} is neither 'imagenet', 'none', a classifier model id "
                          "nor an absolute path.")
    elif params.weights not in ("imagenet", "none"):
        refusal = path_refusal(settings, settings.weights_roots, Path(params.weights), "HISTOSYNTH_WEIGHTS_ROOTS",
                               "a server-side weights file")
        if refusal is not None:  # checked before existence: a refused path says nothing about the server
            raise Problem(422, "Weights file outside the allowed roots", refusal)
        if not Path(params.weights).is_file():
            raise Problem(422, "Weights file not found",
                          f"weights={params.weights!r} is neither 'imagenet', 'none' nor an existing file on the server.")
    try:
        config_from(params.classifier_settings())
    except (TypeError, ValueError) as exc:
        raise Problem(422, "Invalid classifier settings", str(exc)) from exc


class TrainClassifierParams(ClassifierParams):
    dataset_id: Id
    val_fraction: float = Field(0.2, gt=0, lt=1)
    split_by: Literal["patient", "patch"] = "patient"
    split_seed: Seed = 0


def check_train_classifier(params: TrainClassifierParams, settings: Settings, session: Session) -> None:
    dataset = _dataset(session, params.dataset_id)
    if any(_label_count(dataset, label) == 0 for label in (0, 1)):
        raise Problem(422, "Dataset needs both labels", f"Dataset {dataset.id} has counts {dataset.counts.get('by_label')}.")
    _check_classifier(params, settings, session)


class EvaluateParams(ClassifierParams):
    real_dataset_id: Id
    synthetic_dataset_ids: list[Id] = Field(min_length=1, max_length=16, description="Synthetic datasets (e.g. one per label)")
    split_by: Literal["patient", "patch"] = "patient"
    test_fraction: float = Field(0.3, gt=0, lt=1)
    seed: Seed = 0
    augment_fraction: float = Field(0.1, ge=0, lt=1, description="Real share for the augmentation rows (0: off)")
    bootstrap: int = Field(1000, ge=10, le=100_000, description="Bootstrap resamples over test patients")
    reference_dataset_id: str | None = Field(None, max_length=64, description="The real dataset the generators were "
                                             "trained on: adds the GRTR row, a classifier on it tested as TSTR is")


def check_evaluate(params: EvaluateParams, settings: Settings, session: Session) -> None:
    real = _dataset(session, params.real_dataset_id)
    synth = [_dataset(session, d) for d in params.synthetic_dataset_ids]
    if real.kind != "real":
        raise Problem(422, "Not a real dataset", f"Dataset {real.id} is {real.kind}; real_dataset_id needs an ingested one.")
    if len({d.patch_size for d in synth}) > 1:
        raise Problem(422, "Synthetic datasets differ in patch size", "Generate them all at one size (64 or 50).")
    for label in (0, 1):
        if _label_count(real, label) == 0 or not any(_label_count(d, label) for d in synth):
            raise Problem(422, "Both labels are needed",
                          f"Label {label} is missing from the real or the synthetic side; the protocol needs IDC- and IDC+.")
    if params.reference_dataset_id is not None:
        ref = _dataset(session, params.reference_dataset_id)
        if ref.kind != "real" or any(_label_count(ref, label) == 0 for label in (0, 1)):
            raise Problem(422, "Not a real dataset with both labels",
                          f"Dataset {ref.id} ({ref.kind}, {ref.counts.get('by_label')}) cannot be the reference: "
                          "reference_dataset_id needs the real patches the generators were trained on.")
    _check_classifier(params, settings, session)


class AuditParams(Params):
    synthetic_dataset_id: Id
    train_dataset_id: str | None = Field(None, max_length=64, description=RESOLVED + "Default: the dataset the generator was trained on")
    holdout_dataset_id: str | None = Field(None, max_length=64, description="Default: the generator's recorded holdout patients")
    features: Literal["domain", "inception"] = "domain"
    classifier_model_id: str | None = Field(None, max_length=64, description=RESOLVED + "domain features: default the promoted "
                                            "classifier (none for inception features)")
    max_samples: int = Field(10_000, ge=10, le=200_000)
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    generator_id: str | None = Field(None, max_length=64, description=RESOLVED + "The generator that drew the synthetic dataset; "
                                     "when given it must be that one.")
    label: Label | None = Field(None, description=RESOLVED + "That generator's label; when given it must be that one.")


def check_audit(params: AuditParams, settings: Settings, session: Session) -> AuditParams:
    from app.audit_inputs import resolve_audit_inputs

    resolved = resolve_audit_inputs(params, settings, session)
    for name in ("generator_id", "label"):
        given = getattr(params, name)
        if given is not None and given != resolved[name]:
            raise Problem(422, f"{name} does not match the synthetic dataset",
                          f"Dataset {params.synthetic_dataset_id} was drawn by generator {resolved['generator_id']} "
                          f"(label {resolved['label']}); the request gives {name}={given!r}.")
    return _resolved(params, **resolved)


class ExperimentParams(ClassifierParams):
    """The paper's pipeline in one job; the classifier fields are the evaluate step's."""

    dataset_id: Id
    fraction: float = Field(1.0, gt=0, le=1, description="Times the paper's sizes (40,000 / 38,000 per class)")
    holdout_share: float = Field(0.1, gt=0, lt=0.5, description="Share of each label for the audit's holdout patients")
    preset: PresetName = "cpu-small"
    steps: int = Field(2000, ge=1, le=GAN_STEPS_MAX, description="GAN steps per generator")
    overrides: GanOverrides = Field(default_factory=dict, description="GanConfig fields")
    classifier_overrides: ClassifierOverrides = Field(default_factory=dict, description="ClassifierConfig fields (lr, seed)")
    speed: SpeedOptions = Field(default_factory=dict, description="TrainSpeed fields")
    augment_fraction: float = Field(0.1, ge=0, lt=1)
    sample_size: Literal[64, 50] = 64
    audit_max_samples: int = Field(2000, ge=10, le=200_000)
    domain_epochs: int = Field(3, ge=EPOCHS[0], le=EPOCHS[1], description="Epochs of the audit's domain ResNet18 (64 px, finetune)")
    seed: Seed = 0
    select_every: Every = Field(0, description=SELECT_EVERY + "; here in the features of the experiment's own "
                                "domain classifier, trained before the generators")
    select_start: int = Field(0, ge=0, le=GAN_STEPS_MAX, description="The first step select_every scores")
    select_samples: int = Field(2000, ge=50, le=20_000, description="Samples per score")
    select_size: Literal[50, 64] = Field(50, description=SELECT_SIZE)
    label_filter: bool = Field(False, description="Keep only the synthetic patches a classifier trained on the GAN "
                               "part's patients (never the classification or holdout ones) puts on their label")
    label_filter_min_prob: float = Field(0.5, ge=0.0, lt=1.0, description="With label_filter: the threshold on "
                                         "P(label) (0: keep every patch, record the filter's agreement only)")

    @model_validator(mode="after")
    def _bounded_selection(self) -> "ExperimentParams":
        _check_selection(self, type(self).__name__)
        return self

    def _classifier_overrides(self) -> dict[str, Any]:
        # The evaluate step's classifier: `overrides` are the GAN's here.
        return self.classifier_overrides


def check_experiment(params: ExperimentParams, settings: Settings, session: Session) -> None:
    from models.gan_speed import TrainSpeed

    dataset = _dataset(session, params.dataset_id)
    if dataset.kind != "real":
        raise Problem(422, "Not a real dataset", f"Dataset {dataset.id} is {dataset.kind}; an experiment needs an ingested one.")
    if any(_label_count(dataset, label) == 0 for label in (0, 1)):
        raise Problem(422, "Dataset needs both labels", f"Dataset {dataset.id} has counts {dataset.counts.get('by_label')}.")
    if int(dataset.n_patients or 0) < 3:
        raise Problem(422, "Too few patients", f"Dataset {dataset.id} has {dataset.n_patients} patient(s); the "
                      "experiment splits patients three ways (GAN training, classification, audit holdout).")
    _gan_config(params.preset, params.overrides, params.steps, "Invalid GAN settings")
    try:
        TrainSpeed.from_dict(params.speed)
    except (TypeError, ValueError) as exc:
        raise Problem(422, "Invalid GAN settings", str(exc)) from exc
    _check_classifier(params, settings, session)


@dataclass(frozen=True)
class KindSpec:
    params: type[Params]
    # Raises a Problem, or returns the params with what it resolved filled in (None when it
    # resolved nothing); the params it returns are what the job stores.
    check: Callable[[Any, Settings, Session], Params | None] | None = None
    description: str = ""


KINDS: dict[str, KindSpec] = {
    "ingest": KindSpec(IngestParams, check_ingest, "Public IDC layout (folder or zip) -> packed dataset"),
    "train_gan": KindSpec(TrainGanParams, check_train_gan, "MSG-GAN per label -> generator model versions"),
    "generate": KindSpec(GenerateParams, check_generate, "Generator -> synthetic dataset + zip of PNGs"),
    "train_classifier": KindSpec(TrainClassifierParams, check_train_classifier, "ResNet18 -> classifier model version"),
    "evaluate": KindSpec(EvaluateParams, check_evaluate, "Four-way real/synthetic protocol (paper Table 3)"),
    "experiment": KindSpec(ExperimentParams, check_experiment, "The paper's pipeline: split, GANs, samples, evaluate, audit"),
    "audit": KindSpec(AuditParams, check_audit, "Fidelity (FID, KID, precision/recall, density/coverage) and memorization"),
}


def validate_params(kind: str, raw: dict[str, Any], settings: Settings, session: Session) -> dict[str, Any]:
    """Return the normalised params of `kind` or raise a 422 Problem that says what is wrong."""
    spec = KINDS.get(kind)
    if spec is None:
        raise Problem(422, "Unknown job kind", f"{kind!r} is not a job kind; known kinds: {', '.join(sorted(KINDS))}.")
    try:
        params = spec.params.model_validate(raw)
    except ValidationError as exc:
        errors = _clean_errors(list(exc.errors()))
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in errors[:5])
        raise Problem(422, f"Invalid parameters for a {kind} job", detail, errors=errors) from exc
    resolved = spec.check(params, settings, session) if spec.check is not None else None
    if resolved is not None:
        params = resolved
    # Resolved defaults (such as the promoted model) are stored so a job re-runs identically;
    # computed fields (train_gan's labels) are stored too, for whoever reads the job's JSON.
    return params.model_dump(exclude_none=True)


def stored_params(kind: str, stored: dict[str, Any]) -> Params:
    """A stored job's params read back as its kind's model (what a worker reads, typed).
    Computed fields in the stored JSON are left out: the model derives them again."""
    model = KINDS[kind].params
    return model.model_validate({k: v for k, v in stored.items() if k not in model.model_computed_fields})


def ingest_path_refusal(settings: Settings, path: Path) -> str | None:
    """Why a server-side ingest may not read `path`, or None. The API checks it at submission
    and the worker again before reading (the roots may have changed while the job was queued)."""
    return path_refusal(settings, settings.ingest_roots, path, "HISTOSYNTH_INGEST_ROOTS", "server-side ingest")


def path_refusal(settings: Settings, roots: list[Path], path: Path, setting: str, what: str) -> str | None:
    """Why the service may not read the server path `path`, or None. With no roots, only the
    open mode (embedded, loopback only) may read anywhere; with keys required it is off."""
    if not roots:
        if settings.auth == "open":
            return None
        return f"{what} is off: {setting} is empty (set it to the folders it may read)"
    resolved = path.expanduser().resolve()
    if any(resolved.is_relative_to(r.resolve()) for r in roots):
        return None
    return f"{path} is not under {setting}"
