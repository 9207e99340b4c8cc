"""Train a Swin-Ti/S/B SN-Net on Ray (entry point for `ray job submit`).

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python jobs/train_swin.py --config swin_ti_s_b_imagenet --set data.root=s3://bucket/imagenet-wds
    python jobs/train_swin.py --config tiny_digits --set data.root=$PWD/data/digits

Defaults to the `swin_ti_s_b_imagenet` preset; `--set KEY=VALUE` overrides any field. Prints where the
checkpoints and the results went.
"""

import sys

from snnet_ray.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a == "--config" or a.startswith("--config=") for a in argv):
        argv = ["--config", "swin_ti_s_b_imagenet", *argv]
    sys.exit(main(["train", *argv]))
