"""SPARK-CoEvolve (shared/papers/spark-coevolve.md): the policy trained as its own judge on its recycled rollouts."""
