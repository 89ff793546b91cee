"""The reproduction of the paper's comparison (SPEC sections 14 and 16), a user-facing experiment apart from the
micro-benchmarks of bench/: ``python -m reproduction.reproduce`` (the search's answer against one-choice and random
architectures trained from scratch), ``python -m reproduction.rank`` (the supernet's ranking against stand-alone
training), their statistics and their stand-alone runs. Run from the project's folder."""
