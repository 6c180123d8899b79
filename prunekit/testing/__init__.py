"""Testing helpers shipped with prunekit: a random-architecture generator for fuzzing the pruning engine
(`fuzz_models`, hypothesis strategies; needs the ``test`` extra) and its independent checker (`fuzz_check`)."""
