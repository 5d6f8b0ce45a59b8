"""The ``hypocheck`` command: ``init`` writes a suite config from run dirs and an ``.h5ad`` file; ``probes`` lists
what a hypothesis can measure; ``gate`` ends with a failure status when a run's summary holds defects.

This module parses arguments, dispatches and formats; the reading and writing behind ``init`` lives in the
backend (``hypocheck.fixtures.init``), imported only when ``init`` runs, so ``hypocheck probes`` never loads
torch. A user error prints one line saying what to do and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import ConfigError, HypocheckError

USAGE_ERROR = 2

MAIN_HELP = """\
Check scientific claims about single-cell perturbation models. A claim is a YAML hypothesis file: a probe,
the cases it runs over, and what its metrics must show. pytest runs the hypotheses against the models and
data named in a suite config (suite.yaml)."""

MAIN_EPILOG = """\
start here:
  hypocheck init --run-dir fewshot=runs/fewshot --data data.h5ad
  python -m pytest hypotheses/example.yaml --suite-config suite.yaml

Each command has its own --help."""

INIT_HELP = """\
Write a suite config from arc-state run dirs and the .h5ad file they were trained on, plus an example
hypothesis (hypotheses/example.yaml beside the config, unless one exists).

Each run dir is only checked and read for its sizes and data settings (config.yaml, var_dims.pkl); no model
is built. The .h5ad file's obs table and matrix shapes are read, never its expression. init finds the
column of the knocked-down gene, of the cell line and of the batch, the expression matrix the models read,
the label of control cells, and the cell lines that have control cells. It prints every choice, why it made
it and what else it saw; when the files cannot settle one, it stops and names the option that does. The
config is then loaded back to prove that it is valid."""

INIT_EPILOG = """\
examples:
  hypocheck init --run-dir fewshot=runs/fewshot --run-dir zeroshot=runs/zeroshot --data replogle.h5ad
  hypocheck init --run-dir fewshot=runs/fewshot --data data.h5ad --batch-key none --control-label ctrl
  hypocheck init --run-dir fewshot=runs/fewshot --data data.h5ad --gene-sets pathways.gmt"""

PROBES_HELP = """\
List every registered probe: what it measures, its case axes (the `cases:` a hypothesis crosses), the
arrays it is given, its `inputs:` options (how those arrays are built) and `params:` (its settings), with
type, default and meaning, and the metrics `expect:` can judge (with the effect and p metric)."""

PAGE_INTRO = """\
A hypothesis names one probe (`probe:`), crosses its case axes (`cases:`, one test per combination), sets
its parameters (`params:`), says how its input arrays are built (`inputs:`) and judges the metrics it
reports (`expect:`). Every metric `m` can also be named as `m_ci_low` / `m_ci_high`, the bounds of its
confidence interval where the probe reports one. The effect metric is reported as each case's effect size;
`significant` compares the p metric with the hypothesis's `alpha`."""

GATE_HELP = """\
Read a run's summary.json and exit with status 1 when it holds a defect: a case that could not run (error) or
a verdict that differs from the planted truth a hypothesis declares (expected:). A claim that fails is a
finding, not a defect: it does not fail the gate (pytest's own exit status does fail on it). Exit status 2
when there is no summary."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line that points at --help, with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _fill(text: str, width: int = 79) -> str:
    """Each paragraph of ``text`` wrapped to ``width`` columns (help descriptions)."""
    return "\n\n".join(textwrap.fill(" ".join(p.split()), width) for p in text.split("\n\n"))


def build_parser() -> argparse.ArgumentParser:
    """The ``hypocheck`` command line."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="hypocheck", description=_fill(MAIN_HELP), epilog=MAIN_EPILOG, formatter_class=fmt)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command", required=True)

    init = commands.add_parser("init", help="write a suite config and an example hypothesis from arc-state run "
                               "dirs and an .h5ad file", description=_fill(INIT_HELP), epilog=INIT_EPILOG,
                               formatter_class=fmt)
    init.add_argument("--run-dir", action="append", required=True, metavar="NAME=DIR",
                      help="an arc-state `state tx train` output directory, and the model name hypotheses use "
                      "for it (repeat for several models; NAME defaults to the folder's name)")
    init.add_argument("--data", required=True, type=Path, metavar="FILE.h5ad",
                      help="the AnnData file of control and knockdown cells")
    init.add_argument("--out", type=Path, default=Path("suite.yaml"), metavar="FILE",
                      help="the suite config to write (default: suite.yaml)")
    init.add_argument("--force", action="store_true", help="overwrite the suite config if it exists")
    init.add_argument("--gene-sets", action="append", type=Path, default=[], metavar="FILE",
                      help="a gene set file (GMT, two-column TSV or YAML) for the config's gene_sets: {from: …}; "
                      "its sets with enough knockdowns join the example (repeat for several files)")
    settle = init.add_argument_group("settle a choice (each is found in the files when not given)")
    settle.add_argument("--gene-key", metavar="COLUMN", help="obs column of the knocked-down gene")
    settle.add_argument("--cell-line-key", metavar="COLUMN", help="obs column of the cell line")
    settle.add_argument("--batch-key", metavar="COLUMN", help="obs column of the batch, or 'none' if there is none")
    settle.add_argument("--expr-key", metavar="KEY", help="obsm key of the expression the models read, or X for .X")
    settle.add_argument("--control-label", metavar="LABEL", help="the gene column's value that marks control cells")
    settle.add_argument("--cell-lines", metavar="A,B", help="comma-separated cell lines to run cases on "
                        "(default: every cell line with control cells)")
    init.set_defaults(handler=_init)

    probes = commands.add_parser("probes", help="list the probes: case axes, input arrays, inputs, params, metrics",
                                 description=_fill(PROBES_HELP), formatter_class=fmt)
    form = probes.add_mutually_exclusive_group()
    form.add_argument("--markdown", action="store_true", help="write a Markdown page (docs/probes.md is one)")
    form.add_argument("--json", action="store_true", help="write JSON, for programs")
    probes.set_defaults(handler=_probes)

    gate = commands.add_parser("gate", help="exit non-zero when a run's summary holds errors or verdicts that "
                               "differ from the planted truth", description=_fill(GATE_HELP), formatter_class=fmt)
    gate.add_argument("summary", nargs="?", type=Path, default=Path("reports/summary.json"), metavar="SUMMARY",
                      help="the run's summary.json (default: reports/summary.json)")
    gate.set_defaults(handler=_gate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; 0 on success, 2 on a user error (one line on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except HypocheckError as exc:
        return _fail(parser.prog, args.command, _one_line(exc))
    except BrokenPipeError:  # the reader stopped early (`hypocheck probes | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        return _fail(parser.prog, args.command, f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))


def _fail(prog: str, command: str, message: str) -> int:
    print(f"{prog} {command}: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def _one_line(exc: HypocheckError) -> str:
    text = f"{exc.location}: {exc.message}" if exc.location else exc.message
    if exc.hint:
        text += f"; {exc.hint}"
    return " ".join(text.split())


# ------------------------------------------------------------------ init


def _run_dirs(values: Sequence[str]) -> dict[str, Path]:
    """``NAME=DIR`` (or ``DIR``, named after its folder) → {name: path}; a repeated name is an error."""
    run_dirs: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or "/" in name:
            name, path = Path(value).resolve().name, value
        if not path:
            raise ConfigError(f"--run-dir {value!r} names no directory", hint="write --run-dir NAME=DIR")
        if name in run_dirs:
            raise ConfigError(f"--run-dir: model name {name!r} is given twice",
                              hint="give each run dir its own name with --run-dir NAME=DIR")
        run_dirs[name] = Path(path)
    return run_dirs


def _init(args: argparse.Namespace) -> int:
    from hypocheck.fixtures.init import init_suite

    cell_lines = [c.strip() for c in args.cell_lines.split(",") if c.strip()] if args.cell_lines else None
    init_suite(
        _run_dirs(args.run_dir), args.data, args.out, force=args.force, echo=print,
        gene_key=args.gene_key, cell_line_key=args.cell_line_key, batch_key=args.batch_key,
        expr_key=args.expr_key, control_label=args.control_label, cell_lines=cell_lines,
        gene_set_files=args.gene_sets,
    )
    return 0


# ------------------------------------------------------------------ gate


def _gate(args: argparse.Namespace) -> int:
    from .gate import gate

    return gate(args.summary)


# ------------------------------------------------------------------ probes


def _probes(args: argparse.Namespace) -> int:
    from .schema import probe_catalog

    catalog = probe_catalog()
    if args.json:
        text = json.dumps({"probes": catalog}, indent=2, ensure_ascii=False) + "\n"
    elif args.markdown:
        text = probes_markdown(catalog)
    else:
        text = probes_text(catalog)
    sys.stdout.write(text)
    return 0


def _default(entry: dict[str, Any]) -> str:
    if entry["required"]:
        return "required"
    value = entry["default"]
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _listing(names: Sequence[str], empty: str = "none") -> str:
    return ", ".join(names) if names else empty


def probes_text(catalog: Sequence[dict[str, Any]]) -> str:
    """The probes as plain text, one block each."""
    out = [textwrap.fill(f"{len(catalog)} probes. {' '.join(PAGE_INTRO.split())}".replace("`", ""), 100), ""]
    for probe in catalog:
        out += [
            probe["name"],
            f"  {probe['description']}",
            f"  case axes     {_listing(probe['axes'], 'none: one test per hypothesis')}",
            f"  input arrays  {_listing(probe['input_arrays'])}",
            textwrap.fill(_listing(probe["metrics"]), 100, initial_indent="  metrics       ",
                          subsequent_indent=" " * 16, break_on_hyphens=False),
            f"  effect        {probe['effect']}",
            f"  p             {probe['p'] or 'none'}",
        ]
        for section in ("params", "inputs"):
            fields = probe[section]
            if not fields:
                out.append(f"  {section}: none")
                continue
            out.append(f"  {section}:")
            widths = [max(len(f[k]) for f in fields) for k in ("name", "type")]
            width_default = max(len(_default(f)) for f in fields)
            for f in fields:
                out.append(f"    {f['name'].ljust(widths[0])}  {f['type'].ljust(widths[1])}  "
                           f"{_default(f).ljust(width_default)}  {f['description']}".rstrip())
        out.append("")
    return "\n".join(out)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _code(names: Sequence[str], empty: str = "none") -> str:
    return ", ".join(f"`{n}`" for n in names) if names else empty


def probes_markdown(catalog: Sequence[dict[str, Any]]) -> str:
    """The probes as a Markdown page (``docs/probes.md``)."""
    out = [
        "# Probes",
        "",
        "<!-- Generated by `hypocheck probes --markdown` (`make schema` rewrites it): edit the probes, not this "
        "page. -->",
        "",
        PAGE_INTRO,
        "",
        "| Probe | Case axes | What it measures |",
        "|---|---|---|",
    ]
    out += [f"| [`{p['name']}`](#{p['name']}) | {_cell(_listing(p['axes']))} | {_cell(p['description'])} |"
            for p in catalog]
    for probe in catalog:
        p_metric = f"`{probe['p']}`" if probe["p"] else "none"
        out += [
            "",
            f"## `{probe['name']}`",
            "",
            probe["description"],
            "",
            f"- **Case axes:** {_code(probe['axes'], 'none (one test per hypothesis)')}",
            f"- **Input arrays:** {_code(probe['input_arrays'])}",
            f"- **Metrics:** {_code(probe['metrics'])}",
            f"- **Effect metric:** `{probe['effect']}`; **p metric:** {p_metric}",
        ]
        for section in ("params", "inputs"):
            out += ["", f"**`{section}:`**", ""]
            if not probe[section]:
                out.append("None.")
                continue
            out += ["| Name | Type | Default | Meaning |", "|---|---|---|---|"]
            out += [f"| `{f['name']}` | {_cell(f['type'])} | {_cell(_default(f))} | {_cell(f['description'])} |"
                    for f in probe[section]]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
