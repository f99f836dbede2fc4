"""One error contract for every `ascend-v4` command: a known failure prints one `error: …` line naming the
problem and the fix, and exits 2 (click's usage errors exit 2 too); nothing half-written is left behind.

Known failures are our own error classes plus the OS errors a bad path produces. The classes are imported
lazily, so a command's module loads without MindSpore; a family that is not installed is skipped.
"""
from __future__ import annotations

import functools
import importlib
import sys

import click

# (module, class names) relative to the ascend_v4 package
_OURS = (
    (".config", ("ConfigError",)),
    (".checkpoint", ("CheckpointError",)),
    (".dump", ("DumpError",)),
    (".compare", ("CompareError",)),
    (".weights", ("WeightError",)),
    (".convert.errors", ("ConvertError",)),
    (".graph.export", ("ExportError",)),
    (".train.loop", ("TrainConfigError",)),
    (".train.state", ("TrainStateError",)),
    (".train.data", ("DataError",)),
    (".serve.engine", ("ServeError",)),
    (".serve.sampling", ("SamplingError",)),
    (".serve.tokenizer", ("TokenizerError",)),
    (".serve.cli", ("GenerateError",)),
    (".ops.registry", ("BackendError",)),
    (".runtime", ("DeviceError",)),
    (".ops.ascend_call", ("ContractError",)),
)
_OS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


@functools.lru_cache(maxsize=None)
def known_errors() -> tuple:
    errs = list(_OS)
    for mod, names in _OURS:
        try:
            m = importlib.import_module(mod, "ascend_v4")
        except ImportError:  # pragma: no cover - optional family not importable here
            continue
        errs += [getattr(m, n) for n in names if hasattr(m, n)]
    return tuple(errs)


def fail(msg: str) -> "None":
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


def friendly(fn=None, *, disk_full_hint: str = "free space and rerun"):
    """Turn known failures into one `error:` line and exit code 2; a full disk gets its own message.
    Use as `@friendly` or `@friendly(disk_full_hint="...")`."""
    if fn is None:
        return functools.partial(friendly, disk_full_hint=disk_full_hint)

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except known_errors() as e:
            text = str(e).strip()
            if isinstance(e, OSError) and e.strerror and e.filename and e.filename not in text:
                text = f"{e.filename}: {e.strerror}"
            fail(text.splitlines()[0] if text else type(e).__name__)
        except OSError as e:
            if e.errno == 28:   # ENOSPC
                fail(f"disk full while writing ({e.filename or 'output'}); {disk_full_hint}")
            raise
    return wrapper


class Notice(UserWarning):
    """Something ignored or left out that the user should know about (an unknown config key, a file not copied).
    The CLI prints it as one `warning: …` line."""


def show_warnings_as_lines() -> None:
    """Our warnings (Notice and its subclasses) print as one `warning: …` line, not Python's two-line
    `file:line: Category: …` form; other warnings keep the default format."""
    import warnings
    default = warnings.showwarning
    if getattr(default, "_ascend_v4", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, Notice):
            click.echo(f"warning: {message}", err=True)
        else:
            default(message, category, filename, lineno, file, line)
    show._ascend_v4 = True
    warnings.showwarning = show
