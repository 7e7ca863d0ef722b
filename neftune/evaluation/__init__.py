"""Evaluation: generation, text metrics, pairwise judges, win rates, capability retention.

Submodules are imported on demand (``neftune.evaluation.metrics``, ``.winrate``, ``.judge``, ...)
so that importing the package stays cheap: the MiniLM encoder and the OpenAI client load only
when a judge or an embedding metric is actually used.
"""
