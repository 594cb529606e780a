"""`ray job submit` entry point for training: the same options as `genart train`.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train.py --config jobs/configs/demo-cpu.yaml --data /abs/path/manifest.split.parquet

Paths must be absolute (or shared storage): the job runs in a copy of the working directory.
"""

import sys

from genart.cli import app

if __name__ == "__main__":
    app(["train", *sys.argv[1:]], prog_name="jobs/train.py")
