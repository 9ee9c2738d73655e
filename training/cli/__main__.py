"""`python -m training.cli` is `tuneboard`."""
from training.cli.main import main

main()
