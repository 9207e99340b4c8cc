"""`snnet-ray submit`: `ray job submit` with the working-dir upload checked first.

    snnet-ray submit [--address URL] [--runtime-env cluster/runtime_env.yaml] [--working-dir .] \\
        [--submission-id ID] [--no-wait] [--check] -- python jobs/train_swin.py --config ...

Refuses (exit 2) a working dir whose upload would exceed Ray's 100 MiB, naming the largest folders;
`--check` prints what would be uploaded and stops. Otherwise runs `ray job submit` with the same
arguments (an argument list, never a shell line).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "submit",
        help="ray job submit, refusing uploads over Ray's 100 MiB limit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--address", default=None, help="Ray dashboard address (default: $RAY_ADDRESS)")
    parser.add_argument("--runtime-env", default="cluster/runtime_env.yaml", help="runtime env YAML (excludes)")
    parser.add_argument("--working-dir", default=".", help="the folder to upload (default: the checkout)")
    parser.add_argument("--submission-id", default=None)
    parser.add_argument("--no-wait", action="store_true", help="do not follow the job's logs")
    parser.add_argument("--max-upload-mib", type=float, default=100.0, help="refuse uploads larger than this")
    parser.add_argument("--check", action="store_true", help="print what would be uploaded, submit nothing")
    parser.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- then the job's command")
    parser.set_defaults(handler=_submit)


def _submit(args: argparse.Namespace) -> int:
    from snnet_ray.submit.upload import MIB, check_upload, load_runtime_env

    entrypoint = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else args.entrypoint
    if not entrypoint and not args.check:
        raise ValueError("give the job's command after --, e.g. -- python jobs/train_swin.py --config tiny_digits")
    if not 0 < args.max_upload_mib <= 100:
        raise ValueError(f"--max-upload-mib must be in (0, 100] (Ray's limit), got {args.max_upload_mib}")
    env = load_runtime_env(args.runtime_env)
    plan = check_upload(args.working_dir, env.get("excludes"), limit=int(args.max_upload_mib * MIB))
    print(f"upload of {plan.root}: {plan.format()}", file=sys.stderr)
    if args.check:
        return 0
    ray = shutil.which("ray")
    command = [ray] if ray else [sys.executable, "-m", "ray.scripts.scripts"]
    command += ["job", "submit", "--working-dir", args.working_dir, "--runtime-env", args.runtime_env]
    if args.address:
        command += ["--address", args.address]
    if args.submission_id:
        command += ["--submission-id", args.submission_id]
    if args.no_wait:
        command.append("--no-wait")
    return subprocess.run([*command, "--", *entrypoint]).returncode
