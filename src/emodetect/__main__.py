import sys

from emodetect.cli import main

sys.exit(main())
