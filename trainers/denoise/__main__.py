"""``python -m trainers.denoise --epochs 12 --lr 0.01 --batch-size 10240``: one run, no study."""

import sys

from trainers.cli import main

sys.exit(main("denoise"))
