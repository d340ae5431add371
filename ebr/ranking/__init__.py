"""Later-stage optimisation (the paper's §5): features of retrieved candidates, the ranker, the rater
feedback loop and the relevance filter of EBR results."""
