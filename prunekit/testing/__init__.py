"""Testing helpers shipped with prunekit: a random-architecture generator for fuzzing the pruning engine."""
