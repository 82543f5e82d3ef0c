"""`python -m client` runs relay-upload."""

from client.cli import main

if __name__ == "__main__":
    main()
