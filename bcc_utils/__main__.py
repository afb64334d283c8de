"""``python -m bcc_utils`` entry point."""

from bcc_utils.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
