"""Semantic models of the configured site: Brick (RDF/Turtle) and Project Haystack (JSON, Zinc)."""
