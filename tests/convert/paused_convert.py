"""`python paused_convert.py INDEX MARKER convert ARGS...`: the converter CLI, except that whichever worker writes
planned file INDEX stops for good after that file's first tensor group - the file half written under its temporary
name - and creates MARKER; the test then kills the process group (tests/convert/test_convert_resume.py).

The pause is injected here, in the test's own launcher, by wrapping the `write_file` the forward and reverse
converters call (workers are forked, so they inherit the wrapper); the converter itself has no test hook."""
import os
import sys
import time

from ascend_v4.convert import cli, reverse, run, writer


def _pausing(index: int, marker: str):
    real = writer.write_file

    def write_file(root, i, out, produce, *a, **kw):
        if i != index:
            return real(root, i, out, produce, *a, **kw)

        def produce_then_pause(g):
            yield from produce(g)            # every chunk of the first group is handed to the file's sink
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            while True:                      # until the test kills the process group
                time.sleep(1)
        return real(root, i, out, produce_then_pause, *a, **kw)
    return write_file


if __name__ == "__main__":
    index, marker = int(sys.argv[1]), sys.argv[2]
    run.write_file = reverse.write_file = _pausing(index, marker)
    sys.argv = [sys.argv[0]] + sys.argv[3:]
    cli._standalone()
