#!/usr/bin/env python
"""threestudio-style entry point: python launch.py --config configs/X.yaml --train [key=value ...]"""

from scorestudio.cli import main

if __name__ == "__main__":
    main()
