"""Run a Ray Tune sweep of SN-Net training runs (entry point for `ray job submit`).

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python jobs/sweep.py --config deit_ti_s_b --set data.root=s3://bucket/imagenet-wds
    python jobs/sweep.py --config tiny_digits --set data.root=$PWD/data/digits

Same flags as `snnet-ray sweep`; prints the trials, the best one and where the results went.
"""

import sys

from snnet_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
