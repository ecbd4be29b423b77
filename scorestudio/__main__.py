import sys

from scorestudio.cli import main

sys.exit(main())
