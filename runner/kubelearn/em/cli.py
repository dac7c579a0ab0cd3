"""``kubelearn runs``: list, show, compare and plot tracked runs.

Tables are for people; ``--json`` prints the same facts for scripts. A run is named by its
directory, its id, a unique id prefix, or its name (the latest run of that name).
Exit codes: 0 done, 1 a run was not found or could not be read or plotted, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from kubelearn import bounded_input, fs, paths
from kubelearn.em.reader import MalformedRun, RunRecord, find_run, list_runs, load_run
from kubelearn.em.run import DEFAULT_PARENT_DIR, PARENT_DIR_ENV
from kubelearn.em.store import RUN_FILE
from kubelearn_spec.contract import model_dir_scheme
from kubelearn_spec.names import DNS_1035, MAX_DNS_LABEL

#: What a run id that names a file (the default plot) must look like: ``<name>_<stamp>``.
RUN_ID = r"[A-Za-z0-9][A-Za-z0-9._-]*"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _time(value: str | None) -> str:
    """ISO time as 'YYYY-MM-DD HH:MM:SS' for tables."""
    return value[:19].replace("T", " ") if value else "-"


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str, allow_nan=False))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


# -- sub-commands ---------------------------------------------------------------------------


def _status(run: RunRecord) -> str:
    return f"{run.status} (process gone)" if run.process_gone() else run.status


def _warn(message: str) -> None:
    print(f"kubelearn runs: warning: {_one_line(message)}", file=sys.stderr)


def _one_line(text: str) -> str:
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


def cmd_list(args: argparse.Namespace) -> int:
    runs = list_runs(args.dir, warn=_warn, summary=True)
    if args.json:
        _print_json([r.to_dict(with_metrics=False) for r in runs])
        return 0
    if not runs:
        print(f"no runs in {args.dir}")
        return 0
    rows = [
        (
            r.id,
            r.name,
            _status(r),
            _time(r.created_at),
            r.last_step(),
            r.last("train").get("loss"),
            r.last("val").get("loss"),
            ", ".join(r.labels) or "-",
        )
        for r in runs
    ]
    header = ("ID", "NAME", "STATUS", "CREATED", "STEP", "LOSS", "VAL LOSS", "LABELS")
    print(format_table(header, rows))
    return 0


def _metric_rows(run: RunRecord) -> list[tuple[Any, ...]]:
    rows = []
    for kind in run.metrics:
        for name in run.metric_names(kind):
            steps, values = run.series(kind, name)
            finite = [v for v in values if math.isfinite(v)]
            rows.append(
                (
                    kind,
                    name,
                    len(values),
                    steps[-1] if steps else None,
                    values[-1] if values else None,
                    min(finite) if finite else None,
                    max(finite) if finite else None,
                )
            )
    return rows


def cmd_show(args: argparse.Namespace) -> int:
    run = find_run(args.run, args.dir, warn=_warn)
    if args.json:
        _print_json(run.to_dict(with_metrics=True))
        return 0
    fields = [
        ("id", run.id),
        ("name", run.name),
        ("status", _status(run)),
        ("created", _time(run.created_at)),
        ("finished", _time(run.finished_at)),
        ("description", run.description or "-"),
        ("labels", ", ".join(run.labels) or "-"),
        ("path", str(run.path)),
    ]
    if run.error:
        fields.append(("error", run.error))
    if run.upload:
        fields.append(("uploaded to", run.upload.get("path")))
    width = max(len(k) for k, _ in fields) + 1
    for key, value in fields:
        print(f"{(key + ':').ljust(width)} {value}")
    print("\nhparams:")
    if run.hparams:
        print(_indent(format_table(("NAME", "VALUE"), sorted(run.hparams.items()))))
    else:
        print("  -")
    print("\nmetrics:")
    rows = _metric_rows(run)
    if rows:
        header = ("TYPE", "METRIC", "RECORDS", "LAST STEP", "LAST", "MIN", "MAX")
        print(_indent(format_table(header, rows)))
    else:
        print("  -")
    return 0


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def compare_data(runs: list[RunRecord]) -> dict[str, Any]:
    """Hyper-parameters and last metric values side by side, with what differs."""
    ids = [r.id for r in runs]
    hkeys = list(dict.fromkeys(k for r in runs for k in r.hparams))
    hparams = {k: {r.id: r.hparams.get(k) for r in runs} for k in hkeys}
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    for r in runs:
        for kind in r.metrics:
            for name, value in r.last(kind).items():
                metrics.setdefault(kind, {}).setdefault(name, dict.fromkeys(ids))
                metrics[kind][name][r.id] = _json_safe(value)
    return {
        "runs": [
            {"id": r.id, "name": r.name, "status": r.status, "last_step": r.last_step()}
            for r in runs
        ],
        "hparams": hparams,
        "differing_hparams": [
            k for k, v in hparams.items() if len({_fmt(x) for x in v.values()}) > 1
        ],
        "metrics": metrics,
    }


def sweep_runs(directory: str) -> list[RunRecord]:
    """The run of each trial of a sweep directory, in trial order (the latest when a trial
    holds several). Nothing outside ``directory`` is read: a trial whose name is not a
    trial name (``..``, a path) is skipped with a warning, as is a link out of it.

    Raises:
      KeyError: when ``directory`` holds no sweep, or no trial has a run.
    """
    from kubelearn.sweep.plot import FACTS_FILE, MAX_FACTS_BYTES

    facts_path = os.path.join(directory, FACTS_FILE)
    try:
        data = paths.read_bytes(directory, facts_path, MAX_FACTS_BYTES)
        trials = bounded_input.load_json(data, facts_path).get("trials")
    except (OSError, ValueError, AttributeError):
        raise KeyError(f"{directory}: no sweep.json of kubelearn sweep local") from None
    runs = []
    for trial in sorted((t for t in trials or [] if isinstance(t, dict)
                         and isinstance(t.get("name"), str) and isinstance(t.get("number"), int)),
                        key=lambda t: t["number"]):
        try:
            name = paths.component(trial["name"], DNS_1035, "trial name",
                                   MAX_DNS_LABEL)
        except ValueError as exc:
            _warn(f"skipping trial {trial['number']} of {facts_path}: {exc}")
            continue
        found = list_runs(os.path.join(directory, name, "runs"), warn=_warn, base=directory,
                          summary=True)
        if found:
            runs.append(load_run(found[-1].path, base=directory, warn=_warn))
    if not runs:
        raise KeyError(f"{directory}: no trial of the sweep has a run")
    return runs


def cmd_compare(args: argparse.Namespace) -> int:
    if bool(args.runs) == bool(args.sweep):
        print("kubelearn runs compare: give runs to compare, or --sweep DIR", file=sys.stderr)
        return 2
    runs = (sweep_runs(args.sweep) if args.sweep
            else [find_run(ref, args.dir, warn=_warn) for ref in args.runs])
    data = compare_data(runs)
    series = None
    if args.output:
        from kubelearn.em.plot import plot_runs

        series = plot_runs(runs, args.output)
    if args.json:
        if args.output:
            data["plot"] = {"output": str(args.output), "series": len(series or [])}
        _print_json(data)
        return 0
    ids = [r.id for r in runs]
    rows: list[list[Any]] = [
        ["name", *(r.name for r in runs)],
        ["status", *(r.status for r in runs)],
        ["step", *(r.last_step() for r in runs)],
    ]
    differing = set(data["differing_hparams"])
    for key, values in data["hparams"].items():
        mark = " *" if key in differing else ""
        rows.append([f"hparams.{key}{mark}", *(values[i] for i in ids)])
    for kind, names in data["metrics"].items():
        for name, values in names.items():
            rows.append([f"{kind}.{name}", *(values[i] for i in ids)])
    print(format_table(("", *ids), rows))
    if differing:
        print("\n* hyper-parameters that differ")
    if args.output:
        print(f"\nwrote {args.output}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from kubelearn.em.plot import plot_runs

    runs = [find_run(ref, args.dir, warn=_warn) for ref in args.runs]
    output = args.output or f"{_file_name(runs[0])}.png"
    series = plot_runs(runs, output)
    drawn = {s.metric for s in series}
    flat = sorted({name for run in runs for kind in run.metrics
                   for name in run.metric_names(kind)} - drawn)
    if args.json:
        _print_json(
            {
                "output": str(output),
                "series": [
                    {"run": s.run, "type": s.type, "metric": s.metric, "points": len(s.steps)}
                    for s in series
                ],
                "flat": flat,
            }
        )
    else:
        print(f"wrote {output} ({len(series)} series)"
              + (f"; flat, not drawn: {', '.join(flat)}" if flat else ""))
    return 0


def _file_name(run: RunRecord) -> str:
    """The run's id, when it can name a file in the working directory (it comes from the
    run's files: never a path)."""
    try:
        return paths.component(run.id, RUN_ID, "run id", 200)
    except ValueError as exc:
        raise MalformedRun(f"{run.path / RUN_FILE}: {exc}; give -o FILE.png") from None


# -- parser -------------------------------------------------------------------------------


def _from_url(func: Any, args: argparse.Namespace) -> int:
    """Runs ``func`` over a local copy of the runs under the URL ``args.dir``; paths of the
    copy in what it prints are shown as the URL."""
    import contextlib
    import io
    import tempfile

    url = str(args.dir).rstrip("/")
    try:
        fs.check(url, "--dir")
    except fs.ModelDirError as exc:
        print(f"kubelearn runs: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="kubelearn-runs-") as copy:
        with contextlib.suppress(FileNotFoundError):  # no runs: the command says so
            fs.download_tree(url, copy)
        args.dir = copy
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = func(args)
        except Exception as exc:
            exc.args = tuple(a.replace(copy, url) if isinstance(a, str) else a
                             for a in exc.args)
            raise
        finally:
            sys.stdout.write(out.getvalue().replace(copy, url))
            sys.stderr.write(err.getvalue().replace(copy, url))
    return code


def _guarded(func: Any) -> Any:
    """Turn the errors a user can cause into one line on stderr: exit code 2 for malformed
    input (a run file that cannot be read), 1 for anything else (no such run, nothing to
    plot, an I/O error); never a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            if model_dir_scheme(str(getattr(args, "dir", ""))):
                args.dir = fs.local_path(args.dir)  # file:///p is the path /p
            if model_dir_scheme(str(getattr(args, "dir", ""))):
                return _from_url(func, args)
            return func(args)
        except KeyError as exc:
            print(f"kubelearn runs: {_one_line(exc.args[0])}", file=sys.stderr)
        except MalformedRun as exc:
            print(f"kubelearn runs: {_one_line(str(exc))}", file=sys.stderr)
            return 2
        except (OSError, ValueError, RuntimeError) as exc:
            print(f"kubelearn runs: {_one_line(str(exc))}", file=sys.stderr)
        except Exception as exc:
            print(f"kubelearn runs: {type(exc).__name__}: {_one_line(str(exc))}",
                  file=sys.stderr)
        return 1

    return run


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``runs`` with its sub-commands to the ``kubelearn`` parser."""
    default_dir = os.environ.get(PARENT_DIR_ENV) or DEFAULT_PARENT_DIR
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        default=argparse.SUPPRESS,
        help=f"directory of the runs (default: ${PARENT_DIR_ENV} or {DEFAULT_PARENT_DIR})",
    )
    common.add_argument("--json", action="store_true", help="print JSON for scripts")

    runs = subparsers.add_parser(
        "runs",
        help="list, show, compare and plot tracked runs",
        description="List, show, compare and plot tracked runs.",
    )
    runs.add_argument(
        "--dir",
        default=default_dir,
        help=f"directory of the runs (default: ${PARENT_DIR_ENV} or {DEFAULT_PARENT_DIR})",
    )
    actions = runs.add_subparsers(dest="runs_command", metavar="ACTION")
    actions.required = True

    p = actions.add_parser("list", parents=[common], help="table of all runs")
    p.set_defaults(func=_guarded(cmd_list))

    p = actions.add_parser("show", parents=[common], help="one run in detail")
    p.add_argument("run", metavar="NAME")
    p.set_defaults(func=_guarded(cmd_show))

    p = actions.add_parser(
        "compare", parents=[common], help="hyper-parameters and final metrics of runs side by side"
    )
    p.add_argument("runs", metavar="NAME", nargs="*")
    p.add_argument(
        "--sweep", metavar="DIR",
        help="compare the trials of a sweep (kubelearn sweep local --dir): each trial's run",
    )
    p.add_argument(
        "-o", "--output", metavar="FILE.png", help="also write a PNG overlaying the runs' metrics"
    )
    p.set_defaults(func=_guarded(cmd_compare))

    p = actions.add_parser(
        "plot", parents=[common], help="PNG of loss and eval metrics against step"
    )
    p.add_argument("runs", metavar="NAME", nargs="+", help="one run, or several to overlay")
    p.add_argument(
        "-o", "--output", metavar="FILE.png", help="where to write the plot (default: <run id>.png)"
    )
    p.set_defaults(func=_guarded(cmd_plot))
    return runs


def build_parser() -> argparse.ArgumentParser:
    """A parser with just the ``runs`` command, as ``kubelearn`` would have it."""
    parser = argparse.ArgumentParser(prog="kubelearn")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
