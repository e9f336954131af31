"""Train on a Cloud TPU VM pod: create (or reuse) it, ship the code, install, run, delete.

Every step is a ``gcloud compute tpus tpu-vm ...`` command. :func:`plan` builds them from
the parsed flags (a pure function, tested in ``tests/test_launch.py``); :func:`main` prints
them (``--dry-run``) or runs them one after the other, stopping at the first failure.
Arguments after ``--`` go to ``ebm_vs_score.main`` unchanged::

    python launch/tpu_pod.py --name=ebm-v4 --zone=us-central2-b \\
        --config=configs/cifar_score.py --workdir=gs://BUCKET/runs/cifar_score \\
        --delete-after -- --config.training.batch_size=512

On the pod, every worker runs ``python3 -m ebm_vs_score.main ... --distributed``; JAX
finds the other workers from the TPU metadata. Worker 0's output streams to this
terminal (``--all-logs``: every worker's, each line prefixed with its worker number) and
each worker keeps a full log in ``~/ebm_vs_score_logs/`` on its own disk. Nothing here
needs the cloud SDK to be imported or tested; running (not ``--dry-run``) needs ``gcloud``.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# What a worker needs to `pip install -e .` and to find `--config=configs/...`.
COPY_PATHS = ("pyproject.toml", "README.md", "ebm_vs_score", "configs")
MODES = ("train", "eval", "sample", "study")
LOG_DIR = "$HOME/ebm_vs_score_logs"
# ebm_vs_score.errors.PREEMPTED_EXIT_STATUS (EX_TEMPFAIL): the run saved its checkpoint on
# SIGTERM; rerunning the same launch resumes it. (Not imported: this runs without JAX.)
PREEMPTED_EXIT_STATUS = 75
# This worker's index in the pod, from the Cloud TPU metadata (what JAX itself reads).
WORKER_ID = ("${TPU_WORKER_ID:-$(curl -sf -m 10 -H Metadata-Flavor:Google http://metadata."
             "google.internal/computeMetadata/v1/instance/attributes/agent-worker-number "
             "|| echo 0)}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parses launcher flags; everything after the first ``--`` becomes ``main_args``."""
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(
        prog="launch/tpu_pod.py", description=__doc__.split("\n\n")[0],
        epilog="Arguments after `--` are passed to ebm_vs_score.main, e.g. "
               "`-- --config.training.batch_size=512`.")
    pod = parser.add_argument_group("TPU VM")
    pod.add_argument("--name", required=True, help="TPU VM name.")
    pod.add_argument("--zone", required=True, help="e.g. us-central2-b (v4), us-west4-a (v5e).")
    pod.add_argument("--project", default=None, help="GCP project (default: gcloud's).")
    pod.add_argument("--accelerator-type", default="v4-32", help="Default: %(default)s.")
    pod.add_argument("--version", default="tpu-ubuntu2204-base",
                     help="TPU software version (VM image). Default: %(default)s.")
    pod.add_argument("--spot", action="store_true", help="Create a Spot (preemptible) TPU VM.")
    pod.add_argument("--reuse", action="store_true", help="Use an existing TPU VM; no create.")
    pod.add_argument("--delete-after", action="store_true",
                     help="Delete the TPU VM when the run ends (also when it fails).")
    code = parser.add_argument_group("code")
    code.add_argument("--install", default="copy", metavar="copy|git+URL[@REF]",
                      help="`copy` (default): scp this checkout to every worker; "
                           "`git+URL[@REF]`: git clone URL (at REF) on every worker.")
    code.add_argument("--src", type=Path, default=REPO_ROOT,
                      help="Local checkout to copy (default: this repository).")
    code.add_argument("--remote-dir", default="ebm_vs_score",
                      help="Code directory on the workers, relative to $HOME or absolute "
                           "(replaced on every launch). Default: %(default)s.")
    code.add_argument("--jax", default=None, help="a pinned pip spec of JAX for TPUs, e.g. "
                      "'jax[tpu]==0.4.35' (default: the package's own `tpu` extra).")
    code.add_argument("--python", default="python3", help="Python on the workers.")
    code.add_argument("--skip-install", action="store_true",
                      help="Do not run pip (the package is already installed editable).")
    run = parser.add_argument_group("run")
    run.add_argument("--config", required=True, help="Config file, relative to the repo root.")
    run.add_argument("--workdir", required=True,
                     help="Shared by all workers, so a gs://BUCKET/PATH on a multi-host pod.")
    run.add_argument("--mode", default="train", choices=MODES)
    run.add_argument("--all-logs", action="store_true",
                     help="Stream every worker's output, prefixed '[worker N]' (default: 0's).")
    run.add_argument("--dry-run", action="store_true", help="Print the commands; run nothing.")
    args = parser.parse_args(argv[:split])
    args.main_args = argv[split + 1:]
    if args.remote_dir.startswith("~"):
        parser.error("--remote-dir: give it relative to $HOME (no '~') or absolute")
    if args.install != "copy" and not args.install.startswith("git+"):
        parser.error(f"--install={args.install!r}: use 'copy' or 'git+URL[@REF]'")
    return args


def split_git_spec(spec: str) -> tuple[str, str | None]:
    """``git+URL[@REF]`` -> ``(URL, REF)``; an ``@`` before the last ``/`` is a user name."""
    url = spec.removeprefix("git+")
    head, _, last = url.rpartition("/")
    if "@" in last:
        last, ref = last.rsplit("@", 1)
        return f"{head}/{last}", ref
    return url, None


def gcloud(*words: str, args: argparse.Namespace) -> list[str]:
    """``gcloud compute tpus tpu-vm WORDS --zone Z [--project P]``."""
    project = [f"--project={args.project}"] if args.project else []
    return ["gcloud", "compute", "tpus", "tpu-vm", *words, f"--zone={args.zone}", *project]


def on_all_workers(script: str, args: argparse.Namespace) -> list[str]:
    """An ``ssh --worker=all`` command that runs the shell ``script`` on every worker."""
    return gcloud("ssh", args.name, "--worker=all", f"--command={script}", args=args)


def create_command(args: argparse.Namespace) -> list[str]:
    spot = ["--spot"] if args.spot else []
    return gcloud("create", args.name, f"--accelerator-type={args.accelerator_type}",
                  f"--version={args.version}", *spot, args=args)


def code_commands(args: argparse.Namespace) -> list[list[str]]:
    """Puts a fresh copy of the code in ``--remote-dir`` on every worker."""
    remote = shlex.quote(args.remote_dir)
    if args.install == "copy":
        sources = [str(Path(args.src) / p) for p in COPY_PATHS]
        return [
            on_all_workers(f"rm -rf {remote} && mkdir -p {remote}", args),
            gcloud("scp", "--recurse", *sources, f"{args.name}:{args.remote_dir}",
                   "--worker=all", args=args),
        ]
    url, ref = split_git_spec(args.install)
    clone = f"rm -rf {remote} && git clone -q {shlex.quote(url)} {remote}"
    if ref:
        clone += f" && git -C {remote} checkout -q {shlex.quote(ref)}"
    return [on_all_workers(clone, args)]


def install_command(args: argparse.Namespace) -> list[str]:
    pin = [args.jax] if args.jax else []
    pip = shlex.join([args.python, "-m", "pip", "install", "-q", "-e", ".[tpu]", *pin])
    return on_all_workers(f"cd {shlex.quote(args.remote_dir)} && {pip}", args)


def main_command(args: argparse.Namespace) -> list[str]:
    """``python3 -m ebm_vs_score.main ... --distributed EXTRA`` as an argv list."""
    return [args.python, "-m", "ebm_vs_score.main", f"--config={args.config}",
            f"--workdir={args.workdir}", f"--mode={args.mode}", "--distributed",
            *args.main_args]


def run_script(args: argparse.Namespace) -> str:
    """The shell script each worker runs: the program, its log file, the stream filter.

    The exit status is the program's (``pipefail``; TPU VM login shells are bash).
    """
    stream = ("sed -u \"s/^/[worker $W] /\"" if args.all_logs
              else "if [ \"$W\" = 0 ]; then cat; else cat >/dev/null; fi")
    log = f"{LOG_DIR}/{args.name}.worker$W.log"
    return (f"set -o pipefail; W={WORKER_ID}; mkdir -p {LOG_DIR} && "
            f"cd {shlex.quote(args.remote_dir)} && "
            f"PYTHONUNBUFFERED=1 {shlex.join(main_command(args))} 2>&1 "
            f"| tee -a \"{log}\" | {stream}")


def delete_command(args: argparse.Namespace) -> list[str]:
    return gcloud("delete", args.name, "--quiet", args=args)


def plan(args: argparse.Namespace) -> list[list[str]]:
    """Every command of the launch, in order; pure (reads no files, runs nothing)."""
    commands = [] if args.reuse else [create_command(args)]
    commands += code_commands(args)
    if not args.skip_install:
        commands.append(install_command(args))
    commands.append(on_all_workers(run_script(args), args))
    if args.delete_after:
        commands.append(delete_command(args))
    return commands


def execute(commands: list[list[str]], *, delete_after: bool) -> int:
    """Runs ``commands`` in order until one fails; with ``delete_after`` the last (the
    delete) runs in any case, so that a failed run leaves no TPU VM billing."""
    body, cleanup = (commands[:-1], commands[-1:]) if delete_after else (commands, [])
    status = 0
    try:
        for command in body:
            print("+", shlex.join(command), file=sys.stderr, flush=True)
            status = subprocess.run(command, check=False).returncode
            if status == PREEMPTED_EXIT_STATUS:
                print("preempted: the run saved its checkpoint in the workdir; rerun the same "
                      "command (add --reuse if the TPU VM still exists) to resume",
                      file=sys.stderr)
                break
            if status != 0:
                print(f"error: exit status {status} from: {shlex.join(command)}",
                      file=sys.stderr)
                break
    finally:
        for command in cleanup:
            print("+", shlex.join(command), file=sys.stderr, flush=True)
            deleted = subprocess.run(command, check=False).returncode
            status = status or deleted
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.workdir.startswith("gs://"):
        print(f"warning: --workdir={args.workdir} is not on GCS; on a multi-host pod every "
              "worker must see the same workdir (use gs://BUCKET/PATH)", file=sys.stderr)
    commands = plan(args)
    if args.dry_run:
        print("\n".join(shlex.join(c) for c in commands))
        return 0
    return execute(commands, delete_after=args.delete_after)


if __name__ == "__main__":
    sys.exit(main())
