"""Query and index selection (the paper's §4.3): which requests run the (nn) part, which documents enter the
embedding index."""
