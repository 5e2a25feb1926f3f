"""The fuzz harness behind scripts/fuzz.py: mutate the real vmcore fixtures
and run slimdump's command line on each mutant (see scripts/fuzz.py)."""
