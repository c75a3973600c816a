"""Presenting evaluation results: a rich table, JSON + CSV files and a quality-vs-NFE plot."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from rich.table import Table

from stepdrop_search.evaluation import Result
from stepdrop_search.files import atomic_write, write_json, write_text

COLUMNS = [  # (summary key, header, format)
    ("judge_fid", "judge FID", "{:.3f}"), ("judge_kid", "judge KID", "{:.4f}"), ("fid", "coach FID", "{:.3f}"),
    ("inception_fid", "Inception FID", "{:.2f}"), ("kid", "coach KID", "{:.4f}"), ("is", "IS", "{:.3f}"),
    ("precision", "precision", "{:.3f}"), ("recall", "recall", "{:.3f}"), ("residual", "residual", "{:.5f}"),
    ("images_per_s", "img/s", "{:.1f}"), ("gflops", "GFLOPs/img", "{:.2f}"), ("peak_memory_mb", "peak MB", "{:.0f}"),
]


def _cell(summary: dict, key: str, fmt: str, with_std: bool = True) -> str:
    if key not in summary:
        return ""
    mean, std = summary[key]
    return fmt.format(mean) + (f" ± {fmt.format(std)}" if with_std else "")


def spread_words(meta: dict) -> str:
    """What a report's values are: a mean ± std over seeds, or one seed's (no spread to show)."""
    return "mean ± std over seeds" if (meta.get("seeds") or 0) > 1 else "one seed's values (no spread)"


def nfe_cell(summary: dict) -> str:
    mean = summary["nfe"][0]
    lo, hi = summary["nfe_min"][0], summary["nfe_max"][0]
    return f"{mean:.0f}" if lo == hi == mean else f"{mean:.1f} [{lo:.0f}–{hi:.0f}]"


#: What a report leads with, the first one measured: the judge's FID, else the coach's, else the residual.
HEADLINE = ("judge_fid", "fid", "residual")
AXIS_LABELS = {"judge_fid": "FID on the judge network", "fid": "FID on the coach network (proxy-FID)",
               "residual": "residual to teacher"}


def headline_metric(results: list[Result]) -> str:
    """The metric a report ranks and plots by: see :data:`HEADLINE`."""
    measured = {key for r in results for key in r.summary()}
    return next((key for key in HEADLINE if key in measured), "fid")


def present_columns(results: list[Result]) -> list[tuple[str, str, str]]:
    return [c for c in COLUMNS if any(c[0] in r.summary() for r in results)]


def results_table(results: list[Result], title: str) -> Table:
    present = present_columns(results)
    table = Table(title=title)
    table.add_column("policy")
    table.add_column("solver")
    table.add_column("NFE (measured)")
    for _, header, _ in present:
        table.add_column(header, justify="right")
    for r in results:
        table.add_row(*row_cells(r, present))
    return table


def row_cells(r: Result, present: list[tuple[str, str, str]]) -> list[str]:
    """policy, solver, measured NFE and one cell per present metric (mean ± std; GFLOPs and memory bare)."""
    if r.failed:
        return [r.candidate.name, r.candidate.solver_label, "", f"failed: {r.failed}"] + [""] * (len(present) - 1)
    s = r.summary()
    return [r.candidate.name, r.candidate.solver_label, nfe_cell(s)] + [
        _cell(s, key, fmt, r.spread and key not in ("gflops", "peak_memory_mb")) for key, _, fmt in present]


def write_results(results: list[Result], out: Path, meta: dict) -> list[Path]:
    """``out``.json (everything, per seed) and ``out``.csv (one summary row per policy), atomically."""
    out = Path(out)
    json_path, csv_path = out.with_suffix(".json"), out.with_suffix(".csv")
    payload = {"meta": meta, "results": [r.to_dict() for r in results]}
    write_json(json_path, payload)
    keys = sorted({k for r in results for k in r.summary()})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["policy", "family", "kind", "solver", "samples", "seeds", "failed"]
                    + [f"{k}_{stat}" for k in keys for stat in ("mean", "std")])
    for r in results:
        s = r.summary()
        writer.writerow([r.candidate.name, r.candidate.family, r.candidate.kind_label,
                         r.candidate.solver_label, r.samples, len(r.per_seed), r.failed or ""]
                        + [f"{s[k][i]:.6g}" if k in s else "" for k in keys for i in (0, 1)])
    write_text(csv_path, buffer.getvalue())
    return [json_path, csv_path]


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def by_nfe_table(results: list[Result], metric: str = "fid") -> list[str]:
    """Families × nominal NFE, ``metric`` mean ± std; the best mean of each column in bold."""
    cells: dict[str, dict[int, dict]] = {}
    spread: dict[tuple[str, int], bool] = {}
    for r in results:
        s = r.summary()
        if not r.failed and metric in s:
            family = r.candidate.family or r.candidate.name
            cells.setdefault(family, {})[r.candidate.nominal_nfe] = s
            spread[family, r.candidate.nominal_nfe] = r.spread
    nfes = sorted({n for row in cells.values() for n in row})
    best = {n: min(row[n][metric][0] for row in cells.values() if n in row) for n in nfes}
    fmt = next((f for key, _, f in COLUMNS if key == metric), "{:.4g}")
    rows = []
    for family, row in cells.items():
        line = [family]
        for n in nfes:
            text = _cell(row.get(n, {}), metric, fmt, spread.get((family, n), False))
            line.append(f"**{text}**" if text and row[n][metric][0] == best[n] else text)
        rows.append(line)
    return _markdown_table(["family"] + [f"NFE {n}" for n in nfes], rows)


def write_markdown(results: list[Result], path: Path, meta: dict, missing: list[str] = ()) -> Path:
    """A Markdown report: how it was made (command, date, machine, samples × seeds), quality by NFE per
    family, every row with all its metrics, and the rows that could not run here with the reason."""
    present = present_columns(results)
    lines = [f"# {meta.get('title', 'Evaluation')}", "",
             f"- command: `{meta.get('command', '')}`",
             f"- date: {meta.get('date', '')}; machine: {meta.get('machine', '')}; device: {meta.get('device', '')}; "
             f"network: {'torch.compile' if meta.get('compiled') else 'eager'}",
             f"- model: {meta.get('model', '')} (weights {meta.get('model_hash', '')}); judge: {meta.get('judge')}; "
             f"coach: {meta.get('features')}",
             f"- {meta.get('samples')} samples × {meta.get('seeds')} seeds; every row gets the same x_T per seed; "
             f"values are {spread_words(meta)}; residual: {meta.get('residual_samples')} samples against "
             f"{meta.get('teacher')}", ""]
    metric = headline_metric(results)
    header = next((h for key, h, _ in COLUMNS if key == metric), metric)
    if len({r.candidate.nominal_nfe for r in results}) > 1:
        lines += [f"## {header} by NFE (best per column in bold)", ""]
        lines += by_nfe_table(results, metric) + [""]
    lines += ["## Every row", ""]
    rows = [row_cells(r, present) for r in results]
    lines += _markdown_table(["policy", "solver", "NFE (measured)"] + [h for _, h, _ in present], rows) + [""]
    if missing:
        lines += ["## Not run here", ""] + [f"- {m}" for m in missing] + [""]
    write_text(path, "\n".join(lines))
    return Path(path)


def plot_quality_vs_nfe(results: list[Result], path: Path, metric: str = "fid") -> Path | None:
    """Quality against measured NFE, one line per family, error bars = std over seeds (the Pareto view)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    families: dict[str, list[tuple[float, float, float]]] = {}
    for r in results:
        s = r.summary()
        if r.failed or metric not in s:
            continue
        families.setdefault(r.candidate.family or r.candidate.name, []).append((s["nfe"][0], *s[metric]))
    if not families:
        return None
    many = len(families) > 10  # beyond one colour cycle: vary the marker too, legend beside the axes
    fig, ax = plt.subplots(figsize=(11, 6) if many else (6.5, 4.2), dpi=120)
    markers = "osD^vP*Xh<>"
    for i, (family, points) in enumerate(sorted(families.items())):
        points.sort()
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                    marker=markers[(i // 10) % len(markers)], capsize=3, label=family)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(sorted({r.candidate.nominal_nfe for r in results}))
    ax.set_xlabel("measured NFE")
    ax.set_ylabel(AXIS_LABELS.get(metric, metric))
    ax.grid(alpha=0.3)
    if many:
        ax.set_yscale("log")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return Path(path)


def plot_pareto_front(points: list[tuple[float, float]], front: list[tuple[float, float, float | None]],
                      path: Path, accuracy: tuple[list[tuple[float, float, float]], list[tuple[float, float, float]]]
                      | None = None) -> Path:
    """A multi-objective study: every complete trial's (measured NFE, objective) in grey, the Pareto set in colour with
    its held-out proxy-FID beside each point (``front``: NFE, objective, held-out or None). With ``accuracy`` (a
    class-conditional model's (objective, class accuracy, NFE) of the trials and of the Pareto set), a second panel
    shows the fidelity/diversity trade: accuracy against the objective, coloured by NFE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if accuracy else 1, figsize=(12 if accuracy else 6.5, 4.2), dpi=120, squeeze=False)
    ax = axes[0][0]
    if accuracy:
        side = axes[0][1]
        trials, members = accuracy
        side.scatter([p[0] for p in trials], [p[1] for p in trials], s=10, color="0.8", label="trials")
        shown = side.scatter([p[0] for p in members], [p[1] for p in members], c=[p[2] for p in members], cmap="viridis",
                             s=30, label="Pareto set")
        fig.colorbar(shown, ax=side, label="measured NFE")
        side.set_xlabel("objective (search seed)")
        side.set_ylabel("class accuracy (coach)")
        side.grid(alpha=0.3)
        side.legend(fontsize=8)
    if points:
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=10, color="0.7", label="trials")
    ordered = sorted(front)
    ax.plot([p[0] for p in ordered], [p[1] for p in ordered], marker="o", color="C3", label="Pareto set")
    for nfe, value, held_out in ordered:
        if held_out is not None:
            ax.annotate(f"{held_out:.2f}", (nfe, value), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("measured NFE")
    ax.set_ylabel("objective (search seed); labels: held-out proxy-FID")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return Path(path)
