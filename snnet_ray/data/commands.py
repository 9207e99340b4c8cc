"""`snnet-ray shards ...`: write webdataset shards and show what a shard set holds.

    snnet-ray shards imagefolder --src DIR --out DIR [--shard-size N] [--workers W] [--overwrite]
    snnet-ray shards digits --out DIR
    snnet-ray shards info ROOT_OR_URL

Writing prints a summary (images, shards, bytes, images/s, corrupt files); `--json` prints it as
JSON on stdout instead (the progress bar goes to stderr). Reruns resume an interrupted run and
leave a finished one alone; see `snnet_ray/data/shards.py`.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "shards",
        help="write webdataset shards (ImageNet-style folders, the digits demo set)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="shards_command", metavar="KIND", required=True)

    folder = sub.add_parser("imagefolder", help="shards from SRC/{train,val}/<class>/<images>")
    folder.add_argument("--src", required=True, help="folder holding train/ and/or val/ class folders")
    _add_common(folder, default_shard_size=1000)
    folder.add_argument("--workers", type=int, default=None, help="writer processes (default: CPU count)")
    folder.add_argument("--name", default=None, help="data set name for timm's wds/NAME (default: SRC's name)")
    folder.set_defaults(handler=_imagefolder)

    digits = sub.add_parser("digits", help="scikit-learn's digits as 32x32 RGB shards (the demo set)")
    _add_common(digits, default_shard_size=128)
    digits.set_defaults(handler=_digits)

    info = sub.add_parser("info", help="show the splits, shards and samples of a shard set")
    info.add_argument("root", help="shards directory or URL (holding _info.json)")
    info.add_argument("--json", action="store_true", help="print _info.json's content as JSON")
    info.set_defaults(handler=_info)


def _add_common(parser: argparse.ArgumentParser, default_shard_size: int) -> None:
    parser.add_argument("--out", required=True, help="local output directory")
    parser.add_argument("--shard-size", type=int, default=default_shard_size, help="images per shard")
    parser.add_argument("--seed", type=int, default=0, help="seed shuffling the train split into shards")
    parser.add_argument("--overwrite", action="store_true", help="replace shards written with other settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--val-name", choices=("validation", "val"), default="validation",
        help="file name of the validation split: timm's 'validation' (default) or 'val' (older snnet-ray shards)",
    )


def _imagefolder(args: argparse.Namespace) -> int:
    from .imagefolder import write_imagefolder_shards

    summary = write_imagefolder_shards(
        args.src,
        args.out,
        shard_size=args.shard_size,
        workers=args.workers,
        seed=args.seed,
        name=args.name,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        val_name=args.val_name,
    )
    _print_summary(summary, args.json)
    return 0


def _digits(args: argparse.Namespace) -> int:
    from .digits import write_digits_shards

    summary = write_digits_shards(
        args.out,
        shard_size=args.shard_size,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        val_name=args.val_name,
    )
    _print_summary(summary, args.json)
    return 0


def _info(args: argparse.Namespace) -> int:
    from .info import read_info

    info = read_info(args.root)
    if args.json:
        print(json.dumps(info.to_json(), indent=1))
        return 0
    print(f"{info.name} at {info.root}: {info.num_classes} classes")
    for split in info.splits.values():
        sizes = split.shard_lengths
        span = f", {min(sizes)}..{max(sizes)} per shard" if sizes else ""
        print(f"  {split.name:<12}{split.num_samples:>10} samples in {split.num_shards} shards{span}")
    return 0


def _print_summary(summary, as_json: bool) -> None:
    print(json.dumps(summary.to_json(), indent=1) if as_json else summary.format())
