"""One CondorBrain run, no study.

Example: ``python -m trainers.condor --epochs 50 --batch-size 256 --d-model 512 --layers 16``
"""

import sys

from trainers.cli import main

sys.exit(main("condor"))
