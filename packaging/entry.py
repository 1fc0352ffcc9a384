"""Entry point frozen into the macOS .app: the same `main` as the `locus` console script."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
