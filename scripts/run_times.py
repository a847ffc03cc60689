"""Where the experiments stage spends its time: each row's training and evaluation seconds, from the run records.

Every finished run writes `run.json` with `train_seconds` and `eval_seconds` (measured by the run itself), so
a runs folder, complete or interrupted, tells how long each row takes and how long the stage took so far.
Rows are grouped by their label (one row, several seeds). Use it to size a profile before running it all:
rows with the same negatives and settings take the same time, whatever their loss weights.

Usage: python scripts/run_times.py [results/runs] [--markdown]
"""

import argparse, json, sys
from pathlib import Path


def read_times(runs_dir: Path) -> list:
    "One dict per finished run: label, seed, train and eval seconds."
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise SystemExit(f"{runs_dir} is not a folder: pass the experiments stage's runs_dir (results/runs).")
    out = []
    # finishing order is the order the stage ran them in, which keeps a row's seeds together
    for record in sorted(runs_dir.glob("*/run.json"), key=lambda f: f.stat().st_mtime):
        try:
            run = json.loads(record.read_text())
            out.append({k: run[k] for k in ("label", "seed", "train_seconds", "eval_seconds")})
        except (json.JSONDecodeError, KeyError) as e:
            raise SystemExit(f"{record} is not a finished run record ({e}); remove its folder to have it rerun.")
    return out


def row_times(runs: list) -> list:
    "Per row, in the order the runs finished: runs, mean train and eval seconds, and the row's total."
    rows = {}
    for run in runs:
        rows.setdefault(run["label"], []).append(run)
    out = []
    for label, group in rows.items():
        train = sum(r["train_seconds"] for r in group)
        evaluate = sum(r["eval_seconds"] for r in group)
        n = len(group)
        out.append({"row": label, "runs": n, "train_s": train / n, "eval_s": evaluate / n, "total_s": train + evaluate})
    return out


def render(rows: list, markdown: bool = False) -> str:
    "The rows as a table, with the stage's measured total at the bottom."
    head = ("row", "runs", "train s/run", "eval s/run", "total s")
    lines = [(r["row"], str(r["runs"]), f"{r['train_s']:.1f}", f"{r['eval_s']:.1f}", f"{r['total_s']:.0f}") for r in rows]
    total = sum(r["total_s"] for r in rows)
    lines.append(("all", str(sum(r["runs"] for r in rows)), "", "", f"{total:.0f} ({total / 60:.1f} min)"))
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])
    width = [max(len(x) for x in col) for col in zip(head, *lines)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, width)).rstrip() for line in [head, *lines])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", nargs="?", default="results/runs")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table instead of plain columns")
    args = parser.parse_args(argv)
    runs = read_times(Path(args.runs_dir))
    if not runs:
        raise SystemExit(f"no finished runs under {args.runs_dir} (each run writes run.json when it finishes).")
    print(render(row_times(runs), args.markdown))


if __name__ == "__main__":
    sys.exit(main())
