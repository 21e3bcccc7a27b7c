import sys

from bnc.study.runner import main

sys.exit(main())
