"""Which GAN preset draws better IDC patches at CPU scale? Domain FID on held-out patients.

    python bench/preset_fid.py --steps 2000 --configs cpu-small cpu-small:'{"width": 0.0625}' --json

One run, on the shared data: patients split (seeded) into GAN-training, classifier and
holdout groups; a ResNet18 trained on the classifier group (both labels, 64 px, weights none,
finetune; cached under --cache) gives the domain features (trained on patients the metrics
never compare, so neither side's features come from patches it has seen); then for every config, in turn and
in this same process: an MSG-GAN trained on the training patients' patches of --label (1, IDC+,
by default; 0 is IDC-) for --steps,
--n samples of its EMA generator, and the audit's fidelity metrics of those samples against the
holdout patients' patches of that label, beside the real floor (training patches against the same
holdout). A config is `preset` or `preset:{json overrides}`; the overrides may hold `steps`,
which replaces --steps for that config. --eval-at also scores each config at those earlier
steps of the same training run (an FID-against-steps curve for the price of sampling), and
--ema also scores EMA generators of other betas at every point (the bench keeps them beside
the trainer's; the training is the same whatever the beta, so one run scores them all). Each
config's sample grid is written to --out. --jobs N trains N configs at once in separate
processes, one thread each (scores are the same: every config is seeded). --seeds trains every
config once per GAN seed and adds FID's mean and sd over the seeds (`over_seeds`): at CPU scale
one seed's FID is not a ranking (BENCHMARKS.md, campaign 9). --classifier-seeds also scores
every sample set in the features of domain classifiers trained with other seeds (FID in each,
`fid_by_classifier`, and its mean over GAN seeds): nor is one classifier's (campaign 12).
--fid-n also gives FID on the first k of the same samples (`fid_at_n`): FID is biased upward
by a term that shrinks with the sample count, and comparing k with --n shows its size.
--select-from S picks each training's best snapshot without looking at the holdout: at every
eval point from step S on it draws a second, independent sample set (sampling seed + 1) and
scores it against the GAN's own training patches (`fid_train`); `selected` is the holdout score
of the point with the lowest `fid_train` (model selection on training data, as a user without a
holdout would do it; the selection samples and reference are disjoint from the scored ones).
--critic-keep r also scores, at every point, the n patches the critic of that step ranks best
among n / r candidates (`step@keep<r>`, models/critic_filter.py; the first n candidates are the
plain samples, so the two differ only by the filter).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import multiprocessing as mp
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from models import all_metrics  # noqa: E402
from models.audit import sample_rows  # noqa: E402
from models.classifier import classifier_state, config_from as classifier_config, load_classifier  # noqa: E402
from models.classifier_training import train_classifier  # noqa: E402
from models.critic_filter import critic_filtered  # noqa: E402
from models.feature_extractors import domain_extractor  # noqa: E402
from models.fidelity import FEATURE_METRICS  # noqa: E402
from models.gan_trainer import GanTrainer  # noqa: E402
from models.msggan import config_from  # noqa: E402
from models.sampling import build_generator_from_state, iter_samples  # noqa: E402
from worker.figures import sample_grid_png  # noqa: E402
from worker.idc_layout import decode_chunk, scan  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "IDC_regular_ps50_idx5"


def load(data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cands = scan(data)[0]
    patches, _, failures = decode_chunk([c.path for c in cands])
    if failures:
        raise SystemExit(f"{len(failures)} patches failed to decode")
    return patches, np.array([c.label for c in cands]), np.array([c.patient for c in cands])


def split_patients(patients: np.ndarray, holdout: float, seed: int) -> np.ndarray:
    unique = np.array(sorted(set(patients.tolist())))
    held = unique[np.random.default_rng(seed).permutation(len(unique))[:max(1, round(holdout * len(unique)))]]
    return np.isin(patients, held)


def domain_classifier(patches, labels, cache: Path, key: str, epochs: int,  # noqa: ANN001, ANN201
                      classifier_seed: int = 0):
    # Seed 0 keeps the cache name campaigns 1-13 used; other seeds train other classifiers on
    # the same patients (the features FID is measured in, one per seed).
    path = cache / (f"domain_{key}.pt" if classifier_seed == 0 else f"domain_{key}_cs{classifier_seed}.pt")
    if not path.is_file():
        cfg = classifier_config({"weights": "none", "mode": "finetune", "input_size": 64, "epochs": epochs,
                                 "batch_size": 64, "seed": classifier_seed})
        model, _ = train_classifier(cfg, patches, labels)
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(classifier_state(model, cfg), path)
    model, cfg = load_classifier(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return domain_extractor(model, cfg.input_size, {"model": path.name, "sha256": digest})


def fid_of(real_feats: torch.Tensor, fake_feats: torch.Tensor, seed: int) -> float:
    """FID between two feature sets of one extractor."""
    return all_metrics.compute(["fid"], real=real_feats, fake=fake_feats, seed=seed)["fid"]["fid"]


def fid_in(extractor, real_feats: torch.Tensor, fake: np.ndarray, seed: int) -> float:  # noqa: ANN001
    """FID of `fake` patches against real features, in `extractor`'s feature space."""
    return fid_of(real_feats, extractor(fake), seed)


def parse_config(text: str, default_steps: int) -> tuple[str, dict, int]:
    preset, _, overrides = text.partition(":")
    fields = json.loads(overrides) if overrides else {}
    return preset, fields, int(fields.pop("steps", default_steps))


def one_thread_child(parent: int) -> None:
    """A pool process: one torch thread, and gone when the bench is (a killed parent leaves
    its spawned children training otherwise, on the cores the next run needs)."""
    torch.set_num_threads(1)

    def exit_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()


def train_and_sample(preset: str, overrides: dict, steps: int, eval_at: list[int], n: int, seed: int,
                     gan_train: np.ndarray, extra_ema: tuple[float, ...] = (), select_from: int | None = None,
                     critic_keep: tuple[float, ...] = ()) -> dict:
    """Train one config to `steps`, sampling n patches of the EMA generator at every eval point:
    {"samples": {point: (uint8 patches, training seconds so far)}, "grid", "last_losses",
    "threads"}, a point being the step, "step@ema<beta>" for an `extra_ema` average, or
    "step@keep<r>" for the trainer-EMA samples filtered by the critic at keep fraction r. With
    `select_from`, "selection" holds a second sample set (seed + 1) per trainer-EMA point from
    that step on, for choosing a snapshot without the holdout."""
    config = config_from(preset, overrides)
    trainer = GanTrainer(config, gan_train)
    # Extra EMAs of G kept here, beside the trainer's own: the training is the same whatever the
    # EMA's beta, so one run scores every beta (ema <- beta * ema + (1 - beta) * G, each step).
    emas = {beta: copy.deepcopy(trainer.G).requires_grad_(False) for beta in extra_ema}
    train_s, samples, selection = 0.0, {}, {}
    for target in sorted({*[s for s in eval_at if 0 < s < steps], steps}):
        t0 = time.perf_counter()
        if emas:
            while trainer.step < target:
                trainer.train(trainer.step + 1)
                with torch.no_grad():
                    for beta, ema in emas.items():
                        torch._foreach_lerp_(list(ema.parameters()), list(trainer.G.parameters()), 1.0 - beta)
        else:
            trainer.train(target)
        train_s += time.perf_counter() - t0
        states = {str(target): trainer.ema_generator_state()}
        states |= {f"{target}@ema{beta}": ema.state_dict() for beta, ema in emas.items()}
        for point, state in states.items():
            G = build_generator_from_state(config.to_dict(), state)
            samples[point] = (np.concatenate(list(iter_samples(G, n, seed=seed, size=50))), train_s)
            if select_from is not None and "@" not in point and target >= select_from:
                selection[point] = np.concatenate(list(iter_samples(G, n, seed=seed + 1, size=50)))
            if "@" not in point:  # the critic as it stands at this step scores the candidates
                for keep in critic_keep:
                    kept, _ = critic_filtered(G, trainer.D, n, keep, seed, size=50, critic_batch=config.batch_size)
                    samples[f"{point}@keep{keep}"] = (kept, train_s)
    trainer.close()
    return {"samples": samples, "selection": selection, "grid": sample_grid_png(trainer.sample_fixed()),
            "last_losses": trainer.history[-1], "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["cpu-small"])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-at", type=int, nargs="*", default=[], help="also score at these earlier steps")
    ap.add_argument("--label", type=int, choices=(0, 1), default=1,
                    help="the class the GANs learn and are scored on (1: IDC+, every campaign up to 31; 0: IDC-)")
    ap.add_argument("--n", type=int, default=2000, help="synthetic samples per config")
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--classifier-share", type=float, default=0.2, help="patients for the domain classifier")
    ap.add_argument("--seed", type=int, default=0, help="the split's, classifier's and sampling's seed")
    ap.add_argument("--seeds", type=int, nargs="*", default=[],
                    help="train every config once per GAN seed and report FID mean and sd over them")
    ap.add_argument("--classifier-seeds", type=int, nargs="*", default=[],
                    help="also score every sample set in the features of domain classifiers trained with these "
                         "seeds (FID in each, `fid_by_classifier`): a ranking that holds in one classifier's "
                         "features only is not a ranking")
    ap.add_argument("--classifier-epochs", type=int, default=3)
    ap.add_argument("--classifier-patches", type=int, default=6000, help="training patches for the domain ResNet18")
    ap.add_argument("--cache", type=Path, default=ROOT / "var" / "bench_cache")
    ap.add_argument("--out", type=Path, default=ROOT / "var" / "preset_fid")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--ema", type=float, nargs="*", default=[],
                    help="also score EMA generators with these betas at every eval point (same training)")
    ap.add_argument("--fid-n", type=int, nargs="*", default=[],
                    help="also FID on the first k of each config's --n samples, in every classifier (`fid_at_n`): "
                         "FID's upward bias shrinks as the sample count grows, and k against --n shows its size")
    ap.add_argument("--select-from", type=int, default=None,
                    help="also pick each training's best eval point from this step on by FID against its own "
                         "training patches on separate samples (`selected`; never looks at the holdout)")
    ap.add_argument("--critic-keep", type=float, nargs="*", default=[],
                    help="also score, at every eval point, the n best of n/r candidates as the critic ranks them "
                         "(models/critic_filter.py), for each keep fraction r")
    ap.add_argument("--jobs", type=int, default=1, help="train this many configs at once, one thread each")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    fid_n = sorted(k for k in set(args.fid_n) if k != args.n)
    if any(not 2 <= k < args.n for k in fid_n):
        ap.error(f"--fid-n: each k must be in 2..{args.n - 1} (below --n)")
    if any(not 0 < r <= 1 for r in args.critic_keep):
        ap.error("--critic-keep: each keep fraction must be in (0, 1]")
    # Progress to stderr, always (a run takes an hour); with --json, stdout holds only the JSON line.
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    args.out.mkdir(parents=True, exist_ok=True)

    patches, labels, patients = load(args.data)
    held = split_patients(patients, args.holdout, args.seed)
    for_classifier = split_patients(np.where(held, "", patients), args.classifier_share / (1 - args.holdout),
                                    args.seed + 1) & ~held & (patients != "")
    train_rows, hold_rows = np.flatnonzero(~held & ~for_classifier), np.flatnonzero(held)
    t0 = time.perf_counter()
    cls_all = np.flatnonzero(for_classifier)
    cls_rows = cls_all[sample_rows(len(cls_all), args.classifier_patches, args.seed)]
    cache_key = f"s{args.seed}_h{args.holdout}_c{args.classifier_share}_e{args.classifier_epochs}_n{len(cls_rows)}"
    extractor = domain_classifier(patches[cls_rows], labels[cls_rows], args.cache, cache_key, args.classifier_epochs)
    others = {c: domain_classifier(patches[cls_rows], labels[cls_rows], args.cache, cache_key, args.classifier_epochs, c)
              for c in args.classifier_seeds if c != 0}
    log(f"domain classifiers ready in {time.perf_counter() - t0:.0f} s")
    gan_train = patches[train_rows[labels[train_rows] == args.label]]
    holdout = patches[hold_rows[labels[hold_rows] == args.label]]
    hold_feats = extractor(holdout)
    floor_patches = gan_train[sample_rows(len(gan_train), min(args.n, len(gan_train)), args.seed)]
    floor = all_metrics.compute(list(FEATURE_METRICS), real=hold_feats, fake=extractor(floor_patches), seed=args.seed)
    other_feats = {c: ex(holdout) for c, ex in others.items()}
    other_floors = {c: fid_in(ex, other_feats[c], floor_patches, args.seed) for c, ex in others.items()}
    # The selection's reference: the GAN's own training patches (another draw than the floor's).
    train_ref = gan_train[sample_rows(len(gan_train), min(args.n, len(gan_train)), args.seed + 1)]
    train_feats = extractor(train_ref) if args.select_from is not None else None
    result = {"bench": "preset_fid", "label": args.label, "steps": args.steps, "n": args.n, "n_holdout": len(holdout),
              "n_gan_train": len(gan_train), "holdout_patients": int(len(set(patients[held].tolist()))),
              "classifier_patients": int(len(set(patients[for_classifier].tolist()))),
              "features": extractor.identity, "real_floor": floor, "configs": {}}
    if others:
        result["other_classifiers"] = {str(c): {"features": ex.identity, "real_floor_fid": other_floors[c]}
                                       for c, ex in others.items()}
    log(f"real floor: FID {floor['fid']['fid']:.2f}"
        + "".join(f"; classifier seed {c}: {v:.2f}" for c, v in other_floors.items()))
    runs = [(text, *parse_config(text, args.steps)) for text in args.configs]
    if args.seeds:  # every config once per GAN seed: "text#seed<s>"
        runs = [(f"{text}#seed{seed}", preset, {**overrides, "seed": seed}, steps)
                for text, preset, overrides, steps in runs for seed in args.seeds]
    scored: dict[str, dict] = {}

    def score(text: str, steps: int, run: dict) -> None:
        curve, metrics = {}, None
        for point, (fake, train_s) in run["samples"].items():
            fake_feats = extractor(fake)
            values = all_metrics.compute(list(FEATURE_METRICS), real=hold_feats, fake=fake_feats, seed=args.seed)
            if "@" not in point:  # the trainer's own EMA: the config's result is its last point
                metrics = values
            curve[point] = {"fid": values["fid"]["fid"], "density": values["density_coverage"]["density"],
                            "coverage": values["density_coverage"]["coverage"], "train_s": round(train_s, 1)}
            other_fake = {c: ex(fake) for c, ex in others.items()}
            if others:
                curve[point]["fid_by_classifier"] = {str(c): fid_of(other_feats[c], f, args.seed)
                                                     for c, f in other_fake.items()}
            if fid_n:  # the same samples' first k: FID's small-sample bias, measured (--fid-n)
                curve[point]["fid_at_n"] = {str(k): fid_of(hold_feats, fake_feats[:k], args.seed) for k in fid_n}
                if others:
                    curve[point]["fid_at_n_by_classifier"] = {
                        str(c): {str(k): fid_of(other_feats[c], f[:k], args.seed) for k in fid_n}
                        for c, f in other_fake.items()}
            if point in run.get("selection", {}):  # model selection: own samples, training reference
                curve[point]["fid_train"] = fid_in(extractor, train_feats, run["selection"][point], args.seed)
            log(f"{text} @ {point}: FID {curve[point]['fid']:.2f}, density {curve[point]['density']:.3f}, "
                f"coverage {curve[point]['coverage']:.3f}, {train_s:.0f} s"
                + (f"; FID against its training patches {curve[point]['fid_train']:.2f}" if "fid_train" in curve[point] else "")
                + "".join(f"; FID in classifier {c}: {v:.2f}" for c, v in curve[point].get("fid_by_classifier", {}).items())
                + "".join(f"; FID of the first {k}: {v:.2f}" for k, v in curve[point].get("fid_at_n", {}).items()))
        name = text.replace(" ", "").replace("/", "_").replace('"', "").replace(":", "_").replace("{", "").replace("}", "")
        name = name.replace(",", "_")
        (args.out / f"{name}.png").write_bytes(run["grid"])
        train_s = curve[str(steps)]["train_s"]
        scored[text] = {"steps": steps, "metrics": metrics, "train_s": train_s,
                        "s_per_step": round(train_s / steps, 4), "grid": f"{name}.png",
                        "curve": curve, "last_losses": run["last_losses"], "threads": run["threads"]}
        candidates = [p for p in curve if "fid_train" in curve[p]]
        if candidates:
            best = min(candidates, key=lambda p: curve[p]["fid_train"])
            scored[text]["selected"] = {"point": best, **{k: v for k, v in curve[best].items()
                                                          if k in ("fid", "fid_by_classifier", "fid_train",
                                                                   "density", "coverage")}}
            log(f"{text}: selected @ {best} by FID against its training patches; holdout FID {curve[best]['fid']:.2f}")
        log(f"{text}: FID {metrics['fid']['fid']:.2f} (floor {floor['fid']['fid']:.2f}), "
            f"density {metrics['density_coverage']['density']:.3f}, coverage {metrics['density_coverage']['coverage']:.3f}, "
            f"{train_s:.0f} s")
        result["configs"] = {t: scored[t] for t, *_ in runs if t in scored}  # in the order asked
        (args.out / "result.json").write_text(json.dumps(result, indent=1))

    if args.jobs > 1:
        # Each config trains in its own process on one thread: on 2 cores two 1-thread trainings
        # finish sooner than two 2-thread trainings in turn; the scoring stays here, with the one
        # extractor, as each training ends.
        torch.set_num_threads(1)
        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"),
                                 initializer=one_thread_child, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(train_and_sample, preset, overrides, steps, args.eval_at, args.n, args.seed,
                                   gan_train, tuple(args.ema), args.select_from, tuple(args.critic_keep)): (text, steps)
                       for text, preset, overrides, steps in runs}
            for future in as_completed(futures):
                score(*futures[future], future.result())
    else:
        for text, preset, overrides, steps in runs:
            score(text, steps, train_and_sample(preset, overrides, steps, args.eval_at, args.n, args.seed, gan_train,
                                                tuple(args.ema), args.select_from, tuple(args.critic_keep)))
    if args.seeds:
        result["over_seeds"] = over_seeds(scored, args.configs, args.seeds)
        for text, points in result["over_seeds"].items():
            for point, v in points.items():
                log(f"{text} @ {point} over seeds {args.seeds}: FID mean {v['fid_mean']:.2f}, sd {v['fid_sd']:.2f}")
        (args.out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


def over_seeds(scored: dict[str, dict], configs: list[str], seeds: list[int]) -> dict:
    """Per config and eval point: FID mean, sample sd (ddof 1) and the per-seed values."""
    out: dict[str, dict] = {}
    for text in configs:
        runs = [scored[f"{text}#seed{seed}"] for seed in seeds]
        # "selected" is a pseudo-point: each seed's own chosen snapshot (--select-from)
        curves = [{**r["curve"], **({"selected": r["selected"]} if "selected" in r else {})} for r in runs]
        out[text] = {}
        for point in [p for p in curves[0] if all(p in c for c in curves)]:
            fids = np.array([c[point]["fid"] for c in curves])
            out[text][point] = {"fid_mean": float(fids.mean()), "fid_sd": float(fids.std(ddof=1)) if len(fids) > 1 else 0.0,
                                "fids": fids.tolist()}
            for key in ("fid_by_classifier", "fid_at_n", "fid_at_n_by_classifier"):
                if key in curves[0][point]:  # fid_mean_by_classifier, fid_mean_at_n, ...
                    out[text][point][key.replace("fid_", "fid_mean_", 1)] = mean_leaves([cv[point][key] for cv in curves])
    return out


def mean_leaves(trees: list) -> dict | float:
    """The mean over same-shaped nested dicts of numbers, leaf by leaf (one tree per GAN seed)."""
    if isinstance(trees[0], dict):
        return {k: mean_leaves([t[k] for t in trees]) for k in trees[0]}
    return float(np.mean(trees))


if __name__ == "__main__":
    main()
