"""Entry point frozen into the macOS .app: the same `main` as the `locus` console script."""

import sys

from ui.main import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
