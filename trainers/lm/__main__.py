"""One language-model run, no study.

Example: ``python -m trainers.lm --attention okadfa --corpus notes.txt --epochs 3``
"""

import sys

from trainers.cli import main

sys.exit(main("lm"))
