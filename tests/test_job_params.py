"""Job params are typed end to end: a kind's pydantic model (app/job_kinds.py) validates the
request, is what the job stores (`model_dump`), and is what the worker reads back
(`stored_params`, `JobContext.p`). Defaults live only in the models."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from app import job_kinds
from app.job_kinds import KINDS, AuditParams, KindSpec, Params, TrainGanParams, stored_params, validate_params
from app.problems import Problem

ROOT = Path(__file__).resolve().parents[1]

# The least each kind's request must give.
MINIMAL: dict[str, dict] = {
    "ingest": {"path": "/data/idc"},
    "train_gan": {"dataset_id": "d1", "label": 1},
    "generate": {"label": 0, "n": 10},
    "train_classifier": {"dataset_id": "d1"},
    "evaluate": {"real_dataset_id": "d1", "synthetic_dataset_ids": ["s0", "s1"]},
    "audit": {"synthetic_dataset_id": "s1"},
    "experiment": {"dataset_id": "d1"},
}

# Params as the code before typed params stored them: model_dump + train_gan's labels + what
# the checks resolved merged in as extra keys. A stored job must still read back.
LEGACY_STORED: dict[str, dict] = {
    "train_gan": {"dataset_id": "d1", "label": "both", "preset": "cpu-small", "steps": 2000, "overrides": {},
                  "speed": {}, "holdout_fraction": 0.0, "holdout_seed": 0, "checkpoint_every": 500,
                  "sample_every": 500, "device": "auto", "labels": [0, 1]},
    "generate": {"label": 1, "n": 5, "seed": 0, "size": 64, "batch_size": 256, "device": "auto", "precision": "auto",
                 "model_id": "g1"},
    "audit": {"synthetic_dataset_id": "s1", "holdout_dataset_id": "h1", "features": "domain", "max_samples": 2000,
              "seed": 0, "device": "auto", "classifier_model_id": "c1", "generator_id": "g1", "label": 0,
              "train_dataset_id": "d1"},
}


def test_every_kind_has_a_minimal_request():
    assert set(MINIMAL) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_stored_params_round_trip(kind):
    model = KINDS[kind].params
    params = model.model_validate(MINIMAL[kind])
    stored = json.loads(json.dumps(params.model_dump(exclude_none=True)))  # as the JSON column keeps it
    back = stored_params(kind, stored)
    assert type(back) is model
    assert back == params
    assert back.model_dump() == params.model_dump()
    # and the plain pydantic way too, for the kinds without computed fields
    if not model.model_computed_fields:
        assert model.model_validate(params.model_dump()) == params


@pytest.mark.parametrize("kind", sorted(LEGACY_STORED))
def test_jobs_stored_before_typed_params_still_read_back(kind):
    stored = LEGACY_STORED[kind]
    params = stored_params(kind, stored)
    dumped = params.model_dump(exclude_none=True)
    assert {k: dumped[k] for k in stored} == stored
    # fields added since (train_gan's select_*) read back as their defaults: what the old job did
    fields = KINDS[kind].params.model_fields
    assert all(dumped[k] == fields[k].default for k in set(dumped) - set(stored))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_unknown_keys_are_still_a_422_on_submission(kind):
    with pytest.raises(Problem) as exc:
        validate_params(kind, {**MINIMAL[kind], "no_such_field": 1}, settings=None, session=None)
    assert exc.value.status == 422
    assert "no_such_field" in exc.value.detail


def test_unknown_keys_in_a_stored_job_are_not_dropped_silently():
    with pytest.raises(ValueError):
        stored_params("generate", {**LEGACY_STORED["generate"], "no_such_field": 1})


@pytest.mark.parametrize("label, labels", [(0, [0]), (1, [1]), ("both", [0, 1]), ("IDC+", [1]), ("IDC-", [0]),
                                           ("1", [1]), ("0", [0])])
def test_train_gan_labels_derive_from_label(label, labels):
    params = TrainGanParams(dataset_id="d1", label=label)
    assert params.labels == labels
    assert params.model_dump()["labels"] == labels


@pytest.mark.parametrize("label", [True, 2, "IDC", None])
def test_train_gan_refuses_other_labels(label):
    with pytest.raises(ValueError):
        TrainGanParams(dataset_id="d1", label=label)


def test_train_gan_stores_labels_without_a_special_case(monkeypatch):
    monkeypatch.setitem(KINDS, "train_gan", KindSpec(TrainGanParams))  # no dataset check
    stored = validate_params("train_gan", {"dataset_id": "d1", "label": "both"}, settings=None, session=None)
    assert stored["labels"] == [0, 1]
    assert stored_params("train_gan", stored).labels == [0, 1]
    # labels is derived, never given: a request that gives it is refused like any unknown key
    with pytest.raises(Problem):
        validate_params("train_gan", {"dataset_id": "d1", "label": 1, "labels": [0]}, settings=None, session=None)


def test_generate_stores_the_promoted_generator_as_a_field(monkeypatch):
    monkeypatch.setattr(job_kinds.model_registry, "promoted", lambda session, kind, label=None: SimpleNamespace(id="g7"))
    settings = SimpleNamespace(max_generate_n=100)
    stored = validate_params("generate", {"label": "IDC+", "n": 3}, settings=settings, session=None)
    assert stored["model_id"] == "g7" and stored["label"] == 1
    assert stored_params("generate", stored).model_id == "g7"


def test_audit_stores_what_it_resolved_as_fields(monkeypatch):
    import app.audit_inputs

    resolved = {"generator_id": "g1", "label": 0, "train_dataset_id": "d1", "classifier_model_id": "c1"}
    monkeypatch.setattr(app.audit_inputs, "resolve_audit_inputs", lambda params, settings, session: dict(resolved))
    stored = validate_params("audit", {"synthetic_dataset_id": "s1"}, settings=None, session=None)
    assert {k: stored[k] for k in resolved} == resolved
    params = stored_params("audit", stored)
    assert isinstance(params, AuditParams)
    assert (params.generator_id, params.label, params.train_dataset_id) == ("g1", 0, "d1")
    # given and matching: accepted; given and not matching: a 422, never silently replaced
    assert validate_params("audit", {"synthetic_dataset_id": "s1", "generator_id": "g1", "label": "IDC-"},
                           settings=None, session=None) == stored
    for wrong in ({"generator_id": "g2"}, {"label": 1}):
        with pytest.raises(Problem) as exc:
            validate_params("audit", {"synthetic_dataset_id": "s1", **wrong}, settings=None, session=None)
        assert exc.value.status == 422


def test_resolved_fields_are_declared_and_described():
    for kind, names in {"generate": ["model_id"],
                        "audit": ["generator_id", "label", "train_dataset_id", "classifier_model_id"]}.items():
        fields = KINDS[kind].params.model_fields
        for name in names:
            assert name in fields and not fields[name].is_required()
            assert "resolved at submission" in (fields[name].description or "").lower()


def test_job_context_p_is_typed_validated_once_and_a_bad_one_is_a_user_error():
    from worker.context import JobContext, UserError

    ctx = object.__new__(JobContext)  # only kind and params matter here
    ctx.kind, ctx.params = "train_gan", dict(LEGACY_STORED["train_gan"])
    assert isinstance(ctx.p, TrainGanParams) and ctx.p.labels == [0, 1]
    assert ctx.p is ctx.p
    bad = object.__new__(JobContext)
    bad.kind, bad.params = "generate", {"label": 1}
    with pytest.raises(UserError):
        bad.p  # noqa: B018


# -- no handler reads its params as a dict ------------------------------------------------

def _params_dict_reads(path: Path) -> list[str]:
    """`.get(...)` calls on, or subscripts of, a job's params in `path`: `ctx.params`, `ctx.p`,
    names bound from them, and arguments annotated with a *Params model. Any use of
    `ctx.params` outside worker/context.py counts too (handlers read `ctx.p`)."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []

    def is_ctx_params(node: ast.AST) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr in ("p", "params")
                and isinstance(node.value, ast.Name) and node.value.id == "ctx")

    for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        names = {a.arg for a in fn.args.args + fn.args.kwonlyargs
                 if a.annotation is not None and ast.unparse(a.annotation).strip("'\"").endswith("Params")}
        for node in ast.walk(fn):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and is_ctx_params(node.value):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for t in (target.elts if isinstance(target, ast.Tuple) else [target]):
                        if isinstance(t, ast.Name):
                            names.add(t.id)

        def is_params(node: ast.AST) -> bool:
            return is_ctx_params(node) or (isinstance(node, ast.Name) and node.id in names)

        for node in ast.walk(fn):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                    and is_params(node.func.value):
                found.append(f"{where}: {ast.unparse(node)}")
            elif isinstance(node, ast.Subscript) and is_params(node.value):
                found.append(f"{where}: {ast.unparse(node)}")
    if path.name != "context.py":
        found += [f"{path.relative_to(ROOT)}:{n.lineno}: {ast.unparse(n)}" for n in ast.walk(tree)
                  if isinstance(n, ast.Attribute) and n.attr == "params" and isinstance(n.value, ast.Name)
                  and n.value.id == "ctx"]
    return found


def test_no_worker_code_reads_params_as_a_dict_with_its_own_defaults():
    sources = sorted((ROOT / "worker").glob("*.py"))
    assert sources
    found = [hit for path in sources for hit in _params_dict_reads(path)]
    assert found == [], "read typed params (ctx.p) instead:\n" + "\n".join(found)


def test_the_dict_read_check_catches_what_it_should(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    bad = tmp_path / "bad.py"
    bad.write_text("def h(ctx):\n    p = ctx.params\n    return p.get('seed', 0), ctx.p['n']\n\n"
                   "def g(q: 'GenerateParams'):\n    return q.get('device', 'auto')\n")
    assert len(_params_dict_reads(bad)) == 4  # p.get, ctx.p[...], q.get, and ctx.params itself


def test_params_models_share_the_base_config():
    for spec in KINDS.values():
        assert issubclass(spec.params, Params)
        assert spec.params.model_config.get("extra") == "forbid"
