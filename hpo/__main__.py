import sys

from hpo.run import main

sys.exit(main())
