"""Public benchmark datasets as search-log folders: BEIR (`beir.convert_beir`, docs/beir.md)."""
