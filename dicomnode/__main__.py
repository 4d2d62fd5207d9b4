"""`python -m dicomnode` is the `dicomnode` command."""

from dicomnode.cli import app

if __name__ == "__main__":
    app(prog_name="dicomnode")
