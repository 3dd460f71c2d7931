"""The report of `kd_seed_recipe.py`: tables (mean and spread over seeds), the smallest student at 95%
of the teacher, the answer at the seed's size, and the plot. Reads --out's JSON files only."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

SEED_SIZE = 6  # hidden units of the seed's 74,188-parameter student
SEED_PARAMS, SEED_ACC, SEED_RATE = 74_188, 0.96, 16.2
LABELS = {"mse": "logit MSE (the seed)", "kd-T4": "Hinton KD, T=4", "kd-best": "Hinton KD, best T (validation)",
          "labels": "labels only"}


def load(out: Path, name: str):
    path = out / name
    return json.loads(path.read_text()) if path.is_file() else None


def spread(values: list[float]) -> tuple[float, float, float, float]:
    """mean, standard deviation (0 for one value), min, max."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.mean(values), sd, min(values), max(values)


def best_temperatures(rows: list[dict]) -> dict[int, str]:
    """Per hidden size, the KD temperature with the best mean validation accuracy over seeds."""
    best: dict[int, tuple[float, str]] = {}
    for h in sorted({r["hidden"] for r in rows}):
        for method in sorted({r["method"] for r in rows if r["method"].startswith("kd-T") and r["hidden"] == h}):
            val = statistics.mean(r["val_accuracy"] for r in rows if r["method"] == method and r["hidden"] == h)
            if h not in best or val > best[h][0]:
                best[h] = (val, method)
    return {h: m for h, (_, m) in best.items()}


def curve(rows: list[dict]) -> dict[str, dict[int, dict]]:
    """method -> hidden -> {params, acc (mean, sd, min, max), epochs (mean best epoch), seeds}."""
    out: dict[str, dict[int, dict]] = {}
    best_t = best_temperatures(rows)
    for method in ("mse", "kd-T4", "labels", "kd-best"):
        for h in sorted({r["hidden"] for r in rows}):
            name = best_t.get(h) if method == "kd-best" else method
            picked = [r for r in rows if r["method"] == name and r["hidden"] == h]
            if not picked:
                continue
            out.setdefault(method, {})[h] = {
                "params": picked[0]["params"], "acc": spread([r["test_accuracy"] for r in picked]),
                "epochs": statistics.mean(r["best_epoch"] for r in picked), "seeds": len(picked), "method": name,
                "converged": all(r["converged"] for r in picked)}
    return out


def report(out: Path, args) -> None:
    teacher = load(out, "teacher.json")
    frozen = load(out, "frozen.json") or []
    for extra in getattr(args, "merge_from", []):  # seeds run by another process into another folder
        seen = {r["seed"] for r in frozen}
        frozen += [r for r in load(Path(extra), "frozen.json") or [] if r["seed"] not in seen]
    e2e = load(out, "e2e.json") or []
    if teacher is None:
        raise SystemExit(f"no teacher in {out}: run --stage teacher first")
    history = load(out / "teacher", "model.json") or {}
    t_seconds = sum(e["seconds"] for e in history.get("training", {}).get("epochs", []))
    t_params, t_acc = teacher["params"], teacher["test_accuracy"]
    print(f"Teacher: {t_params:,} parameters, {teacher['epochs']} epochs of Adadelta, test accuracy {t_acc:.4f}, "
          f"{t_seconds / 60:.1f} min on 1 thread. 95% of it: {0.95 * t_acc:.4f}.")
    if "test_logit_mean_abs" in teacher:
        print(f"Teacher logits on the test images: mean |logit| {teacher['test_logit_mean_abs']:.1f}, "
              f"max {teacher['test_logit_max_abs']:.1f}.")
    if frozen:
        print_frozen(curve(frozen), t_params, t_acc, frozen)
    if e2e:
        print_e2e(e2e, t_acc)
    if frozen and args.plot:
        plot(curve(frozen), t_params, t_acc, e2e, Path(args.plot))
        print(f"\nplot: {args.plot}")


def print_frozen(c: dict, t_params: int, t_acc: float, rows: list[dict]) -> None:
    seeds = max(v["seeds"] for m in c.values() for v in m.values())
    seconds = {r["seed"]: r["seconds_all_heads"] for r in rows}
    print(f"\nStudents on the teacher's frozen conv features, {seeds} seeds (mean +- sd [min, max] test accuracy; "
          f"mean best epoch). All heads of a seed trained together: {statistics.mean(seconds.values()) / 60:.1f} min "
          f"a seed on 1 thread.\n")
    methods = [m for m in ("mse", "kd-T4", "kd-best", "labels") if m in c]
    print("| hidden | parameters | smaller than teacher | " + " | ".join(LABELS[m] for m in methods) + " |")
    print("|---:|---:|---:|" + "---:|" * len(methods))
    for h in sorted(c["mse"]):
        cells = []
        for m in methods:
            v = c[m].get(h)
            if v is None:
                cells.append("")
                continue
            mean, sd, lo, hi = v["acc"]
            tag = f" ({v['method'][3:]})" if m == "kd-best" else ""
            cells.append(f"{mean:.4f} +- {sd:.4f} [{lo:.4f}, {hi:.4f}]{tag}, ep {v['epochs']:.0f}")
        p = c["mse"][h]["params"]
        print(f"| {h} | {p:,} | {t_params / p:.1f}x | " + " | ".join(cells) + " |")
    for m in methods:
        ok = [(v["params"], h, v["acc"][0]) for h, v in c[m].items() if v["acc"][0] >= 0.95 * t_acc]
        if ok:
            p, h, acc = min(ok)
            print(f"- {LABELS[m]}: smallest student at >= 95% of the teacher: hidden {h}, {p:,} parameters, "
                  f"{t_params / p:.1f}x smaller, mean accuracy {acc:.4f}")
        else:
            print(f"- {LABELS[m]}: no student size reaches 95% of the teacher")
    answer(c, t_acc)


def answer(c: dict, t_acc: float) -> None:
    mse, lab = c["mse"].get(SEED_SIZE), c["labels"].get(SEED_SIZE)
    if mse is None or lab is None:
        return
    diff = mse["acc"][0] - lab["acc"][0]
    separated = mse["acc"][2] > lab["acc"][3] or lab["acc"][2] > mse["acc"][3]
    verdict = ("beats" if diff > 0 else "trails") + (" (every seed)" if separated else " (seed ranges overlap)")
    print(f"- At the seed's size (hidden {SEED_SIZE}, {mse['params']:,} parameters), both to convergence: logit MSE "
          f"{mse['acc'][0]:.4f} vs labels only {lab['acc'][0]:.4f}: logit regression {verdict} by "
          f"{abs(diff) * 100:.2f} points.")


def print_e2e(rows: list[dict], t_acc: float) -> None:
    print("\nWhole students (convs trained too), early-stopped:\n")
    print("| hidden | parameters | method | seed | test accuracy | best epoch / run | converged | minutes |")
    print("|---:|---:|---|---:|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['hidden']} | {r['params']:,} | {LABELS[r['method']]} | {r['seed']} | {r['test_accuracy']:.4f} | "
              f"{r['best_epoch']} / {r['epochs_run']} | {'yes' if r['converged'] else 'no (cap)'} | "
              f"{r['seconds'] / 60:.1f} |")


def plot(c: dict, t_params: int, t_acc: float, e2e: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    styles = {"mse": "o-", "kd-T4": "^-", "kd-best": "v:", "labels": "s--"}
    for m, points in c.items():
        hs = sorted(points)
        xs = [points[h]["params"] for h in hs]
        means = [points[h]["acc"][0] for h in hs]
        lo = [points[h]["acc"][0] - points[h]["acc"][2] for h in hs]
        hi = [points[h]["acc"][3] - points[h]["acc"][0] for h in hs]
        ax.errorbar(xs, means, yerr=[lo, hi], fmt=styles[m], capsize=3, label=f"{LABELS[m]} (frozen convs)")
    for r in e2e:
        ax.plot(r["params"], r["test_accuracy"], "D" if r["method"] == "mse" else "X", markersize=8,
                label=f"whole student, {LABELS[r['method']]}")
    ax.plot([t_params], [t_acc], "k*", markersize=12, label="teacher")
    ax.axhline(0.95 * t_acc, color="gray", linewidth=0.8, linestyle=":", label="95% of the teacher")
    ax.plot([SEED_PARAMS], [SEED_ACC], "rP", markersize=9, label="the seed's student (MNIST, 96%)")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("test accuracy (Fashion-MNIST)")
    seeds = max(v["seeds"] for points in c.values() for v in points.values())
    ax.set_title(f"The Keras KD seed's recipe on Fashion-MNIST: students to convergence (mean, min-max of {seeds} "
                 f"seed{'s' if seeds > 1 else ''})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
