"""`python -m remora` is the `remora` command."""
import sys

from remora.cli import main

sys.exit(main())
