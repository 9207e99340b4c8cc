"""Evaluate every config of a checkpoint on the validation shards (for `ray job submit`).

    ray job submit --working-dir . -- python jobs/evaluate.py --checkpoint PATH --data SHARDS [--gpu --workers 8]

Same flags as `snnet-ray eval`; counts land in the results service, shards already recorded are skipped.
"""

import sys

from snnet_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
