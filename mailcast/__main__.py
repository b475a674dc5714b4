"""``python -m mailcast``: the command line."""

from mailcast.cli import main

if __name__ == "__main__":
    main()
