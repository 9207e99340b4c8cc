"""Write webdataset shards as a Ray job (or plain script): a thin wrapper over `snnet-ray shards`.

    ray job submit --working-dir . -- python jobs/make_shards.py imagefolder \\
        --src /data/imagenet --out /data/imagenet-wds --workers 32
    python jobs/make_shards.py digits --out data/digits

The shards are written on the machine that runs this script (its local disk or a shared mount);
copy them to an object store afterwards if training reads from one (`aws s3 sync OUT s3://...`).
Prints the summary, which starts with where the shards went.
"""

from __future__ import annotations

import sys

from snnet_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["shards", *sys.argv[1:]]))
