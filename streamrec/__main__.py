"""``python -m streamrec`` is the ``streamrec`` command."""

from streamrec.cli import main

if __name__ == "__main__":
    main()
