import sys

from mechunlearn.cli import main

sys.exit(main())
