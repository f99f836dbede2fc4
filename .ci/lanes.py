"""Run pytest jobs in fresh processes on a fixed number of lanes, within a wall-clock budget.

Why not pytest-xdist for the slow proofs: an xdist worker lives for the whole session, and MindSpore keeps every
graph it compiled, so a worker that runs several V4.1 files grows past 10 GB; two such workers exhausted the 24 GiB
CI machine (the kernel evicted code pages, every compile slowed 8x, then a worker was killed and xdist's loadfile
scheduler hung on the replacement). Here every job is its own `pytest` process, so memory goes back after each file.

usage: lanes.py --lanes 2 --budget SECONDS JOBS_FILE
JOBS_FILE: one job a line, `<estimated seconds> <pytest args...>`, `#` comments; longest jobs start first.
Prints one line per finished job (status, seconds, args), the whole output of a failed job, and a summary table;
exits 1 if any job failed or the budget ran out (the jobs still running are interrupted and named).
"""
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time

import click


def _jobs(path):
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            est, _, args = line.partition(" ")
            try:
                out.append((float(est), shlex.split(args)))
            except ValueError:
                raise click.ClickException(f"{path}:{n}: a job line is '<estimated seconds> <pytest args>'")
    return sorted(out, key=lambda j: -j[0])


@click.command()
@click.option("--lanes", type=click.IntRange(min=1), default=2, show_default=True, help="Jobs that run at once.")
@click.option("--budget", type=float, required=True, help="Wall-clock seconds for all jobs.")
@click.argument("jobs_file", type=click.Path(exists=True, dir_okay=False))
def main(lanes, budget, jobs_file):
    queue = _jobs(jobs_file)
    py = sys.executable
    t0 = time.monotonic()
    running, done = [], []          # running: (proc, args, log, start)
    started = 0
    logdir = tempfile.mkdtemp(prefix="ci-lanes-")
    print(f"{len(queue)} jobs on {lanes} lanes, budget {budget:.0f} s, logs in {logdir}", flush=True)
    while queue or running:
        while queue and len(running) < lanes:
            est, args = queue.pop(0)
            started += 1
            log = open(os.path.join(logdir, f"job{started:02d}.log"), "w+")
            p = subprocess.Popen([py, "-m", "pytest", "-q", *args], stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
            running.append((p, args, log, time.monotonic()))
        time.sleep(1)
        for job in list(running):
            p, args, log, start = job
            if p.poll() is None:
                continue
            running.remove(job)
            secs = time.monotonic() - start
            status = {0: "PASS", 5: "NONE"}.get(p.returncode, "FAIL")   # 5: pytest collected nothing
            done.append((status, secs, args))
            print(f"{status} {secs:6.0f} s  {shlex.join(args)}", flush=True)
            log.seek(0)
            text = log.read()
            if status != "PASS":
                print(text, flush=True)
            else:                  # skip reasons, the five slowest phases (pytest --durations), the summary line
                lines = text.splitlines()
                slowest = [x for x in lines if re.match(r"\d+\.\d+s (call|setup|teardown) ", x)][:5]
                for line in [x for x in lines if x.startswith("SKIPPED")] + slowest + lines[-1:]:
                    print("      " + line, flush=True)
            log.close()
        if time.monotonic() - t0 > budget and running:
            for p, args, log, start in running:
                os.killpg(p.pid, signal.SIGINT)      # pytest prints where it was
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                log.seek(0)
                print(f"TIMEOUT after {time.monotonic() - start:.0f} s  {shlex.join(args)}\n{log.read()[-4000:]}")
                done.append(("TIMEOUT", time.monotonic() - start, args))
            running = []
            for est, args in queue:
                done.append(("NOT RUN", 0.0, args))
            queue = []
    wall = time.monotonic() - t0
    print(f"\n{'status':8} {'seconds':>8}  job")
    for status, secs, args in sorted(done, key=lambda d: -d[1]):
        print(f"{status:8} {secs:8.0f}  {shlex.join(args)}")
    bad = [d for d in done if d[0] != "PASS"]
    print(f"{len(done) - len(bad)} of {len(done)} jobs passed in {wall:.0f} s wall on {lanes} lanes")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
