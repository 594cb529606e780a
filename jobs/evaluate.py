"""`ray job submit` entry point for evaluation: the same options as `genart evaluate`."""

import sys

from genart.cli import app

if __name__ == "__main__":
    app(["evaluate", *sys.argv[1:]], prog_name="jobs/evaluate.py")
