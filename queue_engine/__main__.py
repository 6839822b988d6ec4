"""``python -m queue_engine``: the same as the ``qengine`` command."""

from .cli import main

if __name__ == "__main__":
    main()
