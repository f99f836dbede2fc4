"""``ascend-v4 migrate``: click command group (attached to the main CLI as ``ascend-v4 migrate ...``).

Exit codes (the same contract as every ``ascend-v4`` command): 0 scan done (findings or not), 2 bad input
(missing path, unreadable rules file, output not writable, --apply target not usable) with one ``error: ...``
line, or a usage error (click), 3 ``--fail-on`` threshold reached.
"""
from __future__ import annotations

import sys

import click

from .apply import ApplyError, apply_rewrites, default_apply_dir
from .findings import SEVERITIES, SEVERITY_RANK
from .report import FORMATS, MSFT_FILES, render, render_left, summary_line, write_atomic, write_msft_set
from .rules import RuleError, load_rules
from .scanner import ScanPathError, scan_path

EXIT_BAD_INPUT = 2
EXIT_FAIL_ON = 3


class BadInput(click.ClickException):
    exit_code = EXIT_BAD_INPUT

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _write(path: str, text: str) -> None:
    """Atomic (report.write_atomic: temporary name + fsync + rename), so a full disk leaves no partial report."""
    try:
        write_atomic(path, text)
    except OSError as e:
        raise BadInput(f"cannot write {path}: {e.strerror or e}")


@click.group(name="migrate")
def migrate() -> None:
    """CUDA/PyTorch -> Ascend migration analysis (see tools/migrate/README.md)."""


@migrate.command("scan")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="Report format.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=str),
              help="Write the report to FILE instead of stdout.")
@click.option("--msft-dir", type=click.Path(file_okay=False, path_type=str),
              help=f"Also write the msFmkTransplt-style set ({', '.join(MSFT_FILES)}) into DIR.")
@click.option("--min-severity", type=click.Choice(SEVERITIES), default="fine", show_default=True,
              help="Hide findings below this severity (blocker > change > fine).")
@click.option("--rules", "extra_rules", multiple=True, type=click.Path(dir_okay=False, path_type=str),
              help="Extra rules YAML (same schema; same id replaces a built-in rule). Repeatable.")
@click.option("--exclude", multiple=True, metavar="GLOB",
              help="Skip paths matching GLOB (relative path or base name). Repeatable.")
@click.option("--apply", "do_apply", is_flag=True,
              help="Write a copy with the mechanical rewrites applied, plus a unified diff.")
@click.option("--apply-dir", type=click.Path(path_type=str),
              help="Where --apply puts the copy [default: PATH_npu next to PATH].")
@click.option("--diff", "diff_path", type=click.Path(dir_okay=False, path_type=str),
              help="Where --apply writes the diff [default: <apply-dir>.diff].")
@click.option("--force", is_flag=True, help="Let --apply replace a non-empty --apply-dir.")
@click.option("--fail-on", type=click.Choice(["never", "blocker", "change"]), default="never", show_default=True,
              help="Exit 3 if a finding at or above this severity exists (for CI gates).")
def scan(path, fmt, out_path, msft_dir, min_severity, extra_rules, exclude, do_apply, apply_dir, diff_path,
         force, fail_on):
    """Scan PATH (a PyTorch/CUDA project or file) for code that must change on Ascend."""
    try:
        rules = load_rules(extra_rules)
    except RuleError as e:
        raise BadInput(str(e))
    try:
        result = scan_path(path, rules, exclude=exclude, keep_sources=do_apply)
    except ScanPathError as e:
        raise BadInput(str(e))

    diff_note = ""
    if do_apply:
        apply_dir = apply_dir or default_apply_dir(path)
        diff_path = diff_path or apply_dir.rstrip("/\\") + ".diff"
        try:
            diff, changed = apply_rewrites(result, path, apply_dir, force=force)
        except (ApplyError, OSError) as e:
            raise BadInput(f"--apply: {e}")
        _write(diff_path, diff)
        diff_note = f"--apply: rewrote {len(changed)} file(s) in {apply_dir}; diff: {diff_path}"
        if result.left:
            left_path = apply_dir.rstrip("/\\") + ".left.csv"
            _write(left_path, render_left(result))
            diff_note += (f"\n--apply: left {len(result.left)} statement(s) unrewritten (CUDA references without a "
                          f"certain NPU equivalent; rewriting the rest would mix cuda and npu): {left_path}")

    threshold = SEVERITY_RANK[min_severity]
    result.findings = [f for f in result.findings if SEVERITY_RANK[f.severity] <= threshold]
    text = render(result, fmt)
    if out_path:
        _write(out_path, text)
    else:
        click.echo(text, nl=False)
    if msft_dir:
        try:
            write_msft_set(result, msft_dir)
        except OSError as e:
            raise BadInput(f"cannot write {msft_dir}: {e.strerror or e}")
    # Status on stderr so stdout stays a clean report for pipes (json | jq, csv > file).
    if out_path or msft_dir:
        click.echo(summary_line(result), err=True)
    if diff_note:
        click.echo(diff_note, err=True)
    if fail_on != "never" and any(SEVERITY_RANK[f.severity] <= SEVERITY_RANK[fail_on] for f in result.findings):
        sys.exit(EXIT_FAIL_ON)


@migrate.command("rules")
@click.option("--rules", "extra_rules", multiple=True, type=click.Path(dir_okay=False, path_type=str),
              help="Extra rules YAML to merge, as for scan.")
def list_rules(extra_rules):
    """List the rule table (id, kind, severity, effort, what it matches)."""
    try:
        rules = load_rules(extra_rules)
    except RuleError as e:
        raise BadInput(str(e))
    for r in rules.rules:
        what = (", ".join(r.patterns) or r.attr or (r.regex.pattern if r.regex else "") or ",".join(r.files)
                or r.kind)
        click.echo(f"{r.id:<34} {r.kind:<11} {r.severity:<8} {r.effort:<8} {what[:90]}")


def main() -> None:  # pragma: no cover - convenience for `python -m`
    migrate(prog_name="ascend-v4 migrate")


if __name__ == "__main__":  # pragma: no cover
    main()
