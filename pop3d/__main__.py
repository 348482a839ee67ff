"""``python -m pop3d`` runs the command line."""

from pop3d.cli import main

if __name__ == "__main__":
    main()
