"""`ray job submit` entry point for hyperparameter search: the same options as `genart tune`."""

import sys

from genart.cli import app

if __name__ == "__main__":
    app(["tune", *sys.argv[1:]], prog_name="jobs/tune.py")
