"""Sample efficiency: the paper's table from several radii at once, and adaptive radii, against Cohen's CERTIFY.

On the same held-out images, the same seeds and the same alpha:
  - standard: ``Smoother.certify`` with n0 = 100, n = 100,000 (what papers run);
  - radii: ``Smoother.certify_at_radii`` at r = 0, 0.25, 0.5, 0.75 with up to max_n = 100,000, for each
    confidence sequence (betting, bonferroni, one_sided), without a futility level and with each of
    ``--futilities``: certified accuracy at each radius against the standard run's, and the share of
    (image, radius) decisions that agree;
  - adaptive: ``Smoother.certify(..., tolerance=t)`` with the budget n = 100,000, for each of the adaptive
    mode's bounds (the sequences with bounds, and the two-stage rule): certified accuracy at each radius and
    ACR against the standard run's;
  - standard/randomized: the standard run with the randomized Clopper-Pearson bound (``bound_seed``), on the
    same draws; adaptive/two_stage/randomized/<t>: the two-stage rule with it;
  - floor: no run, Wald's bound on the samples any valid sequential test needs to certify what the standard
    run certified (``wald_floor``), so a target above it cannot be met on these images;
  - adaptive_floor: no run, the samples an adaptive radius would need for a certified-accuracy curve within
    one image of the standard's at every radius up to the largest of the table, even knowing each image's
    share in advance (``adaptive_floor``).
Each image's noise stream is the same in all runs (``derive_seed(seed, idx)``), so the sequential modes draw a
prefix of the standard run's samples. The images go in groups (``--group``, as the dataset pipeline packs
them); every variant certifies a group before the next group starts, so a change in machine load between
groups touches all variants alike. Writes JSON after every group: mean/median samples per image, the ratio
of the standard's samples to each, wall seconds and their ratio, certified accuracies (%) and differences
(percentage points).

With ``--replay`` the sequential variants are replayed from the draws the standard run made: every chunk's
class counts are recorded as the standard run draws them, and each variant runs the public ``Smoother`` methods
with those counts served in place of forward passes. A sequential mode draws a prefix of the same streams, so
its decisions and sample counts are exactly the live ones; only its wall time is not measured (null in the
JSON). The whole benchmark then costs the standard run's forward passes alone. ``--draws file.npz`` keeps the
recorded counts (with the run they belong to: model, data, seeds, n0, n); run again with the same file, every
variant, the standard too, replays from it without a forward pass (the standard's wall time is the one recorded
in the file), so other sequential rules are measured on the same draws in seconds. ``--live NAME ...`` draws and
times the variants named even so.

    python benchmarks/sample_efficiency.py --model runs/embedded/vit-lora-0.25 \
        --output benchmarks/results/sample_efficiency.json [--replay [--draws draws.npz] [--live NAME ...]]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from smoothing_hf import ABSTAIN, ImageClassificationTransform, SmoothedImageClassifier, derive_seed, load_image_dataset
from smoothing_hf.certification import ADAPTIVE_CONFIDENCES, CONFIDENCE_SEQUENCES, TWO_STAGE
from smoothing_hf.certification.bounds import clopper_pearson_lower, radius_from_bound, radius_threshold
from smoothing_hf.files import write_json
from smoothing_hf.noise import NOISE_CHUNK_SIZE

RADII = (0.0, 0.25, 0.5, 0.75)


class RecordedDraws:
    """The class counts of every noise chunk a ``Smoother`` draws while ``record`` stands in for its
    ``chunk_counts``, keyed by (seed, phase, stream length, chunk); ``replay`` serves them back in the same
    form, so a run that draws only recorded chunks sees exactly the counts it would draw live."""

    def __init__(self, smoother) -> None:
        self.live, self.num_classes, self.counts = smoother.chunk_counts, smoother.num_classes, {}

    def record(self, images, seeds, phase, num_samples, batch_size, chunks) -> list[np.ndarray]:
        drawn = self.live(images, seeds, phase, num_samples, batch_size, chunks)
        for seed, ids, counts in zip(seeds, chunks, drawn):
            self.counts.update({(seed, int(phase), num_samples, c): row for c, row in zip(ids, counts)})
        return drawn

    def replay(self, images, seeds, phase, num_samples, batch_size, chunks) -> list[np.ndarray]:
        return [np.array([self.counts[(seed, int(phase), num_samples, c)] for c in ids], dtype=np.int64
                         ).reshape(len(ids), self.num_classes) for seed, ids in zip(seeds, chunks)]

    def save(self, path: str, run: dict, seconds: float) -> None:
        """Write the counts, the ``run`` they belong to (model, data, seeds, n0, n) and the standard run's wall
        ``seconds`` to ``path``, atomically."""
        keys = list(self.counts)
        arrays = {"seed": np.array([k[0] for k in keys], dtype=np.uint64),
                  "key": np.array([k[1:] for k in keys], dtype=np.int64).reshape(-1, 3),
                  "counts": np.array([self.counts[k] for k in keys], dtype=np.int64).reshape(-1, self.num_classes)}
        temporary = f"{path}.tmp"
        with open(temporary, "wb") as file:
            np.savez_compressed(file, run=json.dumps(run, sort_keys=True), seconds=seconds, **arrays)
        os.replace(temporary, path)

    def load(self, path: str, run: dict) -> float:
        """Read counts that ``save`` wrote for this very ``run`` (any other run is an error, naming what differs);
        return the standard run's recorded wall seconds."""
        with np.load(path) as saved:
            recorded = json.loads(str(saved["run"]))
            if recorded != run:
                differing = sorted(k for k in run.keys() | recorded.keys() if run.get(k) != recorded.get(k))
                raise ValueError(f"--draws {path} holds the draws of another run (it differs in {differing})")
            for seed, key, counts in zip(saved["seed"].tolist(), saved["key"].tolist(), saved["counts"]):
                self.counts[(seed, *key)] = counts
            return float(saved["seconds"])


def certified_at(correct: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """[images, len(RADII)]: certified correctly at each radius of RADII (radius >= r)."""
    return correct[:, None] & (radii[:, None] >= np.array(RADII)[None, :])


def accuracy_table(certified: np.ndarray) -> dict[str, float]:
    return {f"{r:g}": float(100 * certified[:, j].mean()) for j, r in enumerate(RADII)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/embedded/vit-lora-0.25", help="A saved smoothing model folder.")
    parser.add_argument("--dataset_name", default="embedded:mnist")
    parser.add_argument("--num_images", type=int, default=100, help="Held-out images, spread evenly over the split.")
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=100_000, help="Standard n, and max_n of the sequential modes.")
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--tolerances", type=float, nargs="+", default=[0.05], help="Tolerances of adaptive mode.")
    parser.add_argument("--futilities", type=float, nargs="*", default=[0.05],
                        help="Futility levels of the radii mode, each run beside the mode without one.")
    parser.add_argument("--batch_size", type=int, default=500)
    parser.add_argument("--group", type=int, default=10, help="Images per call (the pipeline's packing).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bound_seed", type=int, default=0, help="Seed of the randomized bound's uniforms.")
    parser.add_argument("--output", default="benchmarks/results/sample_efficiency.json")
    parser.add_argument("--replay", action="store_true",
                        help="Replay the sequential variants from the standard run's draws (no wall time of theirs).")
    parser.add_argument("--live", nargs="*", default=[],
                        help="With --replay: variants (named as in the JSON) that draw their noise and are timed.")
    parser.add_argument("--draws", help="With --replay: an .npz of the standard run's draws, written after the run; "
                                        "where it exists, every variant (the standard too) replays from it.")
    args = parser.parse_args()
    if (args.draws or args.live) and not args.replay:
        parser.error("--draws and --live need --replay")

    model = SmoothedImageClassifier.from_pretrained(args.model)
    split = load_image_dataset(args.dataset_name)["validation"].with_transform(
        ImageClassificationTransform.for_model(model)
    )
    indices = list(range(0, len(split), len(split) // args.num_images))[: args.num_images]
    items = [split[i] for i in indices]
    images = torch.stack([item["pixel_values"] for item in items])
    labels = np.array([item["labels"] for item in items])
    seeds = [derive_seed(args.seed, idx) for idx in indices]
    smoother = model.smoother()
    common = dict(n0=args.n0, alpha=args.alpha, batch_size=args.batch_size)

    variants = {"standard": lambda x, s: smoother.certify(x, n=args.n, seed=s, **common),
                "standard/randomized": lambda x, s: smoother.certify(x, n=args.n, seed=s, bound_seed=args.bound_seed,
                                                                     **common)}
    for confidence in CONFIDENCE_SEQUENCES:
        for futility in [None, *args.futilities]:
            name = f"radii/{confidence}" + ("" if futility is None else f"/futility{futility:g}")
            variants[name] = lambda x, s, c=confidence, f=futility: smoother.certify_at_radii(
                x, RADII, max_n=args.n, seed=s, confidence=c, futility=f, **common
            )
    for confidence in ADAPTIVE_CONFIDENCES:
        for tolerance in args.tolerances:
            variants[f"adaptive/{confidence}/{tolerance:g}"] = lambda x, s, c=confidence, t=tolerance: smoother.certify(
                x, n=args.n, seed=s, tolerance=t, confidence=c, **common
            )
    for tolerance in args.tolerances:
        variants[f"adaptive/{TWO_STAGE}/randomized/{tolerance:g}"] = lambda x, s, t=tolerance: smoother.certify(
            x, n=args.n, seed=s, tolerance=t, confidence=TWO_STAGE, bound_seed=args.bound_seed, **common
        )
    answers: dict[str, list] = {name: [] for name in variants}
    draws = RecordedDraws(smoother)
    run_record = {"model": os.path.abspath(args.model), "dataset": args.dataset_name, "indices": indices,
                  "seed": args.seed, "n0": args.n0, "n": args.n}
    replay_all = bool(args.draws) and os.path.exists(args.draws)
    unknown = sorted(set(args.live) - set(variants))
    if unknown:
        parser.error(f"--live {unknown}: not among the variants {sorted(variants)}")
    seconds = {name: None if args.replay and name != "standard" and name not in args.live else 0.0
               for name in variants}
    if replay_all:
        seconds["standard"] = draws.load(args.draws, run_record)
    for start in range(0, len(indices), args.group):
        group = slice(start, start + args.group)
        for name, run in variants.items():
            if args.replay:  # the standard run draws (and records) every chunk the others read
                replayed = replay_all or name != "standard"
                smoother.chunk_counts = draws.replay if replayed and name not in args.live else draws.record
            tic = time.perf_counter()
            answers[name].extend(run(images[group], seeds[group]))
            if seconds[name] is not None and not (replay_all and name == "standard"):
                seconds[name] += time.perf_counter() - tic
        report = summarize(args, model.sigma, indices[: group.stop], labels[: group.stop], answers, seconds)
        write_json(report, args.output)
        timed = {name: round(s) for name, s in seconds.items() if s is not None}
        print(f"{len(answers['standard'])} images:", timed, flush=True)
    if args.draws and not replay_all:
        draws.save(args.draws, run_record, seconds["standard"])
    print_report(report)


def summarize(args, sigma: float, indices: list[int], labels: np.ndarray, answers: dict, seconds: dict) -> dict:
    standard = answers["standard"]
    standard_samples = np.array([c.samples for c in standard])
    standard_correct = np.array([c.prediction == y and c.prediction != ABSTAIN for c, y in zip(standard, labels)])
    standard_radii = np.array([c.radius for c in standard])
    reference = certified_at(standard_correct, standard_radii)
    standard_accuracy = accuracy_table(reference)
    standard_acr = float(np.mean(standard_radii * standard_correct))

    def costs(name: str, samples: np.ndarray) -> dict:
        return {
            "mean_samples": float(samples.mean()), "median_samples": float(np.median(samples)),
            "samples_ratio": float(standard_samples.mean() / samples.mean()),
            "seconds": seconds[name],
            "seconds_ratio": None if seconds[name] is None else seconds["standard"] / seconds[name],
        }

    results: dict = {"standard": {"n0": args.n0, "n": args.n, "certified_accuracy": standard_accuracy,
                                  "acr": standard_acr, **costs("standard", standard_samples)},
                     "floor": wald_floor(args, sigma, standard, reference, standard_samples),
                     "adaptive_floor": adaptive_floor(args, sigma, standard, standard_correct, standard_samples)}
    for name, decisions in answers.items():
        samples = np.array([d.samples for d in decisions])
        if name.startswith("radii/"):
            correct = np.array([d.prediction == y for d, y in zip(decisions, labels)])
            certified = np.array([d.certified for d in decisions]) & correct[:, None]
            accuracy = accuracy_table(certified)
            results[name] = {
                "certified_accuracy": accuracy,
                "difference_pp": {r: accuracy[r] - standard_accuracy[r] for r in accuracy},
                "decisions_agreeing": float(np.mean(certified == reference)),
                **costs(name, samples),
            }
        elif name.startswith(("adaptive/", "standard/")):
            correct = np.array([c.prediction == y and c.prediction != ABSTAIN for c, y in zip(decisions, labels)])
            radii = np.array([c.radius for c in decisions])
            accuracy = accuracy_table(certified_at(correct, radii))
            results[name] = {
                "certified_accuracy": accuracy,
                "difference_pp": {r: accuracy[r] - standard_accuracy[r] for r in accuracy},
                "acr": float(np.mean(radii * correct)),
                "acr_difference": float(np.mean(radii * correct)) - standard_acr,
                **costs(name, samples),
            }
    return {
        "model": os.path.abspath(args.model), "dataset": args.dataset_name, "split": "validation",
        "indices": indices, "num_images": len(indices), "sigma": sigma, "alpha": args.alpha, "radii": list(RADII),
        "bound_seed": args.bound_seed,
        "batch_size": args.batch_size, "group": args.group, "replay": args.replay,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        **results,
    }


def wald_floor(args, sigma: float, standard: list, reference: np.ndarray, standard_samples: np.ndarray) -> dict:
    """The fewest samples per image that any valid sequential test needs, in expectation, to certify what the
    standard run certified: by Wald's bound, a test with error probability alpha at p = p* needs at least
    about log(1 / alpha) / KL(p || p*) draws on average where the truth is p (each image's share of cA among
    the standard run's n draws stands in for p), so an image costs n0 plus that at the largest threshold
    the standard certified it at (n0 alone where it certified none), capped at n. Refuting a threshold
    costs nothing here (a test may give up at any time), so this floor is below what any rule can reach."""
    shares = np.clip(np.array([c.count for c in standard]) / args.n, 1e-12, 1 - 1e-12)[:, None]
    thresholds = np.array([radius_threshold(r, sigma) for r in RADII])[None, :]
    divergence = shares * np.log(shares / thresholds) + (1 - shares) * np.log((1 - shares) / (1 - thresholds))
    needed = np.where(reference & (shares > thresholds), np.log(1 / args.alpha) / np.maximum(divergence, 1e-300), 0)
    samples = args.n0 + np.minimum(needed, args.n).max(axis=1)
    return {"mean_samples": float(samples.mean()), "median_samples": float(np.median(samples)),
            "samples_ratio": float(standard_samples.mean() / samples.mean())}


def adaptive_floor(args, sigma: float, standard: list, correct: np.ndarray, standard_samples: np.ndarray) -> dict:
    """The fewest samples per image with which an adaptive radius keeps the certified-accuracy curve within one
    image of the standard run's at every radius r in [0, max(RADII)], not only at RADII (an adaptive radius
    does not know the table's radii; one that does is the radii mode). Generous: each image's radius is the
    fixed-n Clopper-Pearson radius at its standard share of cA, at any n on the chunk grid, as if the share
    were known in advance and no sequential correction were paid.

    At most one image may have lost any one radius, so the radius ranges the images lose, (R'_i, R_i] within
    [0, max(RADII)], must be disjoint (an abstention loses [0, R_i]). A dynamic program over the images in
    order of standard radius, with the highest radius lost so far as state, finds the cheapest such
    assignment."""
    top = max(RADII)
    shares = np.array([c.count for c in standard]) / args.n
    radii = np.array([c.radius for c in standard])
    grid = np.minimum(np.arange(1, -(-args.n // NOISE_CHUNK_SIZE) + 1) * NOISE_CHUNK_SIZE, args.n)

    def cost(i: int, target: float) -> int:
        """Draws for image i to keep radius >= target (and its class); none where it may abstain (target < 0)."""
        if target < 0:
            return 0
        bound = clopper_pearson_lower(shares[i] * grid, grid, args.alpha)
        keeps = (radius_from_bound(bound, sigma) >= target - 1e-12) & (bound >= 0.5)
        return int(grid[keeps.argmax()]) if keeps.any() else args.n

    lost_up_to = {-1.0: 0}  # the highest radius some image has lost (-1: none yet) -> fewest draws so far
    for i in sorted(np.flatnonzero(correct), key=lambda i: radii[i]):  # correct: named the label, no abstention
        kept = min(radii[i], top)
        options: dict[float, int] = {}
        for frontier, draws in lost_up_to.items():
            for new_frontier, target in ((frontier, kept), (max(frontier, kept), frontier)):
                total = draws + cost(i, target)
                options[new_frontier] = min(options.get(new_frontier, total), total)
        lost_up_to = options
    samples = args.n0 + min(lost_up_to.values()) / len(standard)
    return {"mean_samples": float(samples), "samples_ratio": float(standard_samples.mean() / samples)}


def print_report(report: dict) -> None:
    for name in report:
        row = report[name]
        if isinstance(row, dict) and "mean_samples" in row:
            extra = f", ACR {row['acr']:.3f}" if "acr" in row else ""
            agreeing = row.get("decisions_agreeing")
            agree = "" if agreeing is None else f", decisions agreeing {100 * agreeing:.1f}%"
            timing = ("no run" if "seconds" not in row else "replayed" if row["seconds"] is None
                      else f"{row['seconds']:.0f} s ({row['seconds_ratio']:.1f}x less)")
            certified = f", certified {row['certified_accuracy']}" if "certified_accuracy" in row else ""
            print(f"{name}: {row['mean_samples']:.0f} samples per image ({row['samples_ratio']:.1f}x fewer), "
                  f"{timing}{certified}{extra}{agree}")


if __name__ == "__main__":
    main()
