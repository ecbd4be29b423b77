#!/usr/bin/env python
"""threestudio-style entry point: python launch.py --config configs/X.yaml --train [key=value ...]
(the same as ``scorestudio train --config configs/X.yaml key=value ...``; any scorestudio command works)."""

import sys

from scorestudio.cli import main

if __name__ == "__main__":
    sys.exit(main())
