"""``python -m ddetr_cli`` is the ``ddetr`` command."""

from ddetr_cli.cli import main

if __name__ == "__main__":
    main()
