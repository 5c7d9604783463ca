"""``python -m regraft`` is the same as the ``regraft`` command."""

from regraft.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
